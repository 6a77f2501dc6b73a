from django.contrib import admin
from django.utils.html import format_html_join

from rapidvalue.admin_sites import RoleAdminMixin, admin_actor, tenant_site
from rapidvalue.context import acting_as

from . import services
from .models import Identity, LifecycleEvent

EDITABLE = ("external_id", "email", "first_name", "last_name", "display_name", "department", "title", "location",
            "employment_type", "status", "start_date", "end_date", "manager", "attributes")


@admin.register(Identity, site=tenant_site)
class IdentityAdmin(RoleAdminMixin, admin.ModelAdmin):
    """Identities through the same services as the API: paths, cycles, audit and lifecycle events."""

    list_display = ("display_name", "external_id", "email", "department", "title", "status", "manager")
    list_filter = ("status", "employment_type", "department")
    search_fields = ("display_name", "first_name", "last_name", "email", "external_id")
    raw_id_fields = ("manager",)
    readonly_fields = ("org_chain", "depth", "created_at", "updated_at")
    fields = (*EDITABLE, "org_chain", "depth", "created_at", "updated_at")
    list_select_related = ("manager",)

    @admin.display(description="Management chain (top first)")
    def org_chain(self, obj: Identity) -> str:
        ids = [segment for segment in obj.path.split("/") if segment][:-1]
        chain = {i.id.hex: i for i in Identity.objects.filter(id__in=ids)}
        return format_html_join(" → ", "{}", ((str(chain[i]),) for i in ids if i in chain)) or "—"

    def save_model(self, request, obj, form, change):
        data = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        with acting_as(admin_actor(request)):
            if change:
                changed = {name: data[name] for name in form.changed_data if name in data}
                saved = services.update_identity(Identity.objects.get(pk=obj.pk), source="console", **changed)
            else:
                saved = services.create_identity(source="console", **data)
        obj.pk = saved.pk

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # identities are deactivated (leaver), never deleted


@admin.register(LifecycleEvent, site=tenant_site)
class LifecycleEventAdmin(RoleAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "kind", "identity", "source")
    list_filter = ("kind", "source")
    raw_id_fields = ("identity",)
    readonly_fields = ("kind", "identity", "changes", "source", "occurred_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
