"""Machine tokens of a tenant: service tokens for integrations, agent tokens for agents.

Only a SHA-256 of the token is stored; the token itself is shown once, at creation.
"""

from __future__ import annotations

import uuid

from django.db import models


class ApiToken(models.Model):
    class Kind(models.TextChoices):
        SERVICE = "service", "Service"
        AGENT = "agent", "Agent"

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        AUDITOR = "auditor", "Auditor"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SERVICE)
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.AUDITOR)
    token_hash = models.CharField(max_length=64, unique=True)
    # The agent a token belongs to (agent tokens only); a plain id until the agentspine app exists.
    agent_id = models.UUIDField(null=True, blank=True, db_index=True)
    rate_limit_per_second = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_burst = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=254, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
