"""Subscription management: secrets shown once, encrypted at rest, never audited in clear."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from rapidvalue import crypto, outbound
from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit

from . import events
from .models import WebhookDelivery, WebhookSubscription


@dataclass
class WithSecret:
    subscription: WebhookSubscription
    secret: str


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _snapshot(subscription: WebhookSubscription) -> dict:
    return audit.snapshot(subscription)  # secret_encrypted is redacted by name


@transaction.atomic
def create_subscription(*, url: str, event_types: list[str], description: str = "", enabled: bool = True,
                        created_by: str = "") -> WithSecret:
    outbound.check_target(url)
    secret = new_secret()
    subscription = WebhookSubscription.objects.create(
        url=url, event_types=sorted(set(event_types)), description=description, enabled=enabled,
        secret_encrypted=crypto.encrypt(secret), created_by=created_by,
    )
    audit.record("webhook.create", "webhook", subscription.pk, after=_snapshot(subscription))
    return WithSecret(subscription, secret)


@transaction.atomic
def update_subscription(subscription: WebhookSubscription, **changes) -> WebhookSubscription:
    before = _snapshot(subscription)
    if "url" in changes:
        outbound.check_target(changes["url"])
    if "event_types" in changes:
        changes["event_types"] = sorted(set(changes["event_types"]))
    for name in ("url", "event_types", "description", "enabled"):
        if name in changes:
            setattr(subscription, name, changes[name])
    subscription.save()
    audit.record("webhook.update", "webhook", subscription.pk, before=before, after=_snapshot(subscription))
    return subscription


@transaction.atomic
def rotate_secret(subscription: WebhookSubscription) -> WithSecret:
    secret = new_secret()
    subscription.secret_encrypted = crypto.encrypt(secret)
    subscription.save(update_fields=["secret_encrypted", "updated_at"])
    audit.record("webhook.rotate_secret", "webhook", subscription.pk)
    return WithSecret(subscription, secret)


@transaction.atomic
def delete_subscription(subscription: WebhookSubscription) -> None:
    before = _snapshot(subscription)
    pk = subscription.pk
    subscription.delete()
    audit.record("webhook.delete", "webhook", pk, before=before)


@transaction.atomic
def ping(subscription: WebhookSubscription):
    """Send a ``webhook.ping`` event to this subscription only."""
    event = events.emit(events.PING, {"subscription_id": str(subscription.pk)}, only_subscription=subscription)
    audit.record("webhook.ping", "webhook", subscription.pk, after={"event_id": str(event.id)})
    return event


@transaction.atomic
def redeliver(delivery: WebhookDelivery) -> WebhookDelivery:
    """Start a finished delivery over: five fresh attempts, from now."""
    if delivery.status in (WebhookDelivery.Status.PENDING, WebhookDelivery.Status.IN_PROGRESS):
        raise Conflict("This delivery is still being attempted.", code="delivery_in_progress")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), claimed_until=None,
    )
    delivery.refresh_from_db()
    audit.record("webhook.redeliver", "webhook_delivery", delivery.pk, after={"event_id": str(delivery.event_id)})
    from django.db import connection

    schema = connection.schema_name
    subscription_id = str(delivery.subscription_id)
    transaction.on_commit(lambda: events._kick(schema, [subscription_id]))
    return delivery
