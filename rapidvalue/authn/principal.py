"""The authenticated caller of an API request, whatever kind of token it used."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rapidvalue.context import Actor

if TYPE_CHECKING:
    from rapidvalue.tenancy.models import Tenant
    from rapidvalue.users.models import User


@dataclass
class Principal:
    """What the API knows about its caller: token kind, tenant, roles and the linked user.

    DRF's ``request.user`` and ``request.auth`` are both set to the principal, so permission,
    scoping, rate-limit and idempotency code read one object for every token kind.
    """

    kind: str  # user, control, service, agent
    tenant: Tenant | None
    subject_id: str
    label: str
    is_admin: bool = False
    is_auditor: bool = False
    user: User | None = None
    token_id: uuid.UUID | None = None
    identity_id: uuid.UUID | None = None
    rate_limit_per_second: int | None = None
    rate_limit_burst: int | None = None
    extra: dict = field(default_factory=dict)

    is_authenticated = True
    is_anonymous = False

    @property
    def scope_key(self) -> str:
        """Stable key for per-token state (rate-limit bucket, idempotency keys).

        User tokens are keyed by user, so that refreshing an access token neither resets the
        rate limit nor forgets idempotency keys.
        """
        return f"{self.kind}:{self.subject_id}"

    @property
    def sees_everything(self) -> bool:
        return self.is_admin or self.is_auditor

    @property
    def can_write(self) -> bool:
        return self.is_admin and not self.is_auditor

    def as_actor(self) -> Actor:
        return Actor(type=self.kind, id=self.subject_id, label=self.label, token_kind=self.kind)

    def __str__(self) -> str:
        return f"{self.kind}:{self.label}"
