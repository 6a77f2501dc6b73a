"""Visibility of access data, built on the one identity scope.

* Resource owners see the identities that hold grants on (or accounts in) what they own:
  applications they own, entitlements they own, roles they own.
* Accounts and grants are visible when their identity is; orphan accounts only to admins and
  auditors. The catalog (applications, entitlements, roles) is visible to every principal of
  the tenant: it says what exists, not who has it.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from identities import scoping as identity_scoping
from identities.models import Identity
from rapidvalue.api import scoping

from .models import Account, Application, Entitlement, Grant, Role


def resource_owner_filter(principal) -> Q | None:
    """Identities holding access to resources owned by the principal's identity."""
    me = getattr(principal, "identity_id", None)
    if me is None:
        return None
    owned_apps = Application.objects.filter(owners=me).values("pk")
    owned_roles = Role.objects.filter(owners=me).values("pk")
    # One query to learn whether the principal owns anything at all; most principals do not,
    # and then the (larger) grant subqueries are left out of their scope entirely.
    owns_anything = Identity.objects.filter(pk=me).filter(
        Exists(Application.owners.through.objects.filter(identity_id=OuterRef("pk")))
        | Exists(Role.owners.through.objects.filter(identity_id=OuterRef("pk")))
        | Exists(Entitlement.objects.filter(owner_id=OuterRef("pk")))
    ).exists()
    if not owns_anything:
        return None
    on_owned = Grant.objects.filter(
        Q(entitlement__application__in=owned_apps) | Q(entitlement__owner=me) | Q(role__in=owned_roles),
        state=Grant.State.ACTIVE,
    )
    return (
        Q(pk__in=on_owned.filter(identity__isnull=False).values("identity_id"))
        | Q(pk__in=on_owned.filter(account__isnull=False).values("account__identity_id"))
        | Q(pk__in=Account.objects.filter(application__in=owned_apps, identity__isnull=False).values("identity_id"))
    )


def _accounts(queryset: QuerySet, principal) -> QuerySet:
    return queryset.filter(identity__in=identity_scoping.visible_identity_ids(principal))


def _grants(queryset: QuerySet, principal) -> QuerySet:
    visible = identity_scoping.visible_identity_ids(principal)
    return queryset.filter(Q(identity__in=visible) | Q(account__identity__in=visible))


def _catalog(queryset: QuerySet, principal) -> QuerySet:
    return queryset


def register() -> None:
    identity_scoping.add_contributor(resource_owner_filter)
    scoping.register_scope(Account, _accounts)
    scoping.register_scope(Grant, _grants)
    for model in (Application, Entitlement, Role):
        scoping.register_scope(model, _catalog)
