"""Per-request context (request id, client address, acting principal) for audit and logs.

Context variables rather than thread locals so that the same code is correct under a
threaded dev server, gunicorn workers and Celery tasks (which set an actor of their own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """Who performed a change, as written into audit events."""

    type: str  # user, control, service, agent, system
    id: str
    label: str
    token_kind: str = ""


SYSTEM_ACTOR = Actor(type="system", id="", label="system")

request_id_var: ContextVar[str] = ContextVar("rv_request_id", default="")
client_ip_var: ContextVar[str | None] = ContextVar("rv_client_ip", default=None)
actor_var: ContextVar[Actor | None] = ContextVar("rv_actor", default=None)


def current_actor() -> Actor:
    """The actor of the running request or task; ``system`` when nothing set one."""
    return actor_var.get() or SYSTEM_ACTOR


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    """Run a block (a management command, a task) on behalf of ``actor`` for audit purposes."""
    token = actor_var.set(actor)
    try:
        yield
    finally:
        actor_var.reset(token)
