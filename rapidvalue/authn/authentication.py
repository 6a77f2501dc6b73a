"""DRF authentication classes: one for the API, one for the agent spine.

The tenant middleware has already verified the token's signature and switched the database
connection to the token's tenant (``request.token_claims``); these classes decide whether the
token kind is allowed on this endpoint and load the principal behind it.
"""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.db import connection
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from rapidvalue.context import actor_var

from .models import ApiToken
from .principal import Principal
from .sessions import is_session_revoked
from .tokens import hash_token

LAST_USED_RESOLUTION = timedelta(minutes=1)


def _current_tenant():
    tenant = getattr(connection, "tenant", None)
    if tenant is None or tenant.schema_name == get_public_schema_name():
        return None
    return tenant


def _user_principal(claims: dict) -> Principal:
    from rapidvalue.users.models import User

    tenant = _current_tenant()
    if tenant is None or tenant.pk != claims["tid"]:
        raise AuthenticationFailed("Token does not belong to this tenant", code="wrong_tenant")
    if claims.get("sid") and is_session_revoked(str(tenant.pk), claims["sid"]):
        raise AuthenticationFailed("Session has been signed out", code="token_revoked")
    user = User.objects.filter(pk=claims.get("user_id"), is_active=True).first()
    if user is None:
        raise AuthenticationFailed("User is inactive or no longer exists", code="user_inactive")
    return Principal(
        kind="user",
        tenant=tenant,
        subject_id=str(user.pk),
        label=user.email,
        is_admin=user.is_admin,
        is_auditor=user.is_auditor,
        user=user,
        identity_id=user.identity_id,
    )


def _control_principal(claims: dict) -> Principal:
    from rapidvalue.users.models import User

    if claims.get("sid") and is_session_revoked("public", claims["sid"]):
        raise AuthenticationFailed("Session has been signed out", code="token_revoked")
    # Staff live in the public schema; a tenant schema has a users table of its own that would
    # shadow it on the search path, so look the staff member up explicitly in public.
    with schema_context(get_public_schema_name()):
        user = User.objects.filter(pk=claims.get("user_id"), is_active=True, is_staff=True).first()
    if user is None:
        raise AuthenticationFailed("Control-plane user is inactive or no longer exists", code="user_inactive")
    return Principal(
        kind="control",
        tenant=_current_tenant(),
        subject_id=str(user.pk),
        label=user.email,
        is_admin=True,
        user=user,
    )


def _machine_principal(claims: dict, raw: str) -> Principal:
    tenant = _current_tenant()
    if tenant is None or tenant.pk != claims["tid"]:
        raise AuthenticationFailed("Token does not belong to this tenant", code="wrong_tenant")
    token = ApiToken.objects.filter(pk=claims["jti"], kind=claims["kind"]).first()
    if token is None or not hmac.compare_digest(token.token_hash, hash_token(raw)):
        raise AuthenticationFailed("Token is invalid", code="token_invalid")
    now = timezone.now()
    if token.revoked_at is not None:
        raise AuthenticationFailed("Token has been revoked", code="token_revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise AuthenticationFailed("Token has expired", code="token_expired")
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        # One write per token per minute at most, not one per request.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return Principal(
        kind=token.kind,
        tenant=tenant,
        subject_id=str(token.pk),
        label=token.name,
        is_admin=token.kind == ApiToken.Kind.SERVICE and token.role == ApiToken.Role.ADMIN,
        is_auditor=token.kind == ApiToken.Kind.SERVICE and token.role == ApiToken.Role.AUDITOR,
        token_id=token.pk,
        rate_limit_per_second=token.rate_limit_per_second,
        rate_limit_burst=token.rate_limit_burst,
        extra={"agent_id": str(token.agent_id) if token.agent_id else None},
    )


class TenantTokenAuthentication(BaseAuthentication):
    """Bearer tokens for the REST API: user, service and control-plane tokens; never agent tokens."""

    allowed_kinds = frozenset({"user", "service", "control"})

    def authenticate(self, request):
        django_request = request._request
        error = getattr(django_request, "token_error", None)
        if error:
            raise AuthenticationFailed(error, code="token_invalid")
        claims = getattr(django_request, "token_claims", None)
        if claims is None:
            return None
        kind = claims["kind"]
        if kind not in self.allowed_kinds:
            raise AuthenticationFailed(f"{kind.capitalize()} tokens are not accepted here", code="token_kind")
        if kind == "user":
            principal = _user_principal(claims)
        elif kind == "control":
            principal = _control_principal(claims)
        else:
            principal = _machine_principal(claims, django_request.bearer_token)
        django_request.principal = principal
        actor_var.set(principal.as_actor())
        return principal, principal

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="rapidvalue"'


class AgentTokenAuthentication(TenantTokenAuthentication):
    """Agent tokens, and nothing else, on ``/api/v1/agent/*``."""

    allowed_kinds = frozenset({"agent"})
