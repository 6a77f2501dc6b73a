"""Base views: every API view inherits one of these, so every endpoint gets the conventions.

* writes (POST/PUT/PATCH/DELETE) run in one transaction, rolled back on any error;
* ``Idempotency-Key`` on writes (see ``idempotency``);
* rate-limit headers on every response;
* querysets restricted to what the caller may see (``scoping.restrict``), so detail URLs of
  objects outside the caller's scope answer 404.

Domain viewsets only declare queryset, serializer, filters and the service calls.
"""

from __future__ import annotations

import math

from django.db import transaction
from rest_framework import mixins, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from . import idempotency, scoping


class _Replay(Exception):
    def __init__(self, response: Response):
        self.response = response


class PlatformViewMixin:
    """Transactions, idempotency and rate-limit headers for any DRF view."""

    #: Set False on views whose failure path must still write (login records failed attempts).
    transactional_writes = True
    #: Viewset actions that must commit as they go, e.g. because they wait for another process to
    #: act on what they wrote (an agent job); their services own their transactions.
    non_transactional_actions: tuple[str, ...] = ()
    owns_transaction = False

    def _transactional(self, request) -> bool:
        if request.method not in idempotency.UNSAFE_METHODS or not self.transactional_writes:
            return False
        action = getattr(self, "action_map", {}).get(request.method.lower())
        return action not in self.non_transactional_actions

    def dispatch(self, request, *args, **kwargs):
        if self._transactional(request):
            with transaction.atomic():
                self.owns_transaction = True
                return super().dispatch(request, *args, **kwargs)
        return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self._idempotency_claim = None
        principal = request.user
        if self._transactional(request) and getattr(principal, "is_authenticated", False):
            outcome = idempotency.claim_or_replay(request._request, principal)
            if isinstance(outcome, Response):
                raise _Replay(outcome)
            self._idempotency_claim = outcome

    def get_authenticate_header(self, request):
        # DRF turns 401 into 403 on views without authentication classes (login, refresh);
        # a bad credential is a 401 everywhere in this API.
        return super().get_authenticate_header(request) or 'Bearer realm="rapidvalue"'

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            return exc.response
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        claim = getattr(self, "_idempotency_claim", None)
        if claim is not None and response.status_code < 400:
            idempotency.store(claim, response, getattr(self, "secret_response_fields", ()))
        result = getattr(request._request, "rate_limit", None)
        if result is not None:
            response["X-RateLimit-Limit"] = str(result.limit)
            response["X-RateLimit-Remaining"] = str(result.remaining)
            response["X-RateLimit-Reset"] = str(math.ceil(result.reset))
        return response


class PlatformAPIView(PlatformViewMixin, APIView):
    """Base for non-resource endpoints (login, me, health)."""


class ScopedQuerysetMixin:
    """Restrict ``get_queryset()`` to the caller's scope through the one scoping mechanism."""

    def get_queryset(self):
        return scoping.restrict(super().get_queryset(), self.request.user)


class PlatformGenericViewSet(PlatformViewMixin, ScopedQuerysetMixin, viewsets.GenericViewSet):
    """Base for resource viewsets; combine with DRF's mixins for the actions offered."""


class PlatformReadOnlyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PlatformGenericViewSet):
    """List and detail only: the resource has no write API (audit events)."""


class AuditedWritesMixin:
    """Plain create/update/delete for models whose only rule is validation: saved and audited.

    Models with business rules (users, identities, accounts) route ``perform_*`` to their
    services instead; this is the service layer for catalog-like data.
    """

    audit_object_type = ""

    def _audit_type(self) -> str:
        return self.audit_object_type or self.get_queryset().model._meta.model_name

    def perform_create(self, serializer):
        from rapidvalue.audit import services as audit

        instance = serializer.save()
        audit.record(f"{self._audit_type()}.create", self._audit_type(), instance.pk, after=audit.snapshot(instance))

    def perform_update(self, serializer):
        from rapidvalue.audit import services as audit

        before = audit.snapshot(serializer.instance)
        instance = serializer.save()
        audit.record(f"{self._audit_type()}.update", self._audit_type(), instance.pk, before=before,
                     after=audit.snapshot(instance))

    def perform_destroy(self, instance):
        from django.db.models import ProtectedError

        from rapidvalue.audit import services as audit

        from .errors import Conflict

        before = audit.snapshot(instance)
        pk = instance.pk
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict("Other objects still refer to this one.", code="in_use") from exc
        audit.record(f"{self._audit_type()}.delete", self._audit_type(), pk, before=before)


class PlatformModelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    PlatformGenericViewSet,
):
    """Full CRUD; subclasses route ``perform_*`` to their services so every write is audited."""


#: ``lookup_value_regex`` / nested route kwarg for UUID primary keys: a real UUID (dashes optional),
#: so that anything else is the JSON 404 of an unknown path rather than a 400 from the database lookup.
UUID_LOOKUP = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
