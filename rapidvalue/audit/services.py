"""Writing audit events: every service that changes data calls :func:`record`."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from django.db import connection, models

from rapidvalue.context import Actor, client_ip_var, current_actor, request_id_var

from .models import AuditEvent

# Field names whose values never enter the audit trail, whatever the model.
SECRET_FIELD_MARKERS = ("password", "secret", "token_hash", "credential", "auth_config", "private_key")


def is_secret_field(name: str) -> bool:
    """Whether a field's value must be kept out of audit snapshots (name-based, deliberately broad)."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_FIELD_MARKERS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return str(value.pk)
    return value


def snapshot(instance: models.Model, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON-safe picture of a model's concrete fields, secrets replaced by a marker."""
    data: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        name = field.attname
        if name in exclude:
            continue
        if is_secret_field(field.name):
            data[field.name] = "[redacted]"
            continue
        data[field.name] = _jsonable(getattr(instance, name))
    if instance.pk is not None and not instance._state.adding:
        for m2m in instance._meta.many_to_many:
            data[m2m.name] = sorted(str(pk) for pk in getattr(instance, m2m.name).values_list("pk", flat=True))
    return data


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    """Field -> [old, new] for the fields that changed between two snapshots."""
    before = before or {}
    after = after or {}
    keys = sorted(set(before) | set(after))
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def record(
    action: str,
    object_type: str,
    object_id: Any = "",
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """Append one event to the current tenant's log, in the caller's transaction.

    Writing in the same transaction as the change means a rolled-back change leaves no event
    and a committed change always has one.
    """
    actor = actor or current_actor()
    tenant = getattr(connection, "tenant", None)
    return AuditEvent.objects.create(
        tenant=getattr(tenant, "slug", "") or connection.schema_name,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_label=actor.label,
        token_kind=actor.token_kind,
        action=action,
        object_type=object_type,
        object_id=str(object_id or ""),
        before=before,
        after=after,
        changes=diff(before, after) if before is not None and after is not None else {},
        request_id=request_id_var.get(),
        ip=client_ip_var.get(),
    )
