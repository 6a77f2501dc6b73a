"""Who sees which identities: self, everyone under them (any depth), plus what other apps add.

A principal linked to an identity (``User.identity_id``) sees that identity and, as a manager,
its direct and indirect reports: one prefix scan of the materialized manager path. Other apps
add visibility through :func:`add_contributor` (the access app adds resource owners: holders of
grants on resources the principal owns). The result is the union, expressed as one SQL query;
everything that exposes identity data (accounts, grants, ...) filters by
:func:`visible_identity_ids` so the rule lives here once.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import Q, QuerySet

from rapidvalue.api import scoping

from .models import Identity

Contributor = Callable[[object], Q | None]
_contributors: list[Contributor] = []


def add_contributor(contributor: Contributor) -> None:
    """Let another app widen identity visibility (returns a Q over Identity, or None)."""
    if contributor not in _contributors:
        _contributors.append(contributor)


def identity_filter(principal) -> Q:
    """The Q selecting identities ``principal`` may see (not for admins: they see all)."""
    clauses = Q(pk__in=[])
    identity_id = getattr(principal, "identity_id", None)
    if identity_id is not None:
        own_path = Identity.objects.filter(pk=identity_id).values_list("path", flat=True).first()
        if own_path:
            clauses |= Q(path__startswith=own_path)
    for contributor in _contributors:
        extra = contributor(principal)
        if extra is not None:
            clauses |= extra
    return clauses


def visible_identities(principal) -> QuerySet[Identity]:
    return scoping.restrict(Identity.objects.all(), principal)


def visible_identity_ids(principal) -> QuerySet:
    """A subquery of the ids of visible identities, for scoping related data in SQL."""
    return visible_identities(principal).values("pk")


def _identity_rule(queryset: QuerySet, principal) -> QuerySet:
    return queryset.filter(identity_filter(principal))


def register() -> None:
    scoping.register_scope(Identity, _identity_rule)
