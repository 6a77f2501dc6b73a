"""Visibility of access data, built on the one identity scope.

* Resource owners see the identities that hold grants on (or accounts in) what they own:
  applications they own, entitlements they own, roles they own.
* Accounts are visible when their identity is; orphan accounts only to admins and auditors.
* Grants: a principal sees every grant of themself and of the people under them (manager
  chain); as a resource owner, only the grants on what they own, of holders they may see (not
  the other access of the people that ownership makes visible). Someone who is both sees the
  union.
* The catalog (applications, entitlements, roles) is visible to every principal of the tenant:
  it says what exists, not who has it.
"""

from __future__ import annotations

import uuid

from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet

from identities import scoping as identity_scoping
from identities.models import Identity
from rapidvalue.api import scoping

from .models import Account, Application, Entitlement, Grant, Role

OWNS_RESOURCES = "owns_resources"


def _owns_resources_probe() -> ExpressionWrapper:
    """Does the principal's identity own an application, a role or an entitlement?

    Most principals own nothing; answered in the scope-facts query, it keeps the (larger) grant
    subqueries out of their scope at no extra round trip.
    """
    return ExpressionWrapper(
        Exists(Application.owners.through.objects.filter(identity_id=OuterRef("pk")))
        | Exists(Role.owners.through.objects.filter(identity_id=OuterRef("pk")))
        | Exists(Entitlement.objects.filter(owner_id=OuterRef("pk"))),
        output_field=BooleanField(),
    )


def grants_on_owned_resources(owner_id: uuid.UUID) -> Q:
    """Q over Grant: grants on an application, entitlement or role that ``owner_id`` owns."""
    return (
        Q(entitlement__application__in=Application.objects.filter(owners=owner_id).values("pk"))
        | Q(entitlement__owner=owner_id)
        | Q(role__in=Role.objects.filter(owners=owner_id).values("pk"))
    )


def resource_owner_filter(principal, facts: identity_scoping.ScopeFacts) -> Q | None:
    """Identities holding access to resources owned by the principal's identity."""
    if facts.identity_id is None or not facts.flag(OWNS_RESOURCES):
        return None
    me = facts.identity_id
    on_owned = Grant.objects.filter(grants_on_owned_resources(me), state=Grant.State.ACTIVE)
    owned_apps = Application.objects.filter(owners=me).values("pk")
    return (
        Q(pk__in=on_owned.filter(identity__isnull=False).values("identity_id"))
        | Q(pk__in=on_owned.filter(account__isnull=False).values("account__identity_id"))
        | Q(pk__in=Account.objects.filter(application__in=owned_apps, identity__isnull=False).values("identity_id"))
    )


def _held_by(identities: QuerySet) -> Q:
    """Q over Grant: held by one of ``identities`` directly or through one of their accounts."""
    return Q(identity__in=identities) | Q(account__identity__in=identities)


def _accounts(queryset: QuerySet, principal) -> QuerySet:
    return queryset.filter(identity__in=identity_scoping.visible_identity_ids(principal))


def _grants(queryset: QuerySet, principal) -> QuerySet:
    """Own and reports' grants; for a resource owner, the grants on what they own (module doc)."""
    facts = identity_scoping.scope_facts(principal)
    clauses = _held_by(Identity.objects.filter(identity_scoping.hierarchy_filter(facts)).values("pk"))
    if facts.identity_id is not None and facts.flag(OWNS_RESOURCES):
        visible = identity_scoping.visible_identity_ids(principal, facts)
        clauses |= grants_on_owned_resources(facts.identity_id) & _held_by(visible)
    return queryset.filter(clauses)


def _catalog(queryset: QuerySet, principal) -> QuerySet:
    return queryset


def register() -> None:
    identity_scoping.add_probe(OWNS_RESOURCES, _owns_resources_probe)
    identity_scoping.add_contributor(resource_owner_filter)
    scoping.register_scope(Account, _accounts)
    scoping.register_scope(Grant, _grants)
    for model in (Application, Entitlement, Role):
        scoping.register_scope(model, _catalog)
