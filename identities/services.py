"""Identity operations: create (pattern 1 of the API contract), update, deactivate.

Each is one transaction that keeps the manager path right, refuses manager cycles, writes the
audit event and raises the lifecycle event.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit
from rapidvalue.webhooks.events import emit

from . import lifecycle
from .models import Identity

FIELDS = ("email", "first_name", "last_name", "display_name", "department", "title", "location",
          "employment_type", "status", "start_date", "end_date", "attributes")


def webhook_data(identity: Identity) -> dict[str, Any]:
    """The identity part of identity.* webhook payloads (version 1)."""
    return {
        "id": str(identity.pk), "external_id": identity.external_id, "email": identity.email,
        "first_name": identity.first_name, "last_name": identity.last_name, "display_name": identity.display_name,
        "department": identity.department, "title": identity.title, "location": identity.location,
        "status": identity.status, "manager_id": str(identity.manager_id) if identity.manager_id else None,
        "manager_external_id": identity.manager_external_id,
    }


class ManagerCycle(Conflict):
    default_detail = "This manager would make the identity its own (indirect) manager."
    default_code = "manager_cycle"


def _move_subtree(identity: Identity, new_prefix: str) -> None:
    """Rewrite the path of ``identity`` and everything under it in one statement."""
    old_prefix = identity.path
    new_path = new_prefix + identity.path_segment
    if old_prefix == new_path:
        return
    delta = new_path.count("/") - (old_prefix.count("/") if old_prefix else 0)
    table = Identity._meta.db_table
    with connection.cursor() as cursor:
        if old_prefix:
            cursor.execute(
                f"UPDATE {table} SET path = %s || substr(path, %s), depth = depth + %s "  # noqa: S608
                "WHERE path LIKE %s",
                [new_path, len(old_prefix) + 1, delta, _like_prefix(old_prefix)],
            )
        else:
            cursor.execute(f"UPDATE {table} SET path = %s, depth = %s WHERE id = %s",  # noqa: S608
                           [new_path, new_path.count("/") - 1, identity.pk])
    identity.path = new_path
    identity.depth = new_path.count("/") - 1


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


MAX_DEPTH = 60


def lock_tree() -> None:
    """Serialise changes to the manager tree within the tenant (until the transaction ends).

    Moves read the new manager's path; without this lock two concurrent moves could each read
    a path the other is about to rewrite and leave a subtree under a stale prefix.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':identity-tree'))")


class TooDeep(Conflict):
    default_detail = f"The management chain would be deeper than {MAX_DEPTH} levels."
    default_code = "chain_too_deep"


def _set_manager(identity: Identity, manager: Identity | None) -> None:
    # The manager may not be the identity itself nor anyone under it.
    if manager is not None and identity.path and manager.path.startswith(identity.path):
        raise ManagerCycle()
    if manager is not None:
        deepest = Identity.objects.filter(path__startswith=identity.path).order_by("-depth").values_list(
            "depth", flat=True).first() if identity.path else identity.depth
        if manager.depth + 1 + ((deepest or 0) - identity.depth) > MAX_DEPTH:
            raise TooDeep()
    identity.manager = manager
    Identity.objects.filter(pk=identity.pk).update(manager=manager)
    _move_subtree(identity, manager.path if manager is not None else "")


def _adopt_waiting_reports(identity: Identity) -> None:
    """Link identities that named this one as manager before it existed (out-of-order sources)."""
    for report in Identity.objects.filter(manager_external_id=identity.external_id, manager__isnull=True).exclude(
        pk=identity.pk
    ):
        if identity.path.startswith(report.path):
            continue  # would be a cycle: leave it unlinked rather than corrupt the tree
        _set_manager(report, identity)


def _resolve_manager(manager_external_id: str | None) -> Identity | None:
    if not manager_external_id:
        return None
    return Identity.objects.filter(external_id=manager_external_id).first()


def _fresh(manager: Identity | None) -> Identity | None:
    """Re-read a manager after taking the tree lock: its path may have moved meanwhile."""
    return Identity.objects.get(pk=manager.pk) if manager is not None else None


@transaction.atomic
def create_identity(*, external_id: str, manager_external_id: str | None = None, source: str = "api",
                    manager: Identity | None = None, **data: Any) -> Identity:
    """A joiner: create, link its manager (or wait for it), adopt reports waiting for it."""
    lock_tree()
    if Identity.objects.filter(external_id=external_id).exists():
        raise Conflict(f"An identity with external_id '{external_id}' already exists.", code="duplicate_external_id")
    identity = Identity(external_id=external_id, source=source, **{k: v for k, v in data.items() if k in FIELDS})
    if not identity.display_name:
        identity.display_name = f"{identity.first_name} {identity.last_name}".strip()
    manager = _fresh(manager) if manager is not None else _resolve_manager(manager_external_id)
    if manager is not None and manager.depth + 1 > MAX_DEPTH:
        raise TooDeep()
    identity.manager = manager
    identity.manager_external_id = manager_external_id or (manager.external_id if manager else "")
    identity.path = (manager.path if manager else "") + identity.path_segment
    identity.depth = identity.path.count("/") - 1
    identity.full_clean(exclude=["manager", "path"])
    identity.save()
    _adopt_waiting_reports(identity)
    identity.refresh_from_db()
    audit.record("identity.create", "identity", identity.pk, after=audit.snapshot(identity, exclude=("path",)))
    lifecycle.raise_event(lifecycle.JOINER, identity, source=source)
    emit("identity.created", {"identity": webhook_data(identity)})
    return identity


@transaction.atomic
def update_identity(identity: Identity, *, source: str = "api", **changes: Any) -> Identity:
    """Apply changes; a change to department, title, manager, location or status is a mover."""
    if "manager" in changes or "manager_external_id" in changes:
        lock_tree()
        if changes.get("manager") is not None:
            changes["manager"] = _fresh(changes["manager"])
    identity = Identity.objects.select_for_update().get(pk=identity.pk)
    before = audit.snapshot(identity, exclude=("path",))
    if "external_id" in changes and changes["external_id"] != identity.external_id:
        if Identity.objects.filter(external_id=changes["external_id"]).exclude(pk=identity.pk).exists():
            raise Conflict(f"An identity with external_id '{changes['external_id']}' already exists.",
                           code="duplicate_external_id")
        identity.external_id = changes["external_id"]
    for name in FIELDS:
        if name in changes:
            setattr(identity, name, changes[name])
    if "manager_external_id" in changes or "manager" in changes:
        manager = changes.get("manager")
        if "manager_external_id" in changes and "manager" not in changes:
            manager = _resolve_manager(changes["manager_external_id"])
        identity.manager_external_id = changes.get("manager_external_id") or (manager.external_id if manager else "")
        if manager != identity.manager:
            _set_manager(identity, manager)
    identity.full_clean(exclude=["manager", "path"])
    identity.save()
    if "external_id" in changes:
        _adopt_waiting_reports(identity)
    after = audit.snapshot(identity, exclude=("path",))
    changed = audit.diff(before, after)
    if not changed:
        return identity
    audit.record("identity.update", "identity", identity.pk, before=before, after=after)
    mover_changes = {k: v for k, v in changed.items() if k in {"department", "title", "manager", "location", "status"}}
    if changed.get("status", [None, None])[1] == Identity.Status.TERMINATED:
        lifecycle.raise_event(lifecycle.LEAVER, identity, mover_changes, source=source)
        emit("identity.deactivated", {"identity": webhook_data(identity), "changes": changed})
    else:
        if mover_changes:
            lifecycle.raise_event(lifecycle.MOVER, identity, mover_changes, source=source)
        emit("identity.updated", {"identity": webhook_data(identity), "changes": changed})
    return identity


@transaction.atomic
def deactivate_identity(identity: Identity, *, source: str = "api") -> Identity:
    """A leaver: terminated today; subscribers disable its accounts and end its grants now."""
    if identity.status == Identity.Status.TERMINATED:
        raise Conflict("This identity is already deactivated.", code="already_deactivated")
    changes: dict[str, Any] = {"status": Identity.Status.TERMINATED}
    if identity.end_date is None or identity.end_date > timezone.localdate():
        changes["end_date"] = timezone.localdate()
    return update_identity(identity, source=source, **changes)
