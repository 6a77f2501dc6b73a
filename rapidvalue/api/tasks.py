"""Housekeeping tasks of the API conventions (thin wrappers over services)."""

from __future__ import annotations

from celery import shared_task
from django_tenants.utils import get_tenant_model, tenant_context

from . import idempotency


@shared_task(name="rapidvalue.api.tasks.purge_idempotency_records")
def purge_idempotency_records() -> int:
    """Delete expired idempotency records in the schema the task was sent from."""
    return idempotency.purge_expired()


@shared_task(name="rapidvalue.api.tasks.purge_idempotency_records_all_tenants")
def purge_idempotency_records_all_tenants() -> int:
    """Beat entry point: fan out one purge per active tenant, each running in its own schema."""
    count = 0
    for tenant in get_tenant_model().objects.exclude(schema_name="public").filter(status="active"):
        with tenant_context(tenant):
            purge_idempotency_records.delay()
        count += 1
    return count
