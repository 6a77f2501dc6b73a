"""The agent job queue: enqueue, long-poll claim with a lease, chunked results, completion.

Invariants:
- a job belongs to one agent of one tenant (the table lives in the tenant's schema and the
  claim filters on the agent), so no other agent, and no other tenant's agent, can receive it;
- a job is leased to one holder at a time (``FOR UPDATE SKIP LOCKED`` + a fresh ``lease_id`` per
  lease); every upload names its lease, and a superseded lease is refused (409 ``lease_lost``);
- a lease that is not renewed (chunk uploads, ``/lease``, heartbeats) expires and the job is
  handed out again with ``attempt + 1``; chunks of earlier attempts are discarded, so a result
  is assembled from one attempt only and nothing is counted twice;
- chunks are idempotent by ``(job, attempt, sequence)``: re-sending one changes nothing;
- a revoked agent gets no job: enqueue and claim both lock or re-read the agent row, which
  revocation updates, so a long poll already in flight cannot lease a job after the revocation;
- a job whose lease expired ``AGENT_MAX_ATTEMPTS`` times fails instead of going round forever
  (hand-backs on a clean shutdown do not count).

Wake-ups go through a Redis list per agent (``BLPOP``); the database stays the truth, so a lost
wake-up only delays a claim until the next poll interval.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from connectors.base import ConnectorError
from connectors.models import ConnectorInstance, SyncRun
from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit
from rapidvalue.redis_client import get_blocking_redis, get_redis

from ..models import Agent, AgentJob, AgentJobChunk

POLL_SLICE_SECONDS = 5  # a claim is retried at least this often while a long poll waits
CHUNK_KEYS = ("identities", "accounts", "entitlements", "grants", "record_errors")


class AgentUnavailable(ConnectorError):
    """The connector's agent is revoked or gone: nothing can be sent to it (not worth retrying)."""

    transient = False


class LeaseLost(Conflict):
    default_code = "lease_lost"
    default_detail = "This job's lease has expired or was handed to another attempt."


def _queue_key(agent_id) -> str:
    return f"rv:agentjobs:{connection.schema_name}:{agent_id}"


def _done_key(job_id) -> str:
    return f"rv:agentjob-done:{connection.schema_name}:{job_id}"


def _wake(key: str) -> None:
    redis = get_redis()
    pipe = redis.pipeline()
    pipe.rpush(key, "1")
    pipe.expire(key, 120)
    pipe.execute()


def enqueue(*, agent_id, connector: ConnectorInstance, kind: str, request: dict[str, Any],
            sync_run: SyncRun | None = None) -> AgentJob:
    """A job for the agent; it is woken once the job is committed. Refused for a revoked agent."""
    with transaction.atomic():
        # Locks the agent row against a concurrent revocation (which updates it and fails open jobs).
        agent = Agent.objects.select_for_update().filter(pk=agent_id).first()
        if agent is None or agent.revoked_at is not None:
            raise AgentUnavailable(f"agent {agent.name if agent else agent_id} has been revoked or removed; "
                                   "assign the connector to another agent")
        job = AgentJob.objects.create(agent_id=agent_id, connector=connector, kind=kind, request=request,
                                      sync_run=sync_run)
        audit.record("agent_job.create", "agent_job", job.pk,
                     after={"agent": str(agent_id), "kind": kind, "connector": str(connector.pk)})
        key = _queue_key(agent_id)
        transaction.on_commit(lambda: _wake(key))
    return job


def claim_next(agent: Agent) -> AgentJob | None:
    """Lease the agent's oldest open job: queued, or leased with an expired lease (requeued).

    A job whose lease has now expired ``AGENT_MAX_ATTEMPTS`` times fails here instead: an agent
    that dies on it every time (a crash, a hang) must not hold it forever. Hand-backs (release on
    SIGTERM, rolling restarts) do not count.
    """
    while True:
        now = timezone.now()
        with transaction.atomic():
            # A revocation committed meanwhile is seen here; one still in progress fails this job
            # once our lease commits (it locks the agent's open jobs), so the lease dies with it.
            if not Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).exists():
                return None
            job = (AgentJob.objects.select_for_update(skip_locked=True)
                   .filter(agent=agent, status__in=AgentJob.OPEN)
                   .exclude(status=AgentJob.Status.LEASED, leased_until__gte=now)
                   .order_by("created_at", "id").first())
            if job is None:
                return None
            requeued = job.status == AgentJob.Status.LEASED
            if requeued:
                job.expired_leases += 1
                if job.expired_leases >= settings.AGENT_MAX_ATTEMPTS:
                    _give_up(job, f"the agent did not finish this job: its lease expired {job.expired_leases} "
                                  "times; see the agent's log")
                    continue
            job.status, job.attempt, job.lease_id = AgentJob.Status.LEASED, job.attempt + 1, uuid.uuid4()
            job.leased_at, job.leased_until = now, now + timedelta(seconds=settings.AGENT_LEASE_SECONDS)
            job.save(update_fields=["status", "attempt", "expired_leases", "lease_id", "leased_at", "leased_until"])
            AgentJobChunk.objects.filter(job=job, attempt__lt=job.attempt).delete()
            audit.record("agent_job.lease", "agent_job", job.pk,
                         after={"attempt": job.attempt, "requeued_after_expiry": requeued})
        return job


def _give_up(job: AgentJob, error: str) -> None:
    job.status, job.error, job.finished_at = AgentJob.Status.FAILED, error, timezone.now()
    job.lease_id, job.leased_until = None, None
    job.save(update_fields=["status", "error", "expired_leases", "finished_at", "lease_id", "leased_until"])
    AgentJobChunk.objects.filter(job=job).delete()
    audit.record("agent_job.fail", "agent_job", job.pk, after={"attempt": job.attempt, "error": error})
    key = _done_key(job.pk)
    transaction.on_commit(lambda: _wake(key))


def wait_for_next(agent: Agent, wait_seconds: float) -> AgentJob | None:
    """Long poll: a job at once if one is open, else wait (up to ``wait_seconds``) for one to arrive."""
    deadline = timezone.now() + timedelta(seconds=wait_seconds)
    key = _queue_key(agent.pk)
    while True:
        job = claim_next(agent)
        if job is not None:
            return job
        remaining = (deadline - timezone.now()).total_seconds()
        if remaining <= 0:
            return None
        # No transaction is open while we block: the connection holds no locks meanwhile.
        get_blocking_redis().blpop([key], timeout=max(0.1, min(remaining, POLL_SLICE_SECONDS)))


def _leased(agent: Agent, job_id, lease_id) -> AgentJob:
    job = AgentJob.objects.select_for_update().filter(pk=job_id, agent=agent).first()
    if job is None:
        from rest_framework.exceptions import NotFound

        raise NotFound("No such job for this agent.")
    if job.status != AgentJob.Status.LEASED or str(job.lease_id) != str(lease_id):
        raise LeaseLost()
    return job


def _extend(job: AgentJob) -> None:
    job.leased_until = timezone.now() + timedelta(seconds=settings.AGENT_LEASE_SECONDS)


@transaction.atomic
def extend_lease(agent: Agent, job_id, lease_id) -> AgentJob:
    job = _leased(agent, job_id, lease_id)
    _extend(job)
    job.save(update_fields=["leased_until"])
    return job


@transaction.atomic
def store_chunk(agent: Agent, job_id, lease_id, sequence: int, payload: dict[str, Any]) -> tuple[bool, AgentJob]:
    """Store one chunk of the result (False when this sequence number was already stored), renewing the lease."""
    job = _leased(agent, job_id, lease_id)
    # The job row is locked (``_leased``), so uploads of one job are serialised: check, then insert.
    stored = not AgentJobChunk.objects.filter(job=job, attempt=job.attempt, sequence=sequence).exists()
    if stored:
        records = sum(len(payload.get(k) or []) for k in CHUNK_KEYS)
        AgentJobChunk.objects.create(job=job, attempt=job.attempt, sequence=sequence, records=records,
                                     payload=payload)
    _extend(job)
    job.save(update_fields=["leased_until"])
    return stored, job


def _check_result(kind: str, result: dict[str, Any]) -> None:
    """The result must be the protocol response of the job's kind (record lists arrive as chunks): 400 otherwise."""
    from pydantic import ValidationError as PydanticValidationError
    from rest_framework.exceptions import ValidationError

    from connectors.protocol.v1 import ProvisioningResponse, SyncResponse, TestConnectionResponse

    model = {AgentJob.Kind.SYNC: SyncResponse, AgentJob.Kind.TEST_CONNECTION: TestConnectionResponse,
             AgentJob.Kind.PROVISION: ProvisioningResponse}[kind]
    try:
        model.model_validate(result)
    except PydanticValidationError as exc:
        raise ValidationError({"result": [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:20]]}
                              ) from exc


@transaction.atomic
def complete(agent: Agent, job_id, lease_id, *, chunk_count: int, result: dict[str, Any]) -> AgentJob:
    """Finish a job: every chunk 0..chunk_count-1 of this attempt must be there (else 409)."""
    job = _leased(agent, job_id, lease_id)
    _check_result(job.kind, result)
    have = set(AgentJobChunk.objects.filter(job=job, attempt=job.attempt).values_list("sequence", flat=True))
    missing = sorted(set(range(chunk_count)) - have)
    if missing:
        raise Conflict(f"Chunks {missing[:20]} of this attempt were never received.", code="chunks_missing")
    if any(s >= chunk_count for s in have):
        raise Conflict("Chunks beyond chunk_count were received for this attempt.", code="chunks_unexpected")
    job.status, job.result, job.chunk_count = AgentJob.Status.SUCCEEDED, result, chunk_count
    job.finished_at, job.lease_id, job.leased_until = timezone.now(), None, None
    job.save(update_fields=["status", "result", "chunk_count", "finished_at", "lease_id", "leased_until"])
    audit.record("agent_job.complete", "agent_job", job.pk, after={"attempt": job.attempt, "chunks": chunk_count})
    key = _done_key(job.pk)
    transaction.on_commit(lambda: _wake(key))
    return job


@transaction.atomic
def fail(agent: Agent, job_id, lease_id, *, error: str) -> AgentJob:
    job = _leased(agent, job_id, lease_id)
    job.status, job.error, job.finished_at = AgentJob.Status.FAILED, error[:5000], timezone.now()
    job.lease_id, job.leased_until = None, None
    job.save(update_fields=["status", "error", "finished_at", "lease_id", "leased_until"])
    AgentJobChunk.objects.filter(job=job).delete()
    audit.record("agent_job.fail", "agent_job", job.pk, after={"attempt": job.attempt, "error": job.error[:500]})
    key = _done_key(job.pk)
    transaction.on_commit(lambda: _wake(key))
    return job


@transaction.atomic
def release(agent: Agent, job_id, lease_id) -> AgentJob:
    """The agent hands a job back (e.g. on shutdown): queued again at once, its chunks discarded."""
    job = _leased(agent, job_id, lease_id)
    AgentJobChunk.objects.filter(job=job).delete()
    job.status, job.lease_id, job.leased_until = AgentJob.Status.QUEUED, None, None
    job.save(update_fields=["status", "lease_id", "leased_until"])
    audit.record("agent_job.release", "agent_job", job.pk, after={"attempt": job.attempt})
    key = _queue_key(agent.pk)
    transaction.on_commit(lambda: _wake(key))
    return job


def finish_open_jobs(agent: Agent, status: str, error: str) -> int:
    """Fail (or cancel) every open job of an agent, waking whoever waits for them."""
    jobs = list(AgentJob.objects.select_for_update().filter(agent=agent, status__in=AgentJob.OPEN))
    for job in jobs:
        job.status, job.error, job.finished_at = status, error, timezone.now()
        job.lease_id, job.leased_until = None, None
        job.save(update_fields=["status", "error", "finished_at", "lease_id", "leased_until"])
        key = _done_key(job.pk)
        transaction.on_commit(lambda key=key: _wake(key))
    return len(jobs)


@transaction.atomic
def cancel(job: AgentJob, reason: str) -> None:
    """Server side: the caller gave up (cancelled run, timeout); a late upload then gets 409."""
    updated = AgentJob.objects.filter(pk=job.pk, status__in=AgentJob.OPEN).update(
        status=AgentJob.Status.CANCELLED, error=reason[:5000], finished_at=timezone.now(), lease_id=None,
        leased_until=None)
    if updated:
        AgentJobChunk.objects.filter(job=job).delete()
        audit.record("agent_job.cancel", "agent_job", job.pk, after={"reason": reason[:500]})


def wait_until_finished(job: AgentJob, timeout: float) -> None:
    """Block (outside any transaction) until the job leaves the queue or ``timeout`` passes."""
    get_blocking_redis().blpop([_done_key(job.pk)], timeout=max(0.1, timeout))


def assemble(job: AgentJob) -> dict[str, Any]:
    """The job's result with the chunks' record lists concatenated in sequence order."""
    result = dict(job.result or {})
    for key in CHUNK_KEYS:
        result.setdefault(key, [])
    for payload in (AgentJobChunk.objects.filter(job=job, attempt=job.attempt).order_by("sequence")
                    .values_list("payload", flat=True).iterator(chunk_size=50)):
        for key in CHUNK_KEYS:
            result[key].extend(payload.get(key) or [])
    return result


def discard_chunks(job: AgentJob) -> None:
    AgentJobChunk.objects.filter(job=job).delete()
