"""Agents in the tenant console (state, heartbeat, version, jobs) and on the control plane (all tenants)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.db import connection
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from rapidvalue.admin_sites import ReadOnlyAdminMixin, RoleAdminMixin, admin_actor, control_plane_site, tenant_site
from rapidvalue.context import acting_as
from rapidvalue.tenancy.models import Tenant

from .models import Agent, AgentJob
from .services import enrollment


@admin.register(Agent, site=tenant_site)
class AgentAdmin(RoleAdminMixin, admin.ModelAdmin):
    list_display = ("name", "state", "last_heartbeat_at", "version", "hostname", "open_jobs", "enrolled_at")
    list_filter = ("online",)
    search_fields = ("name", "hostname")
    fields = ("name", "state", "online_since", "offline_since", "last_heartbeat_at", "version", "hostname",
              "capabilities", "running_jobs", "jobs", "enrolled_at", "revoked_at", "created_by", "created_at")
    readonly_fields = tuple(f for f in fields if f != "name")
    actions = ["revoke"]

    def get_queryset(self, request):
        # The job counts come with the page's rows: one query, not two per agent.
        return super().get_queryset(request).annotate(
            open_job_count=Count("jobs", filter=Q(jobs__status__in=AgentJob.OPEN)), job_count=Count("jobs"))

    @admin.display(description="jobs")
    def jobs(self, obj: Agent) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("tenant:agentspine_agentjob_changelist") + f"?agent__id__exact={obj.pk}"
        return format_html('<a href="{}">{} open, {} in all</a>', url, obj.open_job_count, obj.job_count)

    @admin.display(description="open jobs", ordering="open_job_count")
    def open_jobs(self, obj: Agent) -> int:
        return obj.open_job_count

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the audit trail keeps the agent

    def save_model(self, request, obj, form, change):
        with acting_as(admin_actor(request)):
            if change:
                enrollment.update_agent(Agent.objects.get(pk=obj.pk), name=obj.name)
                return
            agent, issued = enrollment.create_agent(tenant=request.tenant, name=obj.name, connector_ids=[],
                                                    created_by=request.user.email)
        obj.pk = agent.pk
        request.rv_enrollment = (agent, issued)

    def response_add(self, request, obj, post_url_continue=None):
        """The one-time code on its own page: never in a message (those may travel in a cookie)."""
        created = getattr(request, "rv_enrollment", None)
        if created is None:
            return super().response_add(request, obj, post_url_continue)
        agent, issued = created
        response = TemplateResponse(request, "admin/agentspine/enrollment_code.html", {
            **self.admin_site.each_context(request), "title": f"Enrollment code for {agent.name}", "agent": agent,
            "code": issued.code, "expires_at": issued.expires_at, "opts": self.opts,
            "change_url": reverse("tenant:agentspine_agent_change", args=[agent.pk])})
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected agents (their tokens stop working at once)",
                  permissions=["change"])
    def revoke(self, request, queryset):
        with acting_as(admin_actor(request)):
            for agent in queryset:
                enrollment.revoke_agent(agent)
        messages.success(request, f"Revoked {queryset.count()} agent(s).")


@admin.register(AgentJob, site=tenant_site)
class AgentJobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "agent", "connector", "kind", "status", "attempt", "chunk_count", "created_at",
                    "finished_at")
    list_filter = ("status", "kind", "agent")
    list_select_related = ("agent", "connector")
    exclude = ("request", "result")


def all_agents_view(request):
    """Every tenant's agents in one UNION ALL query (schemas are validated slugs, quoted anyway)."""
    tenants = list(Tenant.objects.exclude(schema_name="public").order_by("slug"))
    with connection.cursor() as cursor:
        # A schema not yet migrated (during a rolling upgrade) is listed as such rather than failing the page.
        cursor.execute("SELECT schemaname FROM pg_tables WHERE tablename = 'agentspine_agent' AND schemaname = ANY(%s)",
                       [[t.schema_name for t in tenants]])
        ready = {name for (name,) in cursor.fetchall()}
    lagging = [t.slug for t in tenants if t.schema_name not in ready]
    tenants = [t for t in tenants if t.schema_name in ready]
    rows: list[dict] = []
    if tenants:
        quote = connection.ops.quote_name
        # Identifiers are the quoted schema names of validated slugs; the tenant label is a bound value.
        select = ("SELECT %s AS tenant, a.name, a.online, a.enrolled_at, a.revoked_at, a.last_heartbeat_at, "
                  "a.version, a.hostname, (SELECT count(*) FROM {schema}.agentspine_agentjob j "
                  "WHERE j.agent_id = a.id AND j.status IN ('queued', 'leased')) AS open_jobs "
                  "FROM {schema}.agentspine_agent a")
        parts = [select.format(schema=quote(t.schema_name)) for t in tenants]
        with connection.cursor() as cursor:
            cursor.execute(" UNION ALL ".join(parts) + " ORDER BY 1, 2", [t.slug for t in tenants])
            columns = [c.name for c in cursor.description]
            for values in cursor.fetchall():
                row = dict(zip(columns, values, strict=True))
                row["state"] = ("revoked" if row["revoked_at"] else "pending_enrollment" if not row["enrolled_at"]
                                else "online" if row["online"] else "offline")
                rows.append(row)
    context = {**control_plane_site.each_context(request), "rows": rows, "title": "Agents of all tenants",
               "online": sum(r["state"] == "online" for r in rows), "lagging": lagging,
               "offline_after": settings.AGENT_OFFLINE_AFTER_SECONDS}
    return TemplateResponse(request, "admin/agentspine/all_agents.html", context)


control_plane_site.register_page("agents/", all_agents_view, "all_agents", "Agents of all tenants")
