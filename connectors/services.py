"""Connector instances and sync runs: create, configure, start, cancel. Each audited."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from access.models import Application
from rapidvalue import crypto, outbound
from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit

from .base import ConfigurationError, connector_types, local_only_set, without_local_only
from .dispatcher import ConnectorDispatcher, agent_exists, agent_proxy_for
from .models import ConnectorInstance, SyncRun
from .protocol.v1 import TestConnectionRequest, TestConnectionResponse

STALE_AFTER = timedelta(minutes=15)
EDITABLE = ("name", "mode", "agent_id", "config", "correlation_rules", "authoritative", "schedule_minutes", "enabled")


class InvalidConnectorConfig(Conflict):
    status_code = 400
    default_code = "invalid_connector_config"


def _validate(connector_type: str, mode: str, config: dict, auth_config: dict) -> None:
    if mode == ConnectorInstance.Mode.AGENT and auth_config:
        raise InvalidConnectorConfig("An agent-mode connector keeps its credentials in the agent's local config; "
                                     "send no auth_config.")
    if mode == ConnectorInstance.Mode.AGENT and connector_type in connector_types():
        local_only = local_only_set(connector_type, config)
        if local_only:
            raise InvalidConnectorConfig(
                f"An agent-mode connector takes {', '.join(local_only)} only from the agent's local config "
                "(where its credentials go is decided on premises): remove them here.")
    try:
        dispatcher = ConnectorDispatcher(connector_type, mode="hosted")
        if mode == "hosted":
            dispatcher.validate(config, auth_config)
    except ConfigurationError as exc:
        raise InvalidConnectorConfig(str(exc)) from exc
    if mode == "hosted":
        # Hosted connectors run in our workers: they may not reach private networks (SSRF).
        for key in ("url", "base_url"):
            if isinstance(config.get(key), str):
                parts = urlsplit(config[key])
                if parts.hostname:
                    default_port = {"ldaps": 636, "ldap": 389, "https": 443}.get(parts.scheme, 80)
                    outbound.check_host(parts.hostname, parts.port or default_port)


def auth_config_of(connector: ConnectorInstance) -> dict[str, Any]:
    """Stored credentials (hosted mode); agent-mode connectors keep theirs in the agent's config."""
    import json

    if connector.mode == ConnectorInstance.Mode.AGENT:
        return {}
    return json.loads(crypto.decrypt(connector.auth_config_encrypted)) if connector.auth_config_encrypted else {}


@transaction.atomic
def create_connector(*, name: str, type: str, auth_config: dict | None = None, application: Application | None = None,
                     **fields: Any) -> ConnectorInstance:
    import json

    auth_config = auth_config or {}
    mode = fields.get("mode", ConnectorInstance.Mode.HOSTED)
    _validate(type, mode, fields.get("config", {}), auth_config)
    if ConnectorInstance.objects.filter(name=name).exists():
        raise Conflict("A connector with this name already exists.", code="duplicate_name")
    if application is None:
        application, _ = Application.objects.get_or_create(name=name, defaults={"kind": type})
    connector = ConnectorInstance(name=name, type=type, application=application,
                                  auth_config_encrypted=crypto.encrypt(json.dumps(auth_config)) if auth_config else "",
                                  **{k: v for k, v in fields.items() if k in EDITABLE})
    connector.save()
    audit.record("connector.create", "connector", connector.pk, after=audit.snapshot(connector))
    return connector


@transaction.atomic
def update_connector(connector: ConnectorInstance, *, auth_config: dict | None = None, **changes: Any
                     ) -> ConnectorInstance:
    import json

    before = audit.snapshot(connector)
    moving_to_agent = (changes.get("mode") == ConnectorInstance.Mode.AGENT
                       and connector.mode != ConnectorInstance.Mode.AGENT and "config" not in changes)
    for name in EDITABLE:
        if name in changes:
            setattr(connector, name, changes[name])
    if moving_to_agent:  # like its credentials, its connection targets now live in the agent's config
        connector.config = without_local_only(connector.type, connector.config)
    effective_auth = auth_config if auth_config is not None else auth_config_of(connector)
    _validate(connector.type, connector.mode, connector.config, effective_auth)
    if auth_config is not None:
        connector.auth_config_encrypted = crypto.encrypt(json.dumps(auth_config))
    if connector.mode == ConnectorInstance.Mode.AGENT:
        connector.auth_config_encrypted = ""  # moved on premises: keep no copy of the old credentials
    connector.save()
    audit.record("connector.update", "connector", connector.pk, before=before, after=audit.snapshot(connector))
    return connector


def dispatcher_for(connector: ConnectorInstance, run: SyncRun | None = None) -> ConnectorDispatcher:
    """The dispatcher for a connector instance: in its worker, or through its agent.

    In agent mode the credentials stay with the agent: the requests built for it carry an
    empty ``auth_config`` (see :func:`auth_config_of`).
    """
    if connector.mode == ConnectorInstance.Mode.AGENT:
        return ConnectorDispatcher(connector.type, mode="agent", agent_id=str(connector.agent_id),
                                   agent_proxy=agent_proxy_for(connector, run))
    return ConnectorDispatcher(connector.type, mode="hosted")


def test_connection(connector: ConnectorInstance) -> TestConnectionResponse:
    dispatcher = dispatcher_for(connector)
    return dispatcher.test_connection(TestConnectionRequest(
        connector_business_id=str(connector.pk), auth_config=auth_config_of(connector), config=connector.config))


@transaction.atomic
def start_sync(connector: ConnectorInstance, *, incremental: bool = False, max_records: int | None = None,
               chunk_size: int = 1000, callback_url: str = "", requested_by: str = "") -> tuple[SyncRun, str | None]:
    """Queue a run (202); refuses a second active run of the same connector (409)."""
    if not connector.enabled:
        raise Conflict("This connector is disabled.", code="connector_disabled")
    if callback_url:
        outbound.check_target(callback_url)
    _validate(connector.type, connector.mode, connector.config, auth_config_of(connector))
    if connector.mode == ConnectorInstance.Mode.AGENT and not agent_exists(connector.agent_id):
        raise Conflict("This connector's agent has been revoked or removed; assign it to another agent.",
                       code="agent_unavailable")
    callback_secret = secrets.token_urlsafe(24) if callback_url else None
    # A run whose worker died (no heartbeat for STALE_AFTER) no longer blocks the connector, nor does
    # one queued for longer than any deferral lasts (its task message was lost, e.g. with the broker).
    now = timezone.now()
    SyncRun.objects.filter(connector=connector, status=SyncRun.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER
                           ).update(status=SyncRun.Status.FAILED, error="worker lost: no progress", finished_at=now)
    never_started = now - STALE_AFTER - timedelta(seconds=settings.SYNC_AGENT_MAX_WAIT_SECONDS)
    SyncRun.objects.filter(connector=connector, status=SyncRun.Status.QUEUED, created_at__lt=never_started).update(
        status=SyncRun.Status.FAILED, error="never started: its task was lost", finished_at=now)
    try:
        with transaction.atomic():
            run = SyncRun.objects.create(
                connector=connector, incremental=incremental, max_records=max_records, chunk_size=chunk_size,
                callback_url=callback_url, requested_by=requested_by,
                callback_secret_encrypted=crypto.encrypt(callback_secret) if callback_secret else "",
            )
    except IntegrityError as exc:
        raise Conflict("A sync of this connector is already queued or running.", code="sync_in_progress") from exc
    audit.record("connector.sync_start", "sync_run", run.pk,
                 after={"connector": str(connector.pk), "incremental": incremental})
    from django.db import connection

    from .tasks import schedule_run

    schema = connection.schema_name
    run_id = str(run.pk)
    agent_mode = connector.mode == ConnectorInstance.Mode.AGENT

    def enqueue() -> None:
        from django_tenants.utils import schema_context

        with schema_context(schema):
            schedule_run(run_id, agent_mode=agent_mode)

    transaction.on_commit(enqueue)
    return run, callback_secret


@transaction.atomic
def cancel_sync(run: SyncRun) -> SyncRun:
    if run.status not in SyncRun.ACTIVE:
        raise Conflict("This sync run has already finished.", code="sync_finished")
    SyncRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    if run.status == SyncRun.Status.QUEUED:
        SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.QUEUED).update(
            status=SyncRun.Status.CANCELLED, finished_at=timezone.now())
    run.refresh_from_db()
    audit.record("connector.sync_cancel", "sync_run", run.pk)
    return run
