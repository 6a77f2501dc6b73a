from django.contrib import admin

from rapidvalue.admin_sites import ReadOnlyAdminMixin, tenant_site

from .models import AuditEvent


@admin.register(AuditEvent, site=tenant_site)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "action", "actor_label", "object_type", "object_id", "request_id")
    list_filter = ("action", "actor_type", "object_type")
    search_fields = ("actor_label", "action", "object_id", "request_id")
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
