"""Encoding and decoding of every bearer token kind.

All tokens are HS256 JWTs signed with ``settings.JWT_SIGNING_KEY`` and carry ``iss``,
``kind`` (user, control, service, agent) and ``tid`` (tenant id; absent for control-plane
tokens). User and control tokens are simplejwt access/refresh tokens with those extra claims;
service and agent tokens are ours: their ``jti`` is the ApiToken row id and their SHA-256 is
what the row stores, so revocation is a row update and takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jwt
from django.conf import settings
from django.utils import timezone

ISSUER = "rapidvalue"
ALGORITHM = "HS256"
KINDS = frozenset({"user", "control", "service", "agent"})


class InvalidToken(Exception):
    """The bearer token cannot be trusted; the message is safe to show to the caller."""


def hash_token(raw: str) -> str:
    """The stored form of a machine token."""
    return hashlib.sha256(raw.encode()).hexdigest()


def encode_machine_token(kind: str, tenant_id: int, token_id: uuid.UUID) -> str:
    """Mint a service or agent token for an ApiToken row (the caller stores its hash)."""
    if kind not in {"service", "agent"}:
        raise ValueError(f"not a machine token kind: {kind}")
    claims = {
        "iss": ISSUER,
        "kind": kind,
        "tid": tenant_id,
        "jti": str(token_id),
        "iat": int(timezone.now().timestamp()),
    }
    return jwt.encode(claims, settings.JWT_SIGNING_KEY, algorithm=ALGORITHM)


def decode(raw: str) -> dict[str, Any]:
    """Verify signature, issuer, expiry and shape; return the claims or raise InvalidToken.

    Only HS256 is accepted, which rules out ``alg: none`` and algorithm confusion.
    """
    try:
        claims = jwt.decode(
            raw,
            settings.JWT_SIGNING_KEY,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["iss", "kind", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("Token has expired") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("Token is invalid") from exc
    kind = claims.get("kind")
    if kind not in KINDS:
        raise InvalidToken("Token kind is unknown")
    if kind != "control" and not isinstance(claims.get("tid"), int):
        raise InvalidToken("Token has no tenant")
    if kind in {"user", "control"} and claims.get("token_type") != "access":
        raise InvalidToken("Only access tokens are accepted as bearer tokens")
    return claims
