"""Control-plane operations: provisioning, suspending and deleting tenants, and their audit.

Management commands, the Django admin and tests all call these, so each rule lives once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from rapidvalue.audit import services as audit
from rapidvalue.context import Actor, client_ip_var, current_actor, request_id_var

from .models import ControlPlaneAuditEvent, Domain, Tenant, schema_name_for, validate_tenant_slug

logger = logging.getLogger("rapidvalue.tenancy")


class ProvisioningError(Exception):
    """A tenant cannot be provisioned as asked; the message says why, for the operator."""


@dataclass
class ProvisionResult:
    tenant: Tenant
    admin_email: str
    admin_password: str | None  # only when generated here, to be shown once

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.tenant.pk,
            "slug": self.tenant.slug,
            "name": self.tenant.name,
            "schema": self.tenant.schema_name,
            "domain": self.tenant.primary_domain,
            "status": self.tenant.status,
            "admin_email": self.admin_email,
        }
        if self.admin_password:
            data["admin_password"] = self.admin_password
        return data


def record_control_plane(
    action: str,
    *,
    tenant_slug: str = "",
    object_type: str = "",
    object_id: Any = "",
    details: dict[str, Any] | None = None,
    actor: Actor | None = None,
) -> ControlPlaneAuditEvent:
    """Append an event to the control-plane audit log in the public schema."""
    actor = actor or current_actor()
    with schema_context("public"):
        return ControlPlaneAuditEvent.objects.create(
            actor_type=actor.type,
            actor_id=actor.id,
            actor_label=actor.label,
            action=action,
            tenant_slug=tenant_slug,
            object_type=object_type,
            object_id=str(object_id or ""),
            details=details or {},
            request_id=request_id_var.get(),
            ip=client_ip_var.get(),
        )


def provision_tenant(
    slug: str,
    *,
    name: str,
    admin_email: str,
    admin_password: str | None = None,
    is_poc: bool = False,
) -> ProvisionResult:
    """Create a tenant: schema (migrated), domain ``<slug>.<base domain>`` and its first admin.

    Refuses an invalid or duplicate slug and an invalid email before touching the database.
    """
    from django.core.validators import validate_email

    from rapidvalue.users.models import User

    # Validate the slug as given: "Acme" is refused, never silently rewritten to "acme".
    slug = (slug or "").strip()
    try:
        validate_tenant_slug(slug)
    except ValidationError as exc:
        raise ProvisioningError(exc.messages[0]) from exc
    try:
        validate_email(admin_email)
    except ValidationError as exc:
        raise ProvisioningError(f"Invalid admin email: {admin_email!r}") from exc
    if not name.strip():
        raise ProvisioningError("A tenant needs a name")
    schema = schema_name_for(slug)
    if Tenant.objects.filter(slug=slug).exists() or Tenant.objects.filter(schema_name=schema).exists():
        raise ProvisioningError(f"A tenant with slug '{slug}' already exists")
    domain = f"{slug}.{settings.BASE_DOMAIN}"
    if Domain.objects.filter(domain=domain).exists():
        raise ProvisioningError(f"Domain '{domain}' is already in use")

    generated = None
    if not admin_password:
        generated = admin_password = secrets.token_urlsafe(16)

    tenant = Tenant(slug=slug, schema_name=schema, name=name.strip(), is_poc=is_poc)
    tenant.save()  # creates and migrates the schema (auto_create_schema)
    try:
        with transaction.atomic():
            Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
            with tenant_context(tenant):
                admin = User.objects.create_user(
                    admin_email, admin_password, is_admin=True, is_staff=True, full_name="Tenant administrator"
                )
                audit.record("tenant.provisioned", "tenant", tenant.pk, after={"slug": slug, "name": tenant.name})
                audit.record("user.create", "user", admin.pk, after=audit.snapshot(admin))
            record_control_plane(
                "tenant.provision", tenant_slug=slug, object_type="tenant", object_id=tenant.pk,
                details={"name": tenant.name, "domain": domain, "admin_email": admin.email},
            )
    except Exception:
        tenant.delete(force_drop=True)
        raise
    logger.info("provisioned tenant %s (schema %s)", slug, schema)
    return ProvisionResult(tenant=tenant, admin_email=admin.email, admin_password=generated)


def get_tenant(slug: str) -> Tenant:
    tenant = Tenant.objects.exclude(schema_name="public").filter(slug=slug).first()
    if tenant is None:
        raise ProvisioningError(f"No tenant with slug '{slug}'")
    return tenant


@transaction.atomic
def set_tenant_status(tenant: Tenant, status: str) -> Tenant:
    """Suspend or reactivate a tenant; a suspended tenant's tokens and console answer 403."""
    if status not in Tenant.Status.values:
        raise ProvisioningError(f"Unknown status '{status}'")
    before = tenant.status
    tenant.status = status
    tenant.suspended_at = timezone.now() if status == Tenant.Status.SUSPENDED else None
    tenant.save(update_fields=["status", "suspended_at"])
    record_control_plane(
        f"tenant.{'suspend' if status == Tenant.Status.SUSPENDED else 'activate'}",
        tenant_slug=tenant.slug, object_type="tenant", object_id=tenant.pk,
        details={"status": [before, status]},
    )
    return tenant


def delete_tenant(tenant: Tenant) -> None:
    """Drop the tenant's schema with all its data; the control-plane log keeps the record."""
    slug, pk = tenant.slug, tenant.pk
    record_control_plane("tenant.delete", tenant_slug=slug, object_type="tenant", object_id=pk)
    tenant.delete(force_drop=True)
    logger.info("deleted tenant %s", slug)


def record_cross_tenant_access(request: HttpRequest, status_code: int) -> None:
    """Write an X-Tenant-Id request to the control-plane log and to the tenant's own log."""
    principal = getattr(request, "principal", None)
    claims = request.token_claims or {}
    actor = (
        principal.as_actor()
        if principal is not None
        else Actor(type="control", id=str(claims.get("user_id", "")), label="unauthenticated control token")
    )
    details = {"method": request.method, "path": request.path, "status": status_code}
    tenant = request.tenant
    record_control_plane(
        "control_plane.cross_tenant_request", tenant_slug=tenant.slug, object_type="tenant",
        object_id=tenant.pk, details=details, actor=actor,
    )
    with tenant_context(tenant):
        audit.record("control_plane.cross_tenant_request", "tenant", tenant.pk, after=details, actor=actor)
