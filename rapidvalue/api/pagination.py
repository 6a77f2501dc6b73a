"""Pagination: ``{"items", "total", "limit", "offset"}`` for every list; keyset cursors for heavy ones.

* ``limit`` defaults to 50; above 500 it is clamped to 500; a non-integer or negative value,
  or a negative ``offset``, is a 400.
* Heavy lists (audit events, grants, sync records) use :class:`CursorEnvelopePagination`: the
  same envelope plus ``next_cursor``; with ``?cursor=`` the page is found by keyset (no OFFSET
  scan, no COUNT) and ``total``/``offset`` are null.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# At most 18 digits (within PostgreSQL's bigint): documented as the parameters' maximum.
MAX_PARAMETER = 10**18 - 1


def _parse_non_negative(request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only (other scripts digits, "+3" and "1e3" are refused) and within bigint range.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ValidationError({name: [f"'{name}' must be a non-negative integer."]}, code="invalid")
    value = int(raw)
    if value < 0:
        raise ValidationError({name: [f"'{name}' must be a non-negative integer."]}, code="invalid")
    return value


class EnvelopePagination(BasePagination):
    """Limit/offset pagination in SQL with the envelope of the public contract."""

    def paginate_queryset(self, queryset, request, view=None):
        if isinstance(queryset, QuerySet) and not queryset.ordered:
            raise RuntimeError(f"{view.__class__.__name__}: paginated querysets must be ordered")
        self.limit = min(_parse_non_negative(request, "limit", DEFAULT_LIMIT), MAX_LIMIT)
        self.offset = _parse_non_negative(request, "offset", 0)
        self.total = queryset.count() if isinstance(queryset, QuerySet) else len(queryset)
        if isinstance(queryset, QuerySet) and getattr(view, "page_by_primary_keys", False):
            return self._page_by_primary_keys(queryset)
        return list(queryset[self.offset : self.offset + self.limit])

    def _page_by_primary_keys(self, queryset: QuerySet) -> list:
        """Find the page's primary keys first, then read those rows (a "deferred join").

        Why: with OFFSET, every skipped row is read. A view whose ordering index also covers its
        filters (``page_by_primary_keys = True``, e.g. identities: name order including the
        manager path) skips them in an index-only scan instead of fetching each table row: a
        manager's page at offset 1,000 read ~5,000 rows of the table, now 50. Same rows, same
        order: the keys come from the same filtered, ordered queryset.
        """
        keys = queryset.values("pk")[self.offset : self.offset + self.limit]
        return list(queryset.filter(pk__in=keys))

    def paginate_in_sql(self, fetch: Callable[[int, int], tuple[int, list]], request) -> list:
        """Page a list that is not a queryset: ``fetch(limit, offset)`` returns ``(total, page)``.

        Why: for lists computed by one raw SQL statement (effective access), the statement itself
        applies LIMIT/OFFSET and counts, instead of building every item to slice them here.
        Same parameters, clamping and envelope as :meth:`paginate_queryset`.
        """
        self.limit = min(_parse_non_negative(request, "limit", DEFAULT_LIMIT), MAX_LIMIT)
        self.offset = _parse_non_negative(request, "offset", 0)
        self.total, page = fetch(self.limit, self.offset)
        return page

    def get_paginated_response(self, data):
        return Response(
            OrderedDict(items=data, total=self.total, limit=self.limit, offset=self.offset)
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": schema,
                "total": {"type": "integer", "example": 1247},
                "limit": {"type": "integer", "example": 50},
                "offset": {"type": "integer", "example": 0},
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {"name": "limit", "in": "query", "required": False,
             "description": "Page size (default 50, values above 500 are clamped to 500).",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PARAMETER}},
            {"name": "offset", "in": "query", "required": False,
             "description": "Number of items to skip.",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PARAMETER}},
        ]


class CursorEnvelopePagination(EnvelopePagination):
    """Offset pages plus an opaque keyset cursor on a unique, indexed field.

    The view names the field with ``cursor_field`` (default ``id``) and its direction with
    ``cursor_descending`` (default True: newest first).
    """

    def _cursor_settings(self, view) -> tuple[str, bool]:
        return getattr(view, "cursor_field", "id"), getattr(view, "cursor_descending", True)

    @staticmethod
    def encode_cursor(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps({"v": value}).encode()).decode().rstrip("=")

    @staticmethod
    def decode_cursor(raw: str) -> Any:
        try:
            padded = raw + "=" * (-len(raw) % 4)
            return json.loads(base64.urlsafe_b64decode(padded.encode()))["v"]
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ValidationError({"cursor": ["Invalid cursor."]}, code="invalid") from None

    def paginate_queryset(self, queryset, request, view=None):
        field, descending = self._cursor_settings(view)
        ordered = queryset.order_by(f"-{field}" if descending else field)
        raw_cursor = request.query_params.get("cursor")
        if not raw_cursor:
            page = super().paginate_queryset(ordered, request, view)
        else:
            self.limit = min(_parse_non_negative(request, "limit", DEFAULT_LIMIT), MAX_LIMIT)
            self.offset = None
            self.total = None
            value = self.decode_cursor(raw_cursor)
            if isinstance(value, dict | list) or value is None:
                raise ValidationError({"cursor": ["Invalid cursor."]}, code="invalid")
            lookup = f"{field}__lt" if descending else f"{field}__gt"
            try:
                page = list(ordered.filter(**{lookup: value})[: self.limit])
            except (ValueError, TypeError):
                raise ValidationError({"cursor": ["Invalid cursor."]}, code="invalid") from None
        self.next_cursor = None
        if page and len(page) == self.limit:
            last = getattr(page[-1], field)
            self.next_cursor = self.encode_cursor(last if isinstance(last, int | str) else str(last))
        return page

    def get_paginated_response(self, data):
        return Response(
            OrderedDict(
                items=data, total=self.total, limit=self.limit, offset=self.offset, next_cursor=self.next_cursor
            )
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        base = super().get_paginated_response_schema(schema)
        base["properties"]["total"] = {"type": "integer", "nullable": True}
        base["properties"]["offset"] = {"type": "integer", "nullable": True}
        base["properties"]["next_cursor"] = {"type": "string", "nullable": True}
        base["required"] = [*base["required"], "next_cursor"]
        return base

    def get_schema_operation_parameters(self, view):
        return [
            *super().get_schema_operation_parameters(view),
            {"name": "cursor", "in": "query", "required": False,
             "description": "Opaque cursor from a previous page's next_cursor (keyset pagination).",
             "schema": {"type": "string"}},
        ]
