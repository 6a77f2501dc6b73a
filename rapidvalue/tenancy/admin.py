from django.contrib import admin, messages

from rapidvalue.admin_sites import AuditedAdminMixin, ReadOnlyAdminMixin, admin_actor, control_plane_site
from rapidvalue.context import acting_as

from . import services
from .models import ControlPlaneAuditEvent, Domain, Tenant, schema_name_for


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0

    def has_add_permission(self, request, obj=None):
        return request.user.is_staff

    def has_change_permission(self, request, obj=None):
        return request.user.is_staff

    def has_delete_permission(self, request, obj=None):
        return request.user.is_staff

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff


@admin.register(Tenant, site=control_plane_site)
class TenantAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("slug", "name", "status", "is_poc", "schema_name", "created_at")
    list_filter = ("status", "is_poc")
    search_fields = ("slug", "name")
    readonly_fields = ("schema_name", "created_at", "suspended_at")
    fields = ("slug", "name", "status", "is_poc", "rate_limit_per_second", "rate_limit_burst",
              "schema_name", "created_at", "suspended_at")
    inlines = [DomainInline]
    actions = ["suspend", "reactivate"]

    def get_readonly_fields(self, request, obj=None):
        # The slug names the schema: it is fixed once the tenant exists.
        return (*self.readonly_fields, "slug") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.schema_name = schema_name_for(obj.slug)
        super().save_model(request, obj, form, change)
        if not change:
            # Every tenant answers on <slug>.<base domain>, as with provision_tenant.
            Domain.objects.get_or_create(domain=obj.primary_domain, defaults={"tenant": obj, "is_primary": True})

    @admin.action(description="Suspend selected tenants")
    def suspend(self, request, queryset):
        with acting_as(admin_actor(request)):
            for tenant in queryset:
                services.set_tenant_status(tenant, Tenant.Status.SUSPENDED)
        messages.success(request, f"Suspended {queryset.count()} tenant(s).")

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request, queryset):
        with acting_as(admin_actor(request)):
            for tenant in queryset:
                services.set_tenant_status(tenant, Tenant.Status.ACTIVE)
        messages.success(request, f"Reactivated {queryset.count()} tenant(s).")


@admin.register(ControlPlaneAuditEvent, site=control_plane_site)
class ControlPlaneAuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "action", "tenant_slug", "actor_label", "object_type", "object_id")
    list_filter = ("action",)
    search_fields = ("tenant_slug", "actor_label", "action", "object_id")
    readonly_fields = [f.name for f in ControlPlaneAuditEvent._meta.fields]
