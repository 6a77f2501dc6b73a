"""The one visibility mechanism: which rows of a model a principal may see.

Admins and auditors see everything in their tenant. Anyone else sees what the scope rules
registered for the model allow (manager chains and resource ownership arrive with the identities
and access apps, which register their rules here); a model without a rule shows them nothing.
Viewsets, related-id lookups in request bodies and the admin all go through :func:`restrict`.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import Model, QuerySet

ScopeRule = Callable[[QuerySet, "Principal"], QuerySet]  # noqa: F821 - documented type

_rules: dict[type[Model], ScopeRule] = {}


def register_scope(model: type[Model], rule: ScopeRule) -> None:
    """Declare how non-admin principals see ``model``; domain apps call this in ``ready()``."""
    _rules[model] = rule


def restrict(queryset: QuerySet, principal) -> QuerySet:
    """The part of ``queryset`` that ``principal`` may see, as one SQL query."""
    if principal is None or not getattr(principal, "is_authenticated", False):
        return queryset.none()
    if principal.sees_everything:
        return queryset
    rule = _rules.get(queryset.model)
    if rule is None:
        return queryset.none()
    return rule(queryset, principal)
