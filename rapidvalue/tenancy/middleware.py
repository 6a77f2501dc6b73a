"""Tenant resolution: the one place that decides which schema a request runs in.

Order of evidence:
1. The host: a tenant's own domain names that tenant; the base domain (and any other allowed
   host) names none.
2. The bearer token: its ``tid`` claim names the tenant. On a tenant's own domain the two must
   agree, otherwise 401. A suspended tenant answers 403.
3. ``X-Tenant-Id``: only a control-plane token may send it (anyone else gets 403); it then acts
   inside that tenant and the request is written to both audit logs.

Signature, expiry and shape are checked here (``tokens.decode``) so that an unverified claim
never selects a schema; whether the token kind is allowed on the endpoint, and revocation, are
checked by the DRF authentication classes.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django_tenants.utils import get_public_schema_name, remove_www

from rapidvalue.api.errors import error_response
from rapidvalue.authn.tokens import InvalidToken, decode

from . import services
from .models import Domain, Tenant

logger = logging.getLogger("rapidvalue.tenancy")

EXEMPT_PATHS = ("/health",)


def bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def host_tenant(request: HttpRequest) -> Tenant | None:
    """The tenant whose domain the request was sent to, or None on the base domain."""
    hostname = remove_www(request.get_host().split(":")[0]).lower()
    if hostname == settings.BASE_DOMAIN:
        return None
    domain = Domain.objects.select_related("tenant").filter(domain=hostname).first()
    return domain.tenant if domain else None


def find_tenant(reference: str) -> Tenant | None:
    """A tenant by slug or numeric id, as ``X-Tenant-Id`` allows both."""
    reference = reference.strip()
    if reference.isdigit():
        return Tenant.objects.filter(pk=int(reference)).first()
    return Tenant.objects.filter(slug=reference.lower()).first()


class TenantResolutionMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        connection.set_schema_to_public()
        if request.path.startswith(EXEMPT_PATHS):
            # Health probes touch no tenant data and must answer even when the database is down.
            request.tenant = Tenant(schema_name=get_public_schema_name(), slug="", name="Control plane")
            request.token_claims = None
            request.token_error = None
            return self.get_response(request)
        try:
            refusal = self._resolve(request)
            if refusal is not None:
                return refusal
            response = self.get_response(request)
            if getattr(request, "acting_via_x_tenant", False):
                services.record_cross_tenant_access(request, response.status_code)
            return response
        finally:
            connection.set_schema_to_public()

    def _resolve(self, request: HttpRequest) -> HttpResponse | None:
        request.token_claims = None
        request.token_error = None
        request.acting_via_x_tenant = False
        on_host = host_tenant(request)
        request.host_tenant = on_host
        target = on_host
        raw = bearer_token(request)
        request.bearer_token = raw
        x_tenant = request.headers.get("X-Tenant-Id")

        claims = None
        if raw:
            try:
                claims = decode(raw)
            except InvalidToken as exc:
                request.token_error = str(exc)

        if claims is not None:
            if claims["kind"] == "control":
                if on_host is not None:
                    return error_response(
                        401, "wrong_tenant", "Control-plane tokens are used on the base domain with X-Tenant-Id."
                    )
                if x_tenant:
                    target = find_tenant(x_tenant)
                    if target is None:
                        return error_response(404, "tenant_not_found", "No tenant matches X-Tenant-Id.")
                    request.acting_via_x_tenant = True
            else:
                if x_tenant:
                    return error_response(
                        403, "x_tenant_forbidden", "Only control-plane staff may send X-Tenant-Id."
                    )
                target = Tenant.objects.filter(pk=claims["tid"]).first()
                if target is None:
                    request.token_error = "The token's tenant no longer exists"
                    target = on_host
                elif on_host is not None and on_host.pk != target.pk:
                    return error_response(401, "wrong_tenant", "This token belongs to another tenant.")
        elif x_tenant and not raw:
            return error_response(401, "not_authenticated", "Authentication credentials were not provided.")

        if target is not None and target.is_suspended:
            return error_response(403, "tenant_suspended", "This tenant is suspended.")

        request.token_claims = claims
        if target is None:
            request.tenant = Tenant(schema_name=get_public_schema_name(), slug="", name="Control plane")
            connection.set_schema_to_public()
            request.urlconf = settings.PUBLIC_SCHEMA_URLCONF
        else:
            request.tenant = target
            connection.set_tenant(target)
        return None
