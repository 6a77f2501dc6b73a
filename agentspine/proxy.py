"""AgentProxyConnector: the dispatcher's agent mode, made real with the job queue.

Every dispatcher call for an agent-mode connector becomes one job for that connector's agent;
this object waits for the job (outside any transaction) and returns the same protocol response a
hosted connector would. While it waits, the sync run's ``status_detail`` says what it waits for
(an offline agent, a queued job, which attempt is running), its heartbeat stays fresh, and a
cancellation of the run cancels the job.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from connectors.base import SyncCancelled
from connectors.models import ConnectorInstance, SyncRun
from connectors.protocol.v1 import (
    OperationResult,
    ProvisioningRequest,
    ProvisioningResponse,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)

from .models import Agent, AgentJob
from .services import jobs
from .services.jobs import AgentUnavailable

WAIT_SLICE_SECONDS = 5

__all__ = ["AgentProxyConnector", "AgentUnavailable"]


def _describe(job: AgentJob, agent: Agent | None) -> str:
    name = agent.name if agent else "?"
    if job.status == AgentJob.Status.LEASED:
        return f"agent '{name}' is running this job (attempt {job.attempt})"
    if agent is None or agent.revoked_at is not None:
        return f"agent '{name}' has been revoked"
    if agent.enrolled_at is None:
        return f"waiting for agent '{name}': it has not enrolled yet"
    if not agent.online:
        since = agent.offline_since or agent.last_heartbeat_at
        when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
        return f"waiting for agent '{name}': offline{when}"
    return f"queued for agent '{name}' (online)"


class AgentProxyConnector:
    """Implements connectors.dispatcher.AgentProxy for one connector (and, for syncs, one run)."""

    def __init__(self, connector: ConnectorInstance, run: SyncRun | None = None):
        self.connector = connector
        self.run = run

    @classmethod
    def for_connector(cls, connector: ConnectorInstance, run: SyncRun | None = None) -> AgentProxyConnector:
        return cls(connector, run)

    # -- the AgentProxy protocol ------------------------------------------------------------

    def sync(self, connector_type: str, agent_id: str, request: SyncRequest) -> SyncResponse:
        job = self._enqueue(agent_id, AgentJob.Kind.SYNC, request)
        outcome = self._await(job, settings.AGENT_JOB_TIMEOUT_SECONDS)
        if outcome is None:
            return SyncResponse(success=False, error=job.error)
        return SyncResponse.model_validate(outcome)

    def test_connection(self, connector_type: str, agent_id: str,
                        request: TestConnectionRequest) -> TestConnectionResponse:
        # Someone is waiting for this answer: say at once that the agent cannot give it.
        try:
            reason = self.waiting_reason(agent_id)
            if reason is not None:
                return TestConnectionResponse(success=False, message=reason)
            job = self._enqueue(agent_id, AgentJob.Kind.TEST_CONNECTION, request)
        except AgentUnavailable as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        outcome = self._await(job, settings.AGENT_TEST_CONNECTION_TIMEOUT_SECONDS)
        if outcome is None:
            return TestConnectionResponse(success=False, message=job.error)
        return TestConnectionResponse.model_validate(
            {k: v for k, v in outcome.items() if k not in jobs.CHUNK_KEYS})

    def provision(self, connector_type: str, agent_id: str, request: ProvisioningRequest) -> ProvisioningResponse:
        try:
            job = self._enqueue(agent_id, AgentJob.Kind.PROVISION, request)
        except AgentUnavailable as exc:
            return ProvisioningResponse(results=[
                OperationResult(operation_id=op.operation_id, success=False, error=str(exc), retryable=False)
                for op in request.operations])
        outcome = self._await(job, settings.AGENT_JOB_TIMEOUT_SECONDS)
        if outcome is None:
            return ProvisioningResponse(results=[
                OperationResult(operation_id=op.operation_id, success=False, error=job.error, retryable=True)
                for op in request.operations])
        return ProvisioningResponse.model_validate(
            {k: v for k, v in outcome.items() if k not in jobs.CHUNK_KEYS})

    def waiting_reason(self, agent_id: str) -> str | None:
        """None while the agent is online; why a job would wait otherwise; raises when it never could run."""
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None or agent.revoked_at is not None:
            raise AgentUnavailable(f"agent '{agent.name if agent else agent_id}' has been revoked or removed; "
                                   "assign the connector to another agent")
        if agent.enrolled_at is None or not agent.online:
            return _describe(AgentJob(status=AgentJob.Status.QUEUED), agent)
        return None

    # -- waiting ----------------------------------------------------------------------------

    def _enqueue(self, agent_id: str, kind: str, request: Any) -> AgentJob:
        # Credentials never travel to the agent: it reads its own from its local config.
        body = request.model_dump(mode="json", exclude={"auth_config"})
        return jobs.enqueue(agent_id=agent_id, connector=self.connector, kind=kind, request=body,
                            sync_run=self.run)

    def _note(self, detail: str) -> None:
        if self.run is not None:
            SyncRun.objects.filter(pk=self.run.pk).update(status_detail=detail[:500], heartbeat_at=timezone.now())

    def _await(self, job: AgentJob, timeout: float) -> dict[str, Any] | None:
        """The job's assembled result; None when it failed or timed out (``job.error`` says why)."""
        deadline = time.monotonic() + timeout
        last_detail = None
        while True:
            job.refresh_from_db()
            if job.status == AgentJob.Status.SUCCEEDED:
                return self._collect(job)
            if job.status in (AgentJob.Status.FAILED, AgentJob.Status.CANCELLED):
                job.error = f"agent job failed: {job.error}" if job.error else "agent job failed"
                self._note("")
                return None
            if self.run is not None and SyncRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
                jobs.cancel(job, "the sync run was cancelled")
                raise SyncCancelled("cancelled while the agent was working")
            agent = Agent.objects.filter(pk=job.agent_id).first()
            remaining = deadline - time.monotonic()
            gone = agent is None or agent.revoked_at is not None
            # An agent that went away mid-run: the run fails (deleting nothing) and frees its worker
            # rather than holding it for the whole job timeout; the next run starts when it is back.
            absent = (not gone and job.status == AgentJob.Status.QUEUED and not agent.online
                      and (timezone.now() - job.created_at).total_seconds() > settings.SYNC_AGENT_OFFLINE_GRACE_SECONDS)
            if gone or absent or remaining <= 0:
                if gone:
                    reason = f"agent '{agent.name if agent else job.agent_id}' has been revoked"
                elif absent:
                    reason = (f"gave up after {settings.SYNC_AGENT_OFFLINE_GRACE_SECONDS} s: {_describe(job, agent)}")
                else:
                    reason = f"no result within {int(timeout)} s; {_describe(job, agent)}"
                jobs.cancel(job, reason)
                job.refresh_from_db()
                if job.status == AgentJob.Status.SUCCEEDED:  # it finished just before we gave up
                    return self._collect(job)
                if job.status == AgentJob.Status.FAILED:  # ... or failed: the agent's reason is the better one
                    job.error = f"agent job failed: {job.error}" if job.error else "agent job failed"
                    self._note("")
                    return None
                job.error = reason
                self._note("")
                return None
            detail = _describe(job, agent)
            if detail != last_detail or self.run is not None:
                self._note(detail)
                last_detail = detail
            jobs.wait_until_finished(job, min(WAIT_SLICE_SECONDS, remaining))

    def _collect(self, job: AgentJob) -> dict[str, Any]:
        result = jobs.assemble(job)
        jobs.discard_chunks(job)
        self._note("")
        return result
