"""Per-token rate limiting: a token bucket in Redis, shared by every web process.

The bucket holds up to ``burst`` requests and refills at ``rate`` per second (100 and 200 by
default; overridden per token or per tenant). One Lua script call per request keeps the check
atomic across processes and machines; Redis' own clock is used so web nodes need no clock sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from rapidvalue.redis_client import get_redis

# KEYS[1] bucket key; ARGV: rate, burst, now (seconds, float; "" = use Redis TIME)
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if not tokens then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed > 0 then
  tokens = math.min(burst, tokens + elapsed * rate)
  ts = now
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', ts)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(tokens)}
"""


@dataclass(frozen=True)
class BucketResult:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until one request is allowed again (0 when allowed)
    reset: float  # seconds until the bucket is full again


def take(key: str, rate: int, burst: int, now: float | None = None) -> BucketResult:
    """Take one request from ``key``'s bucket; ``now`` is for tests that control time."""
    script = get_redis().register_script(_TOKEN_BUCKET_LUA)
    allowed, tokens = script(keys=[f"rv:rl:{key}"], args=[rate, burst, "" if now is None else now])
    tokens = float(tokens)
    retry_after = 0.0 if allowed else (1 - tokens) / rate
    return BucketResult(
        allowed=bool(allowed),
        limit=burst,
        remaining=max(0, math.floor(tokens)),
        retry_after=retry_after,
        reset=(burst - tokens) / rate,
    )


def limits_for(principal) -> tuple[int, int]:
    """(rate per second, burst) for a principal: token override, else tenant override, else default."""
    rate = settings.RATE_LIMIT_PER_SECOND
    burst = settings.RATE_LIMIT_BURST
    tenant = getattr(principal, "tenant", None)
    if tenant is not None:
        rate = tenant.rate_limit_per_second or rate
        burst = tenant.rate_limit_burst or burst
    if principal is not None:
        rate = principal.rate_limit_per_second or rate
        burst = principal.rate_limit_burst or burst
    return rate, max(burst, 1)


class TokenBucketThrottle(BaseThrottle):
    """DRF throttle over :func:`take`; unauthenticated calls are bucketed by client address."""

    def allow_request(self, request, view) -> bool:
        principal = request.user if getattr(request.user, "is_authenticated", False) else None
        tenant = getattr(request._request, "tenant", None)
        if principal is not None:
            key = f"{getattr(principal.tenant, 'pk', 'cp')}:{principal.scope_key}"
        else:
            key = f"ip:{self.get_ident(request)}"
        rate, burst = limits_for(principal) if principal is not None else limits_for(None)
        if principal is None and tenant is not None and getattr(tenant, "pk", None):
            rate = tenant.rate_limit_per_second or rate
            burst = tenant.rate_limit_burst or burst
        self.result = take(key, rate, burst)
        request._request.rate_limit = self.result
        return self.result.allowed

    def get_ident(self, request) -> str:
        return request._request.META.get("REMOTE_ADDR") or "unknown"

    def wait(self) -> float:
        return max(self.result.retry_after, 0.001)
