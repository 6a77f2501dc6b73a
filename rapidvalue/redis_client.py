"""One Redis connection pool per process, shared by rate limits, login throttles and health."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def get_redis() -> redis.Redis:
    """Return the process-wide Redis client (connection pool) for ``settings.REDIS_URL``."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
    )


@functools.cache
def get_blocking_redis() -> redis.Redis:
    """A second pool for blocking commands (BLPOP of long polls), whose socket timeout outlasts the wait.

    The main pool's 2 s socket timeout protects request latency; a long poll must be allowed to
    sit in ``BLPOP`` for up to its whole wait.
    """
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=60,
                                health_check_interval=30)
