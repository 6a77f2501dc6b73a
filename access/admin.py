from django.contrib import admin

from rapidvalue.admin_sites import AuditedAdminMixin, tenant_site

from .models import Account, Application, Entitlement, Grant, Role, RoleInclusion


@admin.register(Application, site=tenant_site)
class ApplicationAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "kind", "created_at")
    search_fields = ("name",)
    raw_id_fields = ("owners",)


@admin.register(Account, site=tenant_site)
class AccountAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("username", "native_id", "application", "identity", "status", "last_login_at")
    list_filter = ("status", "application")
    search_fields = ("username", "native_id")
    raw_id_fields = ("identity",)
    list_select_related = ("application", "identity")


@admin.register(Entitlement, site=tenant_site)
class EntitlementAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("value", "display_name", "application", "type", "risk_level", "requestable")
    list_filter = ("type", "risk_level", "requestable", "application")
    search_fields = ("value", "display_name")
    raw_id_fields = ("owner",)
    list_select_related = ("application",)


class RoleInclusionInline(admin.TabularInline):
    model = RoleInclusion
    fk_name = "parent"
    raw_id_fields = ("child",)
    extra = 0


@admin.register(Role, site=tenant_site)
class RoleAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "requestable", "created_at")
    search_fields = ("name",)
    raw_id_fields = ("owners", "entitlements")
    inlines = [RoleInclusionInline]


@admin.register(Grant, site=tenant_site)
class GrantAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("id", "identity", "account", "entitlement", "role", "source", "state", "created_at")
    list_filter = ("source", "state")
    raw_id_fields = ("identity", "account", "entitlement", "role")
    show_full_result_count = False  # 2M rows: no COUNT(*) on every page
    list_select_related = ("identity", "entitlement", "role")
