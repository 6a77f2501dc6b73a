"""Heartbeats and presence: online while heartbeats arrive, offline after a configured silence.

Both transitions are audited and raise the ``agent.online`` / ``agent.offline`` webhook events, in
the same transaction as the state change, so a subscriber never sees one without the other.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rapidvalue.audit import services as audit
from rapidvalue.webhooks.events import emit

from ..models import Agent, AgentJob


def event_payload(agent: Agent) -> dict[str, Any]:
    return {"agent": {"id": str(agent.pk), "name": agent.name, "version": agent.version, "hostname": agent.hostname,
                      "last_heartbeat_at": agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None}}


@transaction.atomic
def heartbeat(agent_id, *, version: str = "", hostname: str = "", capabilities: dict | None = None,
              running_jobs: list[str] | None = None) -> Agent:
    """Record a sign of life; leases of the jobs the agent says it is running are extended."""
    agent = Agent.objects.select_for_update().get(pk=agent_id)
    if agent.revoked_at is not None:  # revoked while this request was on its way: no sign of life
        return agent
    now = timezone.now()
    agent.last_heartbeat_at = now
    agent.version, agent.hostname = version[:50], hostname[:255]
    agent.capabilities = capabilities or {}
    agent.running_jobs = [str(j) for j in running_jobs or []][:100]
    fields = ["last_heartbeat_at", "version", "hostname", "capabilities", "running_jobs"]
    if not agent.online:
        agent.online, agent.online_since, agent.offline_since = True, now, None
        fields += ["online", "online_since", "offline_since"]
        emit("agent.online", event_payload(agent))
        audit.record("agent.online", "agent", agent.pk, after={"version": agent.version, "hostname": agent.hostname})
    agent.save(update_fields=fields)
    if agent.running_jobs:
        AgentJob.objects.filter(agent=agent, status=AgentJob.Status.LEASED, pk__in=agent.running_jobs).update(
            leased_until=now + timedelta(seconds=settings.AGENT_LEASE_SECONDS))
    return agent


def jobs_no_longer_held(agent: Agent, running_jobs: list[str]) -> list[str]:
    """Of the jobs the agent says it is running, those it no longer holds (cancelled, timed out, failed).

    The heartbeat's answer names them, so an agent stuck in a job the server gave up on stops
    waiting for it and takes new work, instead of renewing a dead lease forever.
    """
    if not running_jobs:
        return []
    held = {str(pk) for pk in AgentJob.objects.filter(agent=agent, status=AgentJob.Status.LEASED,
                                                      pk__in=running_jobs).values_list("pk", flat=True)}
    return [job for job in running_jobs if job not in held]


def mark_silent_agents_offline() -> int:
    """Beat: agents silent for longer than AGENT_OFFLINE_AFTER_SECONDS go offline (one event each)."""
    cutoff = timezone.now() - timedelta(seconds=settings.AGENT_OFFLINE_AFTER_SECONDS)
    count = 0
    for pk in Agent.objects.filter(online=True, last_heartbeat_at__lt=cutoff).values_list("pk", flat=True):
        with transaction.atomic():
            agent = Agent.objects.select_for_update(skip_locked=True).filter(
                pk=pk, online=True, last_heartbeat_at__lt=cutoff).first()
            if agent is None:
                continue  # a heartbeat just arrived, or another beat holds it
            agent.online, agent.offline_since = False, timezone.now()
            agent.save(update_fields=["online", "offline_since"])
            emit("agent.offline", event_payload(agent))
            audit.record("agent.offline", "agent", agent.pk,
                         after={"last_heartbeat_at": agent.last_heartbeat_at.isoformat()})
            count += 1
    return count
