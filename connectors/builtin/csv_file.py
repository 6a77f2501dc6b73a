"""CSV / HR file connector: identities (with manager references), accounts, entitlements, grants.

Config, one optional section per kind::

    {"identities": {"path": "/data/hr.csv", "mapping": {"external_id": "EmployeeID", "email": "Mail",
                                                        "manager_external_id": "ManagerID"}},
     "accounts": {"content": "...csv text..."}, "delimiter": ","}

``mapping`` maps protocol fields to column names (unmapped fields use a column of the same
name). A bad row is reported as a record error with its line and skipped; the rest goes on.
Chunks are cut by rows; the cursor is ``<section>:<row>``.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from ..base import ConfigurationError, Connector, register
from ..protocol.v1 import (
    Capabilities,
    RecordError,
    RemoteAccount,
    RemoteEntitlement,
    RemoteGrant,
    RemoteIdentity,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)

SECTIONS: dict[str, tuple[type, str, str]] = {
    # section: (model, response list, kind)
    "identities": (RemoteIdentity, "identities", "identity"),
    "entitlements": (RemoteEntitlement, "entitlements", "entitlement"),
    "accounts": (RemoteAccount, "accounts", "account"),
    "grants": (RemoteGrant, "grants", "grant"),
}
KEYS = {"identities": "external_id", "entitlements": "value", "accounts": "native_id", "grants": "entitlement_value"}


def _open(section: dict[str, Any]) -> io.TextIOBase:
    if "content" in section:
        return io.StringIO(section["content"])
    return Path(section["path"]).open(newline="", encoding="utf-8-sig")


@register
class CsvConnector(Connector):
    type = "csv"
    capabilities: ClassVar[Capabilities] = Capabilities(
        sync_identities=True, sync_accounts=True, sync_entitlements=True, sync_grants=True, paging=True,
        authoritative=True,
    )

    @classmethod
    def validate_config(cls, config: dict, auth_config: dict) -> None:
        sections = [name for name in SECTIONS if name in config]
        if not sections:
            raise ConfigurationError(f"config needs at least one of: {', '.join(SECTIONS)}")
        for name in sections:
            section = config[name]
            if not isinstance(section, dict) or ("path" in section) == ("content" in section):
                raise ConfigurationError(f"config.{name} needs exactly one of 'path' and 'content'")
            if "path" in section and not Path(section["path"]).is_file():
                raise ConfigurationError(f"config.{name}.path: no such file: {section['path']}")
            mapping = section.get("mapping", {})
            model = SECTIONS[name][0]
            unknown = set(mapping) - set(model.model_fields)
            if not isinstance(mapping, dict) or unknown:
                raise ConfigurationError(f"config.{name}.mapping has unknown fields: {sorted(unknown)}")

    @classmethod
    def local_only_paths(cls, config: dict) -> list[tuple[str, ...]]:
        """Which files are read is the agent's decision: every section's ``path``."""
        return [(name, "path") for name in SECTIONS]

    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        try:
            self.validate_config(request.config, request.auth_config)
        except ConfigurationError as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        return TestConnectionResponse(success=True, message="files readable")

    def _rows(self, name: str, section: dict, delimiter: str, skip: int) -> Iterator[tuple[int, dict]]:
        with _open(section) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            for row_number, row in enumerate(reader):
                if row_number >= skip:
                    yield row_number, row

    def sync(self, request: SyncRequest) -> SyncResponse:
        config = request.config
        self.validate_config(config, request.auth_config)
        delimiter = config.get("delimiter", ",")
        order = [name for name in SECTIONS if name in config]
        start_section, start_row = order[0], 0
        if request.cursor:
            start_section, _, row = request.cursor.partition(":")
            start_row = int(row or 0)
        response = SyncResponse(success=True)
        budget = request.chunk_size
        for name in order[order.index(start_section):]:
            section = config[name]
            model, target, kind = SECTIONS[name]
            mapping = section.get("mapping", {})
            skip = start_row if name == start_section else 0
            for row_number, row in itertools.islice(self._rows(name, section, delimiter, skip), budget + 1):
                if budget == 0:
                    response.has_more = True
                    response.next_cursor = f"{name}:{row_number}"
                    return response
                budget -= 1
                values = {}
                for field in model.model_fields:
                    column = mapping.get(field, field)
                    value = row.get(column)
                    if value not in (None, ""):
                        values[field] = value.strip()
                try:
                    getattr(response, target).append(model(**values))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    response.record_errors.append(RecordError(
                        kind=kind, key=values.get(KEYS[name]), location=f"{name} line {row_number + 2}",
                        error=f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                    ))
        return response
