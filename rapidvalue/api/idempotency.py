"""``Idempotency-Key`` on POST, PUT, PATCH and DELETE, made exact by PostgreSQL.

The write runs in one transaction that first inserts ``(scope, key)`` with ``ON CONFLICT DO
NOTHING``. A concurrent repeat's insert blocks on the unique index until the first transaction
ends: if it committed, the repeat finds the stored response and replays it; if it rolled back
(the write failed), the repeat executes as if first. So concurrent repeats run once, and a
failed write (4xx/5xx, rolled back) leaves no record and can be retried.
A repeat with another body (method, path and body hash differ) is a 422.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from .errors import Unprocessable
from .models import IdempotencyRecord

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Claim:
    record_id: int


def request_fingerprint(request) -> str:
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(b"\0")
    digest.update(request.get_full_path().encode())
    digest.update(b"\0")
    digest.update(request.body or b"")
    return digest.hexdigest()


def claim_or_replay(request, principal) -> Claim | Response | None:
    """Claim the key for this request, or return the stored response of an earlier one.

    Must run inside the write's transaction. Returns None when the request has no key.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not KEY_RE.match(key):
        raise ValidationError(
            {HEADER: ["Idempotency-Key must be 1-255 printable ASCII characters (a UUID is recommended)."]}
        )
    fingerprint = request_fingerprint(request)
    table = IdempotencyRecord._meta.db_table
    cutoff = timezone.now() - settings.IDEMPOTENCY_TTL
    with connection.cursor() as cursor:
        # An expired record no longer protects its key.
        cursor.execute(
            f"DELETE FROM {table} WHERE scope = %s AND key = %s AND created_at < %s",  # noqa: S608
            [principal.scope_key, key, cutoff],
        )
        cursor.execute(
            f"INSERT INTO {table} (scope, key, request_hash, method, path, created_at) "  # noqa: S608
            "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (scope, key) DO NOTHING RETURNING id",
            [principal.scope_key, key, fingerprint, request.method, request.path[:500]],
        )
        row = cursor.fetchone()
    if row is not None:
        return Claim(record_id=row[0])
    existing = IdempotencyRecord.objects.get(scope=principal.scope_key, key=key)
    if existing.request_hash != fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used with a different request.", code="idempotency_key_reused"
        )
    response = Response(existing.response_body, status=existing.status_code)
    response["Idempotent-Replayed"] = "true"
    return response


def store(claim: Claim, response: Response, secret_fields: tuple[str, ...] = ()) -> None:
    """Keep the first response (status and body) for replays; same transaction as the write.

    Secrets a response shows once (a new token, a signing secret) are not kept: a replay
    answers ``[redacted]`` in their place, so the secret exists nowhere but in the first answer.
    """
    body = None
    if response.data is not None:
        body = json.loads(JSONRenderer().render(response.data))
        if isinstance(body, dict):
            for name in secret_fields:
                if body.get(name) is not None:
                    body[name] = "[redacted]"
    IdempotencyRecord.objects.filter(pk=claim.record_id).update(status_code=response.status_code, response_body=body)


def purge_expired() -> int:
    """Delete records past the 24-hour window in the current schema; returns how many."""
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - settings.IDEMPOTENCY_TTL).delete()
    return deleted
