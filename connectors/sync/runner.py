"""Running a sync: chunk after chunk from the dispatcher into the engine, with progress.

Each chunk commits on its own (bounded transactions, visible progress). Nothing is deleted
until the last chunk arrived and :func:`engine.finish` ran, so a run that dies midway leaves
only additions and updates behind, and the next run completes the picture.

A big first load is the exception: it runs in one transaction (see :mod:`.engine`), all or
nothing, its progress written through a second connection so that it stays visible.

A hosted connector fetches chunk N+1 in a background thread, and turns it into staging rows
there (:func:`engine.stage`), while chunk N is merged: the merge then mostly waits on PostgreSQL
(the GIL is released), so on two cores reading the source and writing the database overlap
instead of adding up. Memory holds about three chunks at most: the one being merged (as rows)
and, while the next is staged, its records and its rows (the records go once staged). An
agent-mode connector's pages are agent jobs, fetched in the run's own thread (see ``fetch``).

A run whose agent is offline when it is due is not started: it stays queued with the reason in
``status_detail`` and :func:`execute` answers ``DEFERRED`` (the task looks again later), so a
missing agent never holds a worker; it fails after ``SYNC_AGENT_MAX_WAIT_SECONDS``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from connectors.base import ConnectorError, SyncCancelled
from connectors.models import SyncRecordError, SyncRun
from connectors.protocol.v1 import SyncRequest, SyncResponse
from rapidvalue.audit import services as audit

from . import callbacks, engine

logger = logging.getLogger("rapidvalue.sync")
DEFERRED = "deferred"


def _claim(run_id) -> SyncRun | None:
    started = SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.QUEUED).update(
        status=SyncRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    return SyncRun.objects.select_related("connector").get(pk=run_id) if started else None


def _finish(run: SyncRun, status: str, error: str = "") -> None:
    SyncRun.objects.filter(pk=run.pk).update(status=status, error=error[:5000], finished_at=timezone.now(),
                                             progress=100 if status == SyncRun.Status.SUCCEEDED else run.progress)
    run.refresh_from_db()
    callbacks.send_progress(run, final=True)


def _not_ready(run_id) -> str | None:
    """DEFERRED (or FAILED) when the run's agent cannot take its jobs now; None when the run can start."""
    from connectors.services import dispatcher_for

    run = SyncRun.objects.select_related("connector").filter(pk=run_id, status=SyncRun.Status.QUEUED).first()
    if run is None or run.connector.mode != run.connector.Mode.AGENT:
        return None
    try:
        reason = dispatcher_for(run.connector, run).waiting_reason()
        if reason is not None and run.created_at < timezone.now() - timedelta(
                seconds=settings.SYNC_AGENT_MAX_WAIT_SECONDS):
            raise ConnectorError(f"gave up after {settings.SYNC_AGENT_MAX_WAIT_SECONDS} s: {reason}")
    except ConnectorError as exc:
        claimed = _claim(run_id)
        if claimed is None:
            return None
        _finish(claimed, SyncRun.Status.FAILED, str(exc))
        return claimed.status
    if reason is None:
        return None
    SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.QUEUED).update(status_detail=reason[:500])
    return DEFERRED


def execute(run_id) -> str:
    """Run a queued sync to the end (or failure, or cancellation); returns the final status.

    Returns DEFERRED, leaving the run queued, when its agent is offline: call again later.
    """
    waiting = _not_ready(run_id)
    if waiting is not None:
        return waiting
    run = _claim(run_id)
    if run is None:
        return "skipped"
    with _run_tuning():
        return _execute(run)


# Python's cyclic collector runs after every 700 new container objects and re-examines the
# survivors: a chunk is a quarter of a million small records that all survive until merged, so
# it was scanned again and again (40% of the time it took to produce a chunk). During a run, the
# youngest generation is collected every 100,000 allocations and the older ones seldom; the
# records hold no reference cycles, so nothing that needs collecting waits much longer.
RUN_GC_THRESHOLDS = (100_000, 50, 50)
# The run's thread waits on PostgreSQL and the network (the interpreter lock released) hundreds of
# times a chunk; each time, the fetch thread, busy in Python, keeps the lock for up to the switch
# interval before handing it back (5 ms by default: up to a second a chunk lost in COPY alone).
RUN_SWITCH_INTERVAL = 0.0005


_tuning_lock = threading.Lock()
_tuning: dict = {"runs": 0, "saved": None}


@contextlib.contextmanager
def _run_tuning() -> Iterator[None]:
    """Relax the cyclic GC and shorten the GIL switch interval while runs are in progress: both
    are process-wide, so the first run (of a worker running several in threads) sets them and
    the last one to end gives the worker its own settings back. Other threads of the worker
    (Celery's, a run's fetch thread) see them too: their garbage is collected a little later and
    they hand the interpreter lock over more often, neither of which changes what they do."""
    with _tuning_lock:
        if _tuning["runs"] == 0:
            _tuning["saved"] = (gc.get_threshold(), sys.getswitchinterval())
            gc.set_threshold(*RUN_GC_THRESHOLDS)
            sys.setswitchinterval(RUN_SWITCH_INTERVAL)
        _tuning["runs"] += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning["runs"] -= 1
            collect = False
            if _tuning["runs"] == 0:
                thresholds, interval = _tuning["saved"]
                gc.set_threshold(*thresholds)
                sys.setswitchinterval(interval)
                collect = True
        if collect:
            # The older generations were seldom collected during the runs: whatever cyclic garbage
            # they (or the worker's other threads) left is freed now, not much later (unlocked: a
            # run starting meanwhile does not wait for it).
            gc.collect()


def _execute(run: SyncRun) -> str:
    connector = run.connector
    from connectors.services import auth_config_of, dispatcher_for

    totals = dict(run.counts)
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-fetch")
    pending: Future | None = None

    def fetch(cursor: str | None) -> Future:
        """The next page and its staging rows (engine.stage), as a future of (response, staged)."""
        request = SyncRequest(
            connector_business_id=str(connector.pk), incremental=run.incremental,
            last_sync_at=connector.last_success_at if run.incremental else None,
            auth_config=auth_config_of(connector), config=connector.config, cursor=cursor,
            chunk_size=run.chunk_size, max_records=run.max_records,
        )
        if dispatcher.mode == "agent":
            # The agent proxy works in the database (job rows, the run's status), so it runs in this
            # thread, whose connection is in the tenant's schema; its pages arrive one job at a time anyway.
            done: Future = Future()
            try:
                done.set_result(fetched(request))
            except Exception as exc:
                done.set_exception(exc)
            return done
        return prefetch.submit(fetched, request)

    def fetched(request: SyncRequest) -> tuple[SyncResponse, engine.Staged | None]:
        response = dispatcher.sync(request)
        if not response.success:
            return response, None
        staged = engine.stage(response, connector.authoritative)
        # Only the rows are merged: the records they came from can go now (see the module docstring).
        response.identities, response.accounts, response.entitlements, response.grants = [], [], [], []
        return response, staged

    try:
        dispatcher = dispatcher_for(connector, run)
        state = engine.begin(run, connector)
        first, staged = fetch(None).result()
        # Not through an agent: each page is a job the agent must see committed, which one
        # transaction around the whole load would hide from it until the load timed out.
        bulk = _first_load_tables(connector, first, staged) if dispatcher.mode == "hosted" else []
        # A big first load runs in one transaction, its index and foreign-key upkeep set aside
        # (engine.set_aside): all or nothing, where other runs commit chunk by chunk.
        with contextlib.ExitStack() as first_load:
            using = DEFAULT_DB_ALIAS
            if bulk:
                using = first_load.enter_context(_progress_alias(True))
                first_load.enter_context(transaction.atomic())
                try:
                    state.set_aside = engine.set_aside(bulk)
                except engine.NoFirstLoad:
                    first_load.close()  # nothing was written: out of the transaction, a normal run
                    using = DEFAULT_DB_ALIAS
            response = first
            del first
            while True:
                if SyncRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
                    raise SyncCancelled()
                if not response.success:
                    raise _ConnectorFailed(response.error or "connector reported failure")
                if response.has_more:
                    pending = fetch(response.next_cursor)  # read the next chunk while this one merges
                with transaction.atomic():
                    result = engine.merge_chunk(run, connector, staged, state)
                    SyncRecordError.objects.bulk_create(
                        SyncRecordError(run=run, kind=e.kind, key=(e.key or "")[:500],
                                        location=(e.location or "")[:500], error=e.error) for e in result.errors
                    )
                    for key, value in result.counts.items():
                        totals[key] = totals.get(key, 0) + value
                    run.processed += staged.records
                    run.total_estimate = response.total_estimate or run.total_estimate
                    if run.total_estimate:
                        run.progress = min(99, int(100 * min(run.processed, run.total_estimate)
                                                   / run.total_estimate))
                    SyncRun.objects.using(using).filter(pk=run.pk).update(
                        counts=totals, processed=run.processed, heartbeat_at=timezone.now(),
                        total_estimate=run.total_estimate, progress=run.progress)
                    run.counts = totals
                callbacks.send_progress(run, using=using)
                del response, staged, result  # the next chunk is already in memory: free this one
                if pending is None:
                    break
                (response, staged), pending = pending.result(), None
            with transaction.atomic():
                for key, value in engine.finish(run, connector, state).items():
                    totals[key] = totals.get(key, 0) + value
                SyncRun.objects.filter(pk=run.pk).update(counts=totals)
                connector.last_success_at = run.started_at
                connector.save(update_fields=["last_success_at"])
                audit.record("connector.sync_complete", "sync_run", run.pk,
                             after=totals)
        _finish(run, SyncRun.Status.SUCCEEDED)
    except _ConnectorFailed as exc:
        _finish(run, SyncRun.Status.FAILED, str(exc))
    except SyncCancelled:
        _finish(run, SyncRun.Status.CANCELLED)
    except Exception as exc:
        logger.exception("sync run %s failed", run.pk)
        _finish(run, SyncRun.Status.FAILED, f"{exc.__class__.__name__}: {exc}")
    finally:
        if pending is not None:
            pending.cancel()
        prefetch.shutdown(wait=False, cancel_futures=True)
        if run.status != SyncRun.Status.SUCCEEDED:
            _discard_quietly()
    return run.status


class _ConnectorFailed(Exception):
    """The connector answered ``success: false``: the run fails with its message."""


def _first_load_tables(connector, first: SyncResponse, staged: engine.Staged | None) -> list[str]:
    """The empty tables a first load big enough to pay for rebuilding their indexes will fill."""
    if staged is None or max(first.total_estimate or 0, staged.records) < settings.SYNC_FIRST_LOAD_MIN_RECORDS:
        return []
    return engine.first_load_tables(connector)


@contextlib.contextmanager
def _progress_alias(separate: bool) -> Iterator[str]:
    """The database alias a run writes its progress through: its own, or a second connection.

    A first load's one transaction would keep its progress invisible until the end, and hold
    the run's row lock all along (a cancel request would wait for the whole load). So when
    ``separate`` and the run is not already inside a transaction of its caller's (whose rows a
    second connection could not see), progress goes through a connection of its own, in autocommit.
    """
    if not separate or connection.in_atomic_block:
        yield DEFAULT_DB_ALIAS
        return
    alias = "sync-progress"
    side = connections.create_connection(DEFAULT_DB_ALIAS)
    side.set_tenant(connection.tenant)
    connections[alias] = side
    try:
        yield alias
    finally:
        del connections[alias]
        side.close()


def _discard_quietly() -> None:
    """A run that did not succeed leaves its seen tables in this session: drop them (best effort)."""
    try:
        engine.discard()
    except Exception:  # the connection may be gone with the run; then so are its temp tables
        logger.warning("could not drop the sync's temporary tables", exc_info=True)
