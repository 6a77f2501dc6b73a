"""The event catalogue and :func:`emit`, the one way to raise a webhook event."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from .models import WebhookDelivery, WebhookEvent, WebhookSubscription

logger = logging.getLogger("rapidvalue.webhooks")

EVENT_TYPES: dict[str, str] = {
    "identity.created": "A joiner: an identity was created.",
    "identity.updated": "An identity's attributes changed (includes movers).",
    "identity.deactivated": "A leaver: an identity was deactivated.",
    "request.submitted": "An access request was submitted.",
    "request.approved": "An access request was approved.",
    "request.rejected": "An access request was rejected.",
    "certification.completed": "A certification campaign or review completed.",
    "agent.online": "An on-premises agent came online.",
    "agent.offline": "An on-premises agent went silent.",
}
PING = "webhook.ping"
PAYLOAD_VERSION = 1


def emit(event_type: str, payload: dict[str, Any], *, only_subscription: WebhookSubscription | None = None
         ) -> WebhookEvent:
    """Write an event to the outbox, with its deliveries, in the caller's transaction.

    Delivery starts once the transaction commits; if it rolls back, nothing is sent.
    """
    if event_type not in EVENT_TYPES and event_type != PING:
        raise ValueError(f"unknown webhook event type: {event_type}")
    event = WebhookEvent.objects.create(type=event_type, version=PAYLOAD_VERSION, payload=payload,
                                        occurred_at=timezone.now())
    if only_subscription is not None:
        subscriptions = [only_subscription]
    else:
        subscriptions = list(WebhookSubscription.objects.filter(enabled=True, event_types__contains=[event_type]))
    if not subscriptions:
        return event
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(subscription=s, event=event, event_time=event.occurred_at) for s in subscriptions
    )
    schema = connection.schema_name
    ids = [str(s.pk) for s in subscriptions]
    transaction.on_commit(lambda: _kick(schema, ids))
    return event


def _kick(schema: str, subscription_ids: list[str]) -> None:
    """Ask a worker to deliver now; if the broker is down the sweeper delivers later."""
    from django_tenants.utils import schema_context

    from .tasks import deliver_subscription

    try:
        with schema_context(schema):
            for subscription_id in subscription_ids:
                deliver_subscription.delay(subscription_id)
    except Exception:  # the outbox row is the guarantee; the kick is an optimisation
        logger.warning("could not enqueue webhook delivery; the sweeper will pick it up", exc_info=True)


def has_subscriptions(event_type: str) -> bool:
    """Whether an enabled subscription wants ``event_type``: callers skip building payloads otherwise."""
    return WebhookSubscription.objects.filter(enabled=True, event_types__contains=[event_type]).exists()


def emit_many(event_type: str, payloads: list[dict[str, Any]]) -> int:
    """:func:`emit` for a batch (a sync chunk): one subscription query, bulk inserts, one kick."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type: {event_type}")
    if not payloads:
        return 0
    now = timezone.now()
    events = WebhookEvent.objects.bulk_create(
        WebhookEvent(type=event_type, version=PAYLOAD_VERSION, payload=p, occurred_at=now) for p in payloads
    )
    subscriptions = list(WebhookSubscription.objects.filter(enabled=True, event_types__contains=[event_type]))
    if subscriptions:
        WebhookDelivery.objects.bulk_create(
            (WebhookDelivery(subscription=s, event=e, event_time=e.occurred_at) for s in subscriptions for e in events),
            batch_size=5000,
        )
        schema = connection.schema_name
        ids = [str(s.pk) for s in subscriptions]
        transaction.on_commit(lambda: _kick(schema, ids))
    return len(events)
