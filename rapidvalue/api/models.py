"""Idempotency records: the first response to a write, kept 24 hours per tenant, token and key."""

from __future__ import annotations

from django.db import models


class IdempotencyRecord(models.Model):
    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=100, help_text="The token the key belongs to (principal scope key).")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    status_code = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_uniq")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
