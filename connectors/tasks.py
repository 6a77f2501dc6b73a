"""Celery wrappers for syncs and their progress callbacks."""

from __future__ import annotations

import time

import httpx
from celery import shared_task

from rapidvalue import crypto, outbound


@shared_task(name="connectors.tasks.run_sync", acks_late=True)
def run_sync(run_id: str) -> str:
    """Run a sync; one whose agent is offline is looked at again later instead of holding this worker."""
    from django.conf import settings

    from .sync import runner

    outcome = runner.execute(run_id)
    if outcome == runner.DEFERRED:
        schedule_run(run_id, agent_mode=True, countdown=settings.SYNC_AGENT_RECHECK_SECONDS)
    return outcome


def schedule_run(run_id: str, *, agent_mode: bool, countdown: int = 0) -> None:
    """Send a run to its queue: agent-mode runs have their own, since their pages wait for an agent."""
    from django.conf import settings

    queue = settings.SYNC_AGENT_QUEUE if agent_mode else None
    run_sync.apply_async((run_id,), countdown=countdown or None, queue=queue)


@shared_task(name="connectors.tasks.post_callback", bind=True, max_retries=5, acks_late=True)
def post_callback(self, run_id: str, body: str) -> int:
    """POST one signed progress report; retried with exponential backoff on failure."""
    from rapidvalue.webhooks.delivery import sign

    from .models import SyncRun

    run = SyncRun.objects.filter(pk=run_id).first()
    if run is None or not run.callback_url:
        return 0
    secret = crypto.decrypt(run.callback_secret_encrypted)
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "RapidValue-Sync/1",
               "X-RapidValue-Timestamp": str(timestamp),
               "X-RapidValue-Signature": sign(secret, timestamp, body.encode())}
    try:
        response = outbound.post(run.callback_url, body.encode(), headers)
        if response.status_code >= 500 or response.status_code == 429:
            raise httpx.HTTPStatusError("retryable status", request=response.request, response=response)
        return response.status_code
    except outbound.UnsafeTarget:
        return 0
    except httpx.HTTPError as exc:
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60)) from exc


@shared_task(name="connectors.tasks.start_scheduled_syncs")
def start_scheduled_syncs() -> int:
    """Start the syncs whose schedule is due, in the schema the task was sent from."""
    from datetime import timedelta

    from django.utils import timezone

    from rapidvalue.api.errors import Conflict

    from . import services
    from .models import ConnectorInstance, SyncRun

    started = 0
    now = timezone.now()
    for connector in ConnectorInstance.objects.filter(enabled=True, schedule_minutes__isnull=False):
        last = SyncRun.objects.filter(connector=connector).order_by("-created_at").first()
        if last is not None and last.created_at > now - timedelta(minutes=connector.schedule_minutes):
            continue
        try:
            services.start_sync(connector, incremental=connector.last_success_at is not None,
                                requested_by="schedule")
            started += 1
        except Conflict:
            continue
    return started


@shared_task(name="connectors.tasks.start_scheduled_syncs_all_tenants")
def start_scheduled_syncs_all_tenants() -> int:
    """Beat entry point: check every active tenant's connector schedules."""
    from django_tenants.utils import get_tenant_model, tenant_context

    count = 0
    for tenant in get_tenant_model().objects.exclude(schema_name="public").filter(status="active"):
        with tenant_context(tenant):
            start_scheduled_syncs.delay()
        count += 1
    return count
