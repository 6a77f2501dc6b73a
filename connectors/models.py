"""Connector instances and their sync runs."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from access.models import Application


class ConnectorInstance(models.Model):
    """A configured connection to one system; credentials are encrypted and never shown again."""

    class Mode(models.TextChoices):
        HOSTED = "hosted", "Hosted (runs in RapidValue's workers)"
        AGENT = "agent", "Agent (runs on premises)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    type = models.CharField(max_length=50)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.HOSTED)
    agent_id = models.UUIDField(null=True, blank=True, help_text="The agent that runs it (agent mode).")
    application = models.ForeignKey(Application, on_delete=models.PROTECT, related_name="connectors",
                                    help_text="Where this connector's accounts and entitlements belong.")
    config = models.JSONField(default=dict, blank=True)
    auth_config_encrypted = models.TextField(blank=True, default="")
    correlation_rules = models.JSONField(
        default=list, blank=True,
        help_text='Account-to-identity matching, tried in order: [{"account": "username", "identity": "email"}].',
    )
    authoritative = models.BooleanField(default=False, help_text="An HR source: its identities drive lifecycle events.")
    schedule_minutes = models.PositiveIntegerField(null=True, blank=True, help_text="Sync every N minutes (beat).")
    enabled = models.BooleanField(default=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class SyncRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    connector = models.ForeignKey(ConnectorInstance, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    incremental = models.BooleanField(default=False)
    max_records = models.PositiveIntegerField(null=True, blank=True)
    chunk_size = models.PositiveIntegerField(default=1000)
    callback_url = models.URLField(max_length=2000, blank=True)
    callback_secret_encrypted = models.TextField(blank=True, default="")
    callback_sequence = models.PositiveIntegerField(default=0)
    requested_by = models.CharField(max_length=254, blank=True)
    counts = models.JSONField(default=dict, blank=True,
                              help_text="created, updated, unchanged, deleted, errors (per kind and total).")
    processed = models.PositiveIntegerField(default=0)
    total_estimate = models.PositiveIntegerField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    status_detail = models.CharField(max_length=500, blank=True,
                                     help_text="What the run is doing or waiting for (e.g. an offline agent).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of the worker running it.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [
            # Two runs of one connector never overlap: at most one queued or running run.
            models.UniqueConstraint(fields=["connector"], condition=Q(status__in=["queued", "running"]),
                                    name="sync_run_one_active_per_connector"),
        ]

    def __str__(self) -> str:
        return f"{self.connector_id} {self.status}"


class SyncRecordError(models.Model):
    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="record_errors")
    kind = models.CharField(max_length=20)
    key = models.CharField(max_length=500, blank=True)
    location = models.CharField(max_length=500, blank=True)
    error = models.TextField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.error[:50]}"


class SyncSeen(models.Model):
    """Keys a full sync has seen, so that what disappeared is found (and only after success).

    Written in bulk by the engine and emptied when the run ends; the table is UNLOGGED
    (migration) because it is scratch data that a crash may lose without harm: the run fails
    and deletes nothing.
    """

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="+", db_index=False)
    kind = models.CharField(max_length=1)  # i(dentity), a(ccount), g(rant)
    key = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["run", "kind", "key"], name="sync_seen_lookup")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.kind} {self.key}"
