"""Sign-in, token refresh, logout and service tokens: the business rules of authentication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name
from rest_framework import exceptions
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

from rapidvalue.audit import services as audit
from rapidvalue.context import Actor, client_ip_var
from rapidvalue.tenancy.models import Tenant

from . import login_throttle, sessions
from .models import ApiToken
from .tokens import ALGORITHM, ISSUER, encode_machine_token, hash_token

# A valid hash to compare against when the account does not exist, so that a missing account
# takes as long to refuse as a wrong password (no user enumeration by timing).
_DUMMY_HASH = make_password("rapidvalue-timing-equaliser")


class TooManyAttempts(exceptions.Throttled):
    default_detail = "Too many failed sign-in attempts; try again later."
    default_code = "too_many_login_attempts"


@dataclass
class IssuedTokens:
    access: str
    refresh: str
    tenant: Tenant | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "access": self.access,
            "refresh": self.refresh,
            "token_type": "Bearer",
            "expires_in": int(settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds()),
            "tenant": self.tenant.slug if self.tenant else None,
        }


def _tenant_key(tenant: Tenant | None) -> str:
    return str(tenant.pk) if tenant else "public"


def login(email: str, password: str, tenant: Tenant | None) -> IssuedTokens:
    """Check credentials in the tenant's schema (or the control plane's) and start a session.

    The connection must already be in ``tenant``'s schema (public for control-plane staff).
    """
    from rapidvalue.users.models import User

    email = (email or "").strip().lower()
    ip = client_ip_var.get()
    key = _tenant_key(tenant)
    wait = login_throttle.retry_after(key, email, ip)
    if wait:
        raise TooManyAttempts(wait=wait)
    user = User.objects.filter(email=email).first()
    valid = user is not None and user.is_active and user.check_password(password)
    if user is None:
        check_password(password, _DUMMY_HASH)
    if tenant is None and valid and not user.is_staff:
        valid = False
    if not valid:
        login_throttle.record_failure(key, email, ip)
        if tenant is not None:
            audit.record("auth.login_failed", "user", user.pk if user else "",
                         after={"email": email}, actor=Actor(type="anonymous", id="", label=email))
        raise exceptions.AuthenticationFailed("Invalid email or password.", code="invalid_credentials")
    login_throttle.record_success(key, email, ip)

    refresh = RefreshToken.for_user(user)
    refresh["kind"] = "user" if tenant is not None else "control"
    if tenant is not None:
        refresh["tid"] = tenant.pk
    refresh["sid"] = uuid.uuid4().hex
    actor = Actor(type=refresh["kind"], id=str(user.pk), label=user.email, token_kind=refresh["kind"])
    if tenant is not None:
        audit.record("auth.login", "user", user.pk, actor=actor)
    else:
        from rapidvalue.tenancy.services import record_control_plane

        record_control_plane("auth.login", object_type="user", object_id=user.pk, actor=actor)
    return IssuedTokens(access=str(refresh.access_token), refresh=str(refresh), tenant=tenant)


def read_refresh_claims(raw: str) -> dict[str, Any]:
    """Verify a refresh token enough to know its tenant; full checks follow in its schema."""
    try:
        claims = jwt.decode(raw, settings.JWT_SIGNING_KEY, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["kind", "jti", "token_type"]})
    except jwt.ExpiredSignatureError as exc:
        raise exceptions.AuthenticationFailed("Refresh token has expired.", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise exceptions.AuthenticationFailed("Refresh token is invalid.", code="token_invalid") from exc
    if claims.get("token_type") != "refresh" or claims.get("kind") not in {"user", "control"}:
        raise exceptions.AuthenticationFailed("Not a refresh token.", code="token_invalid")
    return claims


def enter_token_schema(claims: dict[str, Any], host_tenant: Tenant | None) -> Tenant | None:
    """Switch the connection to the refresh token's tenant, with the same rules as bearer tokens."""
    if claims["kind"] == "control":
        if host_tenant is not None:
            raise exceptions.AuthenticationFailed("Control-plane tokens are used on the base domain.",
                                                  code="wrong_tenant")
        connection.set_schema_to_public()
        return None
    tenant = Tenant.objects.filter(pk=claims.get("tid")).exclude(schema_name=get_public_schema_name()).first()
    if tenant is None:
        raise exceptions.AuthenticationFailed("The token's tenant no longer exists.", code="token_invalid")
    if host_tenant is not None and host_tenant.pk != tenant.pk:
        raise exceptions.AuthenticationFailed("This token belongs to another tenant.", code="wrong_tenant")
    if tenant.is_suspended:
        raise exceptions.PermissionDenied("This tenant is suspended.", code="tenant_suspended")
    connection.set_tenant(tenant)
    return tenant


def refresh_tokens(raw: str, host_tenant: Tenant | None) -> dict[str, Any]:
    """Rotate a refresh token: the old one is blacklisted, a new pair is returned."""
    claims = read_refresh_claims(raw)
    tenant = enter_token_schema(claims, host_tenant)
    if claims.get("sid") and sessions.is_session_revoked(_tenant_key(tenant), claims["sid"]):
        raise exceptions.AuthenticationFailed("Session has been signed out.", code="token_revoked")
    serializer = TokenRefreshSerializer(data={"refresh": raw})
    try:
        serializer.is_valid(raise_exception=True)
    except TokenError as exc:
        raise exceptions.AuthenticationFailed(str(exc), code="token_invalid") from exc
    except exceptions.ValidationError as exc:
        raise exceptions.AuthenticationFailed("Refresh token is invalid.", code="token_invalid") from exc
    data = dict(serializer.validated_data)
    data["token_type"] = "Bearer"
    data["expires_in"] = int(settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds())
    data["tenant"] = tenant.slug if tenant else None
    return data


def logout(raw: str, host_tenant: Tenant | None) -> None:
    """Blacklist the refresh token and deny the access tokens of its session."""
    claims = read_refresh_claims(raw)
    tenant = enter_token_schema(claims, host_tenant)
    try:
        RefreshToken(raw).blacklist()
    except TokenError as exc:
        raise exceptions.AuthenticationFailed(str(exc), code="token_invalid") from exc
    if claims.get("sid"):
        sessions.revoke_session(_tenant_key(tenant), claims["sid"])
    actor = Actor(type=claims["kind"], id=str(claims.get("user_id", "")), label="", token_kind=claims["kind"])
    if tenant is not None:
        audit.record("auth.logout", "user", claims.get("user_id", ""), actor=actor)


@dataclass
class CreatedToken:
    token: ApiToken
    raw: str


@transaction.atomic
def create_api_token(
    *,
    tenant: Tenant,
    name: str,
    kind: str = ApiToken.Kind.SERVICE,
    role: str = ApiToken.Role.AUDITOR,
    expires_at: datetime | None = None,
    rate_limit_per_second: int | None = None,
    rate_limit_burst: int | None = None,
    agent_id: uuid.UUID | None = None,
    created_by: str = "",
) -> CreatedToken:
    """Issue a service (or agent) token; the raw token exists only in the return value."""
    token = ApiToken(
        kind=kind, name=name, role=role, expires_at=expires_at, agent_id=agent_id,
        rate_limit_per_second=rate_limit_per_second, rate_limit_burst=rate_limit_burst, created_by=created_by,
    )
    raw = encode_machine_token(kind, tenant.pk, token.id)
    token.token_hash = hash_token(raw)
    token.save()
    audit.record(f"{kind}_token.create", "api_token", token.pk, after=audit.snapshot(token))
    return CreatedToken(token=token, raw=raw)


@transaction.atomic
def revoke_api_token(token: ApiToken) -> ApiToken:
    """Revoke at once: the next request with this token is a 401."""
    if token.revoked_at is None:
        before = audit.snapshot(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit.record(f"{token.kind}_token.revoke", "api_token", token.pk, before=before, after=audit.snapshot(token))
    return token
