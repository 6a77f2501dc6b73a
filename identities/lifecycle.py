"""Joiner / mover / leaver: the stable internal interface other apps subscribe to.

The identity services call :func:`raise_event` inside their transaction. The event is recorded
(``LifecycleEvent``) and each subscriber runs in the same transaction, so that a change and its
consequences (a leaver's accounts disabled and grants ended, later: birthright grants, reviews,
webhooks) commit or roll back together. Subscribers register in their app's ``ready()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

from .models import Identity, LifecycleEvent

JOINER = LifecycleEvent.Kind.JOINER
MOVER = LifecycleEvent.Kind.MOVER
LEAVER = LifecycleEvent.Kind.LEAVER

# Changing any of these makes an identity a mover.
MOVER_FIELDS = ("department", "title", "manager_id", "location", "status")


@dataclass(frozen=True)
class Event:
    kind: str
    identity: Identity
    changes: dict[str, list[Any]] = field(default_factory=dict)
    source: str = "api"
    record: LifecycleEvent | None = None


Subscriber = Callable[[Event], None]
_subscribers: dict[str, list[Subscriber]] = {JOINER: [], MOVER: [], LEAVER: []}


def subscribe(kind: str, handler: Subscriber) -> None:
    """Run ``handler`` for every event of ``kind`` (idempotent per handler)."""
    if handler not in _subscribers[kind]:
        _subscribers[kind].append(handler)


def has_subscribers(kind: str) -> bool:
    """Whether anything runs for events of ``kind`` (else the event is only a row to record)."""
    return bool(_subscribers[kind])


def record_events(kind: str, identity_ids: list, source: str = "sync") -> int:
    """Events of a kind nobody subscribes to, by identity id: one INSERT, no identity loaded.

    A first sync makes 100k joiners at once; loading each identity only to write its id into an
    event row cost more than the rest of the merge. With a subscriber, use :func:`raise_events_bulk`.
    """
    if _subscribers[kind]:
        raise RuntimeError(f"{kind} has subscribers: they need the identities (raise_events_bulk)")
    if not identity_ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {LifecycleEvent._meta.db_table} (kind, identity_id, changes, source, occurred_at) "
                       "SELECT %s, unnest(%s::uuid[]), '{}'::jsonb, %s, now()", [kind, list(identity_ids), source])
        return cursor.rowcount


def raise_event(kind: str, identity: Identity, changes: dict[str, list[Any]] | None = None,
                source: str = "api") -> Event:
    """Record the event and run its subscribers in the caller's transaction."""
    changes = changes or {}
    record = LifecycleEvent.objects.create(kind=kind, identity=identity, changes=changes, source=source)
    event = Event(kind=kind, identity=identity, changes=changes, source=source, record=record)
    for handler in list(_subscribers[kind]):
        handler(event)
    return event


def raise_events_bulk(kind: str, identities: list[Identity], changes: list[dict] | None = None,
                      source: str = "sync") -> int:
    """Many events of one kind at once (a sync chunk): one INSERT, then the subscribers.

    Subscribers run per event, in the same transaction, exactly as for :func:`raise_event`.
    """
    if not identities:
        return 0
    changes = changes or [{} for _ in identities]
    records = LifecycleEvent.objects.bulk_create(
        LifecycleEvent(kind=kind, identity=identity, changes=change, source=source)
        for identity, change in zip(identities, changes, strict=True)
    )
    handlers = list(_subscribers[kind])
    if handlers:
        for identity, change, record in zip(identities, changes, records, strict=True):
            event = Event(kind=kind, identity=identity, changes=change, source=source, record=record)
            for handler in handlers:
                handler(event)
    return len(records)
