"""Access operations: account lifecycle actions, role composition, grants. Each audited."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from identities.models import Identity
from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit

from .models import Account, Grant, Role, RoleInclusion


def _account_change(account: Account, action: str, **fields: Any) -> Account:
    before = audit.snapshot(account)
    for name, value in fields.items():
        setattr(account, name, value)
    account.save()
    audit.record(f"account.{action}", "account", account.pk, before=before, after=audit.snapshot(account))
    return account


@transaction.atomic
def enable_account(account: Account) -> Account:
    if account.status == Account.Status.DELETED:
        raise Conflict("A deleted account cannot be enabled.", code="account_deleted")
    return _account_change(account, "enable", status=Account.Status.ACTIVE)


@transaction.atomic
def disable_account(account: Account) -> Account:
    if account.status == Account.Status.DELETED:
        raise Conflict("A deleted account cannot be disabled.", code="account_deleted")
    return _account_change(account, "disable", status=Account.Status.DISABLED)


@transaction.atomic
def delete_account(account: Account) -> Account:
    """Mark deleted (kept for history) and end the grants held through it."""
    Grant.objects.filter(account=account, state__in=[Grant.State.ACTIVE, Grant.State.PENDING]).update(
        state=Grant.State.ENDED, ended_at=timezone.now()
    )
    return _account_change(account, "delete", status=Account.Status.DELETED)


@transaction.atomic
def link_account(account: Account, identity: Identity) -> Account:
    return _account_change(account, "link", identity=identity)


@transaction.atomic
def unlink_account(account: Account) -> Account:
    if account.identity_id is None:
        raise Conflict("This account is not linked to an identity.", code="not_linked")
    return _account_change(account, "unlink", identity=None)


class RoleCycle(Conflict):
    default_detail = "A role cannot include itself, directly or through other roles."
    default_code = "role_cycle"


def _descendants(role_ids: Iterable) -> set:
    """All roles included (at any depth) by the given roles, in one recursive query."""
    ids = [str(r) for r in role_ids]
    if not ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE tree(id) AS (
                SELECT child_id FROM access_roleinclusion WHERE parent_id = ANY(%s::uuid[])
                UNION SELECT ri.child_id FROM access_roleinclusion ri JOIN tree t ON ri.parent_id = t.id
            ) SELECT id FROM tree
            """,
            [ids],
        )
        return {row[0] for row in cursor.fetchall()}


def set_role_includes(role: Role, children: Iterable[Role]) -> None:
    """Replace the roles ``role`` includes, refusing any cycle."""
    children = list(children)
    child_ids = {c.pk for c in children}
    if role.pk in child_ids or role.pk in _descendants(child_ids):
        raise RoleCycle()
    RoleInclusion.objects.filter(parent=role).exclude(child__in=child_ids).delete()
    existing = set(RoleInclusion.objects.filter(parent=role).values_list("child_id", flat=True))
    RoleInclusion.objects.bulk_create(RoleInclusion(parent=role, child=c) for c in children if c.pk not in existing)


@transaction.atomic
def end_grant(grant: Grant) -> Grant:
    if grant.state == Grant.State.ENDED:
        raise Conflict("This grant has already ended.", code="already_ended")
    before = audit.snapshot(grant)
    grant.state = Grant.State.ENDED
    grant.ended_at = timezone.now()
    grant.save(update_fields=["state", "ended_at"])
    audit.record("grant.end", "grant", grant.pk, before=before, after=audit.snapshot(grant))
    return grant
