"""Delivering outbox rows: claim, sign, send, record, retry.

* Per subscription, deliveries go out in event-time order, one at a time: the head of the
  queue is claimed with a row lock and a lease (``claimed_until``); while it waits for a retry,
  later events of that subscription wait too. Other subscriptions are independent, so a slow
  or dead receiver never delays anyone else.
* A worker killed after its claim leaves a lease that expires; the sweeper (or any worker)
  then claims the delivery again. Receivers may so see an event twice: it carries the same
  ``X-RapidValue-Event-Id`` both times, which is what they de-duplicate on.
* Retry schedule: 5 attempts at most, at 0, +1 min, +10 min, +1 h and +6 h after the first
  (``BACKOFF_SECONDS``); after the fifth failure the delivery is ``failed`` and an admin can
  redeliver it.

Signature: ``X-RapidValue-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` with
``X-RapidValue-Timestamp`` (Unix seconds). Receivers recompute it with their secret, compare in
constant time, refuse timestamps more than 5 minutes old (replay), and de-duplicate on the event id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from rapidvalue import crypto, outbound

from .models import WebhookDelivery, WebhookEvent, WebhookSubscription

logger = logging.getLogger("rapidvalue.webhooks")

MAX_ATTEMPTS = 5
# Wait after failed attempt 1..4: attempts then fall at +1 min, +10 min, +1 h and +6 h from the first.
BACKOFF_SECONDS = (60, 540, 3000, 18000)
LEASE_SECONDS = 60
RESPONSE_EXCERPT = 200


def lease_seconds() -> int:
    return int(getattr(settings, "WEBHOOK_LEASE_SECONDS", LEASE_SECONDS))


@dataclass
class Claimed:
    delivery: WebhookDelivery
    lease_until: datetime


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def envelope(event: WebhookEvent) -> dict:
    tenant = getattr(connection, "tenant", None)
    return {
        "id": str(event.id),
        "type": event.type,
        "version": event.version,
        "tenant": getattr(tenant, "slug", "") or connection.schema_name,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "data": event.payload,
    }


_CLAIM_SQL = """
WITH head AS (
    SELECT id, status, next_attempt_at, claimed_until
    FROM webhooks_webhookdelivery
    WHERE subscription_id = %(subscription)s AND status IN ('pending', 'in_progress')
    ORDER BY event_time, event_id
    LIMIT 1
    FOR UPDATE
)
UPDATE webhooks_webhookdelivery d
SET status = 'in_progress', claimed_until = %(lease)s, attempts = d.attempts + 1
FROM head
WHERE d.id = head.id
  AND ((head.status = 'pending' AND head.next_attempt_at <= %(now)s)
       OR (head.status = 'in_progress' AND head.claimed_until < %(now)s))
RETURNING d.id
"""


def claim_next(subscription_id, now: datetime | None = None) -> Claimed | None:
    """Claim the head of a subscription's queue if it is due (or its lease expired)."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=lease_seconds())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"subscription": subscription_id, "lease": lease, "now": now})
        row = cursor.fetchone()
    if row is None:
        return None
    delivery = WebhookDelivery.objects.select_related("event", "subscription").get(pk=row[0])
    return Claimed(delivery=delivery, lease_until=lease)


def send(claimed: Claimed, now: datetime | None = None) -> WebhookDelivery:
    """Sign and POST the event, then record the outcome (success, retry or failed)."""
    delivery = claimed.delivery
    body = json.dumps(envelope(delivery.event), separators=(",", ":")).encode()
    timestamp = int(time.time())
    secret = crypto.decrypt(delivery.subscription.secret_encrypted)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "RapidValue-Webhooks/1",
        "X-RapidValue-Event-Id": str(delivery.event_id),
        "X-RapidValue-Event-Type": delivery.event.type,
        "X-RapidValue-Delivery-Attempt": str(delivery.attempts),
        "X-RapidValue-Timestamp": str(timestamp),
        "X-RapidValue-Signature": sign(secret, timestamp, body),
    }
    started = time.monotonic()
    status_code, error, excerpt = None, "", ""
    try:
        response = outbound.post(delivery.subscription.url, body, headers)
        status_code = response.status_code
        excerpt = response.text[:RESPONSE_EXCERPT]
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except outbound.UnsafeTarget as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{exc.__class__.__name__}: {exc}"[:500]
    latency = int((time.monotonic() - started) * 1000)
    return record(claimed, status_code=status_code, error=error, excerpt=excerpt, latency_ms=latency, now=now)


def record(claimed: Claimed, *, status_code: int | None, error: str, excerpt: str, latency_ms: int,
           now: datetime | None = None) -> WebhookDelivery:
    """Write one attempt's outcome; only the holder of the current lease may write it."""
    now = now or timezone.now()
    delivery = claimed.delivery
    update = {"last_status_code": status_code, "last_error": error[:500], "response_excerpt": excerpt,
              "last_latency_ms": latency_ms, "claimed_until": None}
    if not error:
        update.update(status=WebhookDelivery.Status.SUCCEEDED, delivered_at=now)
    elif delivery.attempts >= MAX_ATTEMPTS:
        update.update(status=WebhookDelivery.Status.FAILED)
    else:
        update.update(status=WebhookDelivery.Status.PENDING,
                      next_attempt_at=now + timedelta(seconds=BACKOFF_SECONDS[delivery.attempts - 1]))
    WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.IN_PROGRESS,
                                   claimed_until=claimed.lease_until).update(**update)
    delivery.refresh_from_db()
    if error:
        logger.info("webhook delivery %s attempt %s failed: %s", delivery.pk, delivery.attempts, error)
    return delivery


def deliver_due(subscription_id, limit: int = 100, now: datetime | None = None) -> int:
    """Deliver what is due for one subscription, in order; returns how many attempts were made."""
    made = 0
    while made < limit:
        claimed = claim_next(subscription_id, now=now)
        if claimed is None:
            break
        made += 1
        outcome = send(claimed, now=now)
        if outcome.status != WebhookDelivery.Status.SUCCEEDED:
            break  # keep the order: later events wait for this one's retry
    return made


def due_subscription_ids(now: datetime | None = None) -> list:
    """Subscriptions whose queue head can be worked on now (due retries, expired leases)."""
    now = now or timezone.now()
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
    stuck = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.IN_PROGRESS, claimed_until__lt=now)
    ids = set(pending.values_list("subscription_id", flat=True).distinct())
    ids |= set(stuck.values_list("subscription_id", flat=True).distinct())
    return sorted(ids, key=str)


def subscription_exists(subscription_id) -> bool:
    return WebhookSubscription.objects.filter(pk=subscription_id).exists()
