"""Failed-login throttling per account and per client address (Redis counters with a window).

Counting failures rather than attempts means a legitimate user is never locked out by their own
successful logins, while password guessing against one account, or spraying from one address,
is stopped after a handful of tries for the window.
"""

from __future__ import annotations

from django.conf import settings

from rapidvalue.redis_client import get_redis


def _keys(tenant_key: str, email: str, ip: str | None) -> tuple[str, str]:
    return f"rv:lf:acct:{tenant_key}:{email.lower()}", f"rv:lf:ip:{ip or 'unknown'}"


def retry_after(tenant_key: str, email: str, ip: str | None) -> int:
    """Seconds to wait before another attempt is allowed; 0 when attempts are allowed now."""
    account_key, ip_key = _keys(tenant_key, email, ip)
    redis = get_redis()
    pipe = redis.pipeline()
    pipe.get(account_key)
    pipe.ttl(account_key)
    pipe.get(ip_key)
    pipe.ttl(ip_key)
    account_fails, account_ttl, ip_fails, ip_ttl = pipe.execute()
    wait = 0
    if account_fails and int(account_fails) >= settings.LOGIN_FAILURES_PER_ACCOUNT:
        wait = max(wait, account_ttl)
    if ip_fails and int(ip_fails) >= settings.LOGIN_FAILURES_PER_IP:
        wait = max(wait, ip_ttl)
    return max(wait, 0) if wait else 0


def record_failure(tenant_key: str, email: str, ip: str | None) -> None:
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    pipe = get_redis().pipeline()
    for key in _keys(tenant_key, email, ip):
        pipe.incr(key)
        pipe.expire(key, window, nx=True)
    pipe.execute()


def record_success(tenant_key: str, email: str, ip: str | None) -> None:
    account_key, _ = _keys(tenant_key, email, ip)
    get_redis().delete(account_key)
