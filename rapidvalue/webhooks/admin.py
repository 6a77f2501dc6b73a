from django.contrib import admin

from rapidvalue.admin_sites import ReadOnlyAdminMixin, RoleAdminMixin, tenant_site

from .models import WebhookDelivery, WebhookSubscription


@admin.register(WebhookSubscription, site=tenant_site)
class WebhookSubscriptionAdmin(RoleAdminMixin, admin.ModelAdmin):
    """Settings → Webhooks. Created through the API (the secret is shown once there)."""

    list_display = ("url", "description", "enabled", "created_at")
    exclude = ("secret_encrypted",)
    readonly_fields = ("url", "event_types", "created_by", "created_at", "updated_at")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WebhookDelivery, site=tenant_site)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "subscription", "event", "status", "attempts", "last_status_code", "last_latency_ms",
                    "next_attempt_at")
    list_filter = ("status",)
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
