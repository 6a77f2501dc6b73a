from django.contrib import admin

from rapidvalue.admin_sites import RoleAdminMixin, admin_actor, tenant_site
from rapidvalue.context import acting_as

from . import services
from .models import ApiToken


@admin.register(ApiToken, site=tenant_site)
class ApiTokenAdmin(RoleAdminMixin, admin.ModelAdmin):
    """Tokens are issued through the API (shown once); the console lists and revokes them."""

    list_display = ("name", "kind", "role", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("kind", "role")
    search_fields = ("name",)
    exclude = ("token_hash",)
    readonly_fields = ("id", "kind", "name", "role", "agent_id", "created_at", "created_by", "expires_at",
                       "last_used_at", "revoked_at", "rate_limit_per_second", "rate_limit_burst")
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        with acting_as(admin_actor(request)):
            for token in queryset:
                services.revoke_api_token(token)
