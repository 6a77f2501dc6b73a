"""Celery wrappers: deliver one subscription's queue; sweep for due retries and lost leases."""

from __future__ import annotations

from celery import shared_task
from django_tenants.utils import get_tenant_model, tenant_context

from . import delivery


@shared_task(name="rapidvalue.webhooks.tasks.deliver_subscription", acks_late=True)
def deliver_subscription(subscription_id: str) -> int:
    """Deliver what is due for one subscription, in the schema the task was sent from."""
    if not delivery.subscription_exists(subscription_id):
        return 0
    return delivery.deliver_due(subscription_id)


@shared_task(name="rapidvalue.webhooks.tasks.sweep_webhooks")
def sweep_webhooks() -> int:
    """Enqueue a delivery task for each subscription with due retries or expired leases."""
    due = delivery.due_subscription_ids()
    for subscription_id in due:
        deliver_subscription.delay(str(subscription_id))
    return len(due)


@shared_task(name="rapidvalue.webhooks.tasks.sweep_webhooks_all_tenants")
def sweep_webhooks_all_tenants() -> int:
    """Beat entry point: one sweep per active tenant, each in its own schema."""
    count = 0
    for tenant in get_tenant_model().objects.exclude(schema_name="public").filter(status="active"):
        with tenant_context(tenant):
            sweep_webhooks.delay()
        count += 1
    return count
