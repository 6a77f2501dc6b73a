"""The two admin consoles: control plane (base domain, public schema) and tenant (tenant domain).

Access is by role, not Django model permissions: control-plane staff manage the control plane;
in a tenant console admins change everything and auditors may only view. Every change made
through either console is audited like an API write.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.db import connection
from django.forms.models import model_to_dict  # noqa: F401 - re-exported for admin modules

from rapidvalue.context import Actor, acting_as


class ControlPlaneAdminSite(admin.AdminSite):
    site_header = "RapidValue control plane"
    site_title = "RapidValue control plane"
    index_title = "Tenants and control plane"
    index_template = "admin/control_plane_index.html"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pages: list[tuple[str, object, str, str]] = []

    def has_permission(self, request) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff and connection.schema_name == "public")

    def register_page(self, route: str, view, name: str, title: str) -> None:
        """A read-only page of a domain app (e.g. every tenant's agents); the platform imports no app."""
        self._pages.append((route, view, name, title))

    def get_urls(self):
        from django.urls import path

        pages = [path(route, self.admin_view(view), name=name) for route, view, name, _ in self._pages]
        return pages + super().get_urls()

    def each_context(self, request):
        context = super().each_context(request)
        from django.urls import reverse

        context["extra_pages"] = [(title, reverse(f"{self.name}:{name}")) for _, _, name, title in self._pages]
        return context


class TenantConsoleLoginForm(AdminAuthenticationForm):
    """Tenant console access follows the tenant roles, not Django's is_staff flag."""

    def confirm_login_allowed(self, user) -> None:
        if not (user.is_active and (user.is_admin or user.is_auditor)):
            raise ValidationError(self.error_messages["invalid_login"], code="invalid_login",
                                  params={"username": self.username_field.verbose_name})


class TenantAdminSite(admin.AdminSite):
    login_form = TenantConsoleLoginForm
    site_header = "RapidValue"
    site_title = "RapidValue"
    index_title = "Tenant console"

    def has_permission(self, request) -> bool:
        user = request.user
        return bool(
            user.is_active and (user.is_admin or user.is_auditor) and connection.schema_name != "public"
        )


control_plane_site = ControlPlaneAdminSite(name="control_plane")
tenant_site = TenantAdminSite(name="tenant")


def admin_actor(request) -> Actor:
    user = request.user
    kind = "control" if connection.schema_name == "public" else "user"
    return Actor(type=kind, id=str(user.pk), label=user.email, token_kind="session")


class RoleAdminMixin:
    """Tenant admins may change, auditors may only look; control-plane staff may change."""

    def _can_write(self, request) -> bool:
        user = request.user
        if connection.schema_name == "public":
            return bool(user.is_active and user.is_staff)
        return bool(user.is_active and user.is_admin and not user.is_auditor)

    def has_module_permission(self, request) -> bool:
        return self.admin_site.has_permission(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return self.admin_site.has_permission(request)

    def has_add_permission(self, request) -> bool:
        return self._can_write(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._can_write(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._can_write(request)


class ReadOnlyAdminMixin(RoleAdminMixin):
    """For append-only data (audit logs): nobody adds, changes or deletes through the console."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class AuditedAdminMixin(RoleAdminMixin):
    """Route console saves and deletes through the audit log, attributed to the console user."""

    audit_object_type = ""

    def _object_type(self) -> str:
        return self.audit_object_type or self.model._meta.model_name

    def save_model(self, request, obj, form, change):
        from rapidvalue.audit import services as audit

        before = None
        if change and obj.pk is not None:
            original = type(obj).objects.filter(pk=obj.pk).first()
            before = audit.snapshot(original) if original is not None else None
        super().save_model(request, obj, form, change)
        self._audit(request, f"{self._object_type()}.{'update' if change else 'create'}", obj, before,
                    audit.snapshot(obj))

    def delete_model(self, request, obj):
        from rapidvalue.audit import services as audit

        before = audit.snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        self._audit(request, f"{self._object_type()}.delete", obj, before, None)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def _audit(self, request, action, obj, before, after):
        from rapidvalue.audit import services as audit

        with acting_as(admin_actor(request)):
            if connection.schema_name == "public":
                from rapidvalue.tenancy.services import record_control_plane

                record_control_plane(action, tenant_slug=getattr(obj, "slug", ""), object_type=self._object_type(),
                                     object_id=obj.pk, details={"changes": audit.diff(before, after)})
            else:
                audit.record(action, self._object_type(), obj.pk, before=before, after=after)
