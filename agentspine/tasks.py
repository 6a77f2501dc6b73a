"""Celery wrappers: presence sweeps (beat)."""

from __future__ import annotations

from celery import shared_task
from django_tenants.utils import get_tenant_model, tenant_context

from .services import presence


@shared_task(name="agentspine.tasks.mark_silent_agents_offline")
def mark_silent_agents_offline() -> int:
    """Agents of this schema silent for longer than AGENT_OFFLINE_AFTER_SECONDS go offline."""
    return presence.mark_silent_agents_offline()


@shared_task(name="agentspine.tasks.mark_silent_agents_offline_all_tenants")
def mark_silent_agents_offline_all_tenants() -> int:
    """Beat entry point: one sweep per active tenant, each in its own schema."""
    count = 0
    for tenant in get_tenant_model().objects.exclude(schema_name="public").filter(status="active"):
        with tenant_context(tenant):
            mark_silent_agents_offline.delay()
        count += 1
    return count
