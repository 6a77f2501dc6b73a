"""Control-plane models, stored in the public schema."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
RESERVED_SLUGS = frozenset(
    {"public", "www", "admin", "api", "static", "media", "control", "information-schema", "pg", "docs"}
)


def validate_tenant_slug(slug: str) -> None:
    """Refuse slugs that cannot be a DNS label and a schema name, or that we reserve."""
    if not SLUG_RE.match(slug or ""):
        raise ValidationError(
            "Slug must be 3-40 characters: lowercase letters, digits and hyphens, "
            "starting with a letter and not ending with a hyphen.",
            code="invalid_slug",
        )
    if slug in RESERVED_SLUGS or slug.startswith("pg-"):
        raise ValidationError(f"Slug '{slug}' is reserved.", code="reserved_slug")


def schema_name_for(slug: str) -> str:
    """Schema names are the slug with hyphens as underscores, so slug and schema map 1:1."""
    return slug.replace("-", "_")


class Tenant(TenantMixin):
    """A customer organisation; its data lives in its own PostgreSQL schema."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=40, unique=True, validators=[validate_tenant_slug])
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    is_poc = models.BooleanField("POC mode", default=False)
    rate_limit_per_second = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides the default per-token sustained rate for this tenant."
    )
    rate_limit_burst = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides the default per-token burst for this tenant."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    suspended_at = models.DateTimeField(null=True, blank=True)

    auto_create_schema = True
    auto_drop_schema = True

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_suspended(self) -> bool:
        return self.status == self.Status.SUSPENDED

    @property
    def primary_domain(self) -> str:
        return f"{self.slug}.{settings.BASE_DOMAIN}"


class Domain(DomainMixin):
    """A host name that routes to a tenant (``<slug>.<base domain>`` at least)."""

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain


class ControlPlaneAuditEvent(models.Model):
    """Append-only log of control-plane actions: tenant lifecycle and cross-tenant access."""

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_type = models.CharField(max_length=16)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    tenant_slug = models.CharField(max_length=40, blank=True, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.action} {self.tenant_slug}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("Control-plane audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Control-plane audit events are append-only")
