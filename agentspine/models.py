"""Agents of a tenant, their one-time enrollment codes, and the jobs they run.

An agent runs on the customer's premises and only ever calls out; everything the server wants
from it is a job in this table, leased to the agent when it asks for work.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from connectors.models import ConnectorInstance, SyncRun


class Agent(models.Model):
    """An enrolled (or to-be-enrolled) on-premises agent."""

    class State(models.TextChoices):
        PENDING_ENROLLMENT = "pending_enrollment", "Waiting for enrollment"
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        REVOKED = "revoked", "Revoked"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    online = models.BooleanField(default=False, help_text="Heartbeats are arriving (flipped by heartbeat and beat).")
    enrolled_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    online_since = models.DateTimeField(null=True, blank=True)
    offline_since = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=50, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    running_jobs = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=254, blank=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return self.State.REVOKED
        if self.enrolled_at is None:
            return self.State.PENDING_ENROLLMENT
        return self.State.ONLINE if self.online else self.State.OFFLINE


class EnrollmentCode(models.Model):
    """A one-time code: shown once, stored as a SHA-256, refused once used or expired."""

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="enrollment_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "id"]

    def __str__(self) -> str:
        return f"{self.agent_id} code (expires {self.expires_at:%Y-%m-%d %H:%M})"


class AgentJob(models.Model):
    """One dispatcher call (a sync page, a connection test, a provisioning batch) for one agent."""

    class Kind(models.TextChoices):
        SYNC = "sync", "Sync"
        TEST_CONNECTION = "test_connection", "Test connection"
        PROVISION = "provision", "Provision"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LEASED = "leased", "Leased"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN = (Status.QUEUED, Status.LEASED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="jobs")
    connector = models.ForeignKey(ConnectorInstance, on_delete=models.CASCADE, related_name="agent_jobs")
    sync_run = models.ForeignKey(SyncRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="agent_jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    request = models.JSONField(help_text="The protocol request, without credentials (the agent holds those).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveIntegerField(default=0, help_text="Leases handed out so far.")
    expired_leases = models.PositiveIntegerField(
        default=0, help_text="Leases that ran out (the agent died or hung); hand-backs do not count.")
    lease_id = models.UUIDField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True, help_text="The response, without the chunked record lists.")
    chunk_count = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    leased_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The claim query: an agent's open jobs, oldest first.
            models.Index(fields=["agent", "created_at"], condition=Q(status__in=["queued", "leased"]),
                         name="agent_job_open"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.id} ({self.status})"


class AgentJobChunk(models.Model):
    """Part of a job's result; (job, attempt, sequence) is unique, so a re-sent chunk is a no-op."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(AgentJob, on_delete=models.CASCADE, related_name="chunks")
    attempt = models.PositiveIntegerField()
    sequence = models.PositiveIntegerField()
    records = models.PositiveIntegerField(default=0)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "attempt", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "sequence"], name="agent_job_chunk_once"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.sequence}"
