"""Sign-in sessions: logout must end the access tokens of a session, not only its refresh token.

Each login starts a session id (``sid`` claim) carried by its refresh token, by every rotated
refresh token and by every access token they mint. Logout blacklists the refresh token
(simplejwt) and puts the sid on a Redis deny-list for the access-token lifetime.
"""

from __future__ import annotations

from django.conf import settings

from rapidvalue.redis_client import get_redis


def _key(tenant_key: str, sid: str) -> str:
    return f"rv:sid-revoked:{tenant_key}:{sid}"


def revoke_session(tenant_key: str, sid: str) -> None:
    """Deny every access token of this session until they would have expired anyway."""
    ttl = int(settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds()) + 60
    get_redis().set(_key(tenant_key, sid), "1", ex=ttl)


def is_session_revoked(tenant_key: str, sid: str) -> bool:
    return bool(get_redis().exists(_key(tenant_key, sid)))
