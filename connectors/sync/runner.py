"""Running a sync: chunk after chunk from the dispatcher into the engine, with progress.

Each chunk commits on its own (bounded transactions, visible progress). Nothing is deleted
until the last chunk arrived and :func:`engine.finish` ran, so a run that dies midway leaves
only additions and updates behind, and the next run completes the picture.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from connectors.base import SyncCancelled
from connectors.models import SyncRecordError, SyncRun
from connectors.protocol.v1 import SyncRequest
from rapidvalue.audit import services as audit

from . import callbacks, engine

logger = logging.getLogger("rapidvalue.sync")


def _claim(run_id) -> SyncRun | None:
    started = SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.QUEUED).update(
        status=SyncRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    return SyncRun.objects.select_related("connector").get(pk=run_id) if started else None


def _finish(run: SyncRun, status: str, error: str = "") -> None:
    SyncRun.objects.filter(pk=run.pk).update(status=status, error=error[:5000], finished_at=timezone.now(),
                                             progress=100 if status == SyncRun.Status.SUCCEEDED else run.progress)
    run.refresh_from_db()
    callbacks.send_progress(run, final=True)


def execute(run_id) -> str:
    """Run a queued sync to the end (or failure, or cancellation); returns the final status."""
    run = _claim(run_id)
    if run is None:
        return "skipped"
    connector = run.connector
    from connectors.services import auth_config_of, dispatcher_for

    totals = dict(run.counts)
    try:
        dispatcher = dispatcher_for(connector, run)
        cursor = None
        while True:
            if SyncRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
                _finish(run, SyncRun.Status.CANCELLED)
                return run.status
            response = dispatcher.sync(SyncRequest(
                connector_business_id=str(connector.pk), incremental=run.incremental,
                last_sync_at=connector.last_success_at if run.incremental else None,
                auth_config=auth_config_of(connector), config=connector.config, cursor=cursor,
                chunk_size=run.chunk_size, max_records=run.max_records,
            ))
            if not response.success:
                _finish(run, SyncRun.Status.FAILED, response.error or "connector reported failure")
                return run.status
            with transaction.atomic():
                result = engine.merge_chunk(run, connector, response)
                SyncRecordError.objects.bulk_create(
                    SyncRecordError(run=run, kind=e.kind, key=(e.key or "")[:500], location=(e.location or "")[:500],
                                    error=e.error) for e in result.errors
                )
                for key, value in result.counts.items():
                    totals[key] = totals.get(key, 0) + value
                run.processed += response.record_count
                run.total_estimate = response.total_estimate or run.total_estimate
                if run.total_estimate:
                    run.progress = min(99, int(100 * min(run.processed, run.total_estimate) / run.total_estimate))
                SyncRun.objects.filter(pk=run.pk).update(counts=totals, processed=run.processed,
                                                         heartbeat_at=timezone.now(),
                                                         total_estimate=run.total_estimate, progress=run.progress)
                run.counts = totals
            callbacks.send_progress(run)
            if not response.has_more:
                break
            cursor = response.next_cursor
        with transaction.atomic():
            for key, value in engine.finish(run, connector).items():
                totals[key] = totals.get(key, 0) + value
            SyncRun.objects.filter(pk=run.pk).update(counts=totals)
            connector.last_success_at = run.started_at
            connector.save(update_fields=["last_success_at"])
            audit.record("connector.sync_complete", "sync_run", run.pk,
                         after=totals)
        _finish(run, SyncRun.Status.SUCCEEDED)
    except SyncCancelled:
        _finish(run, SyncRun.Status.CANCELLED)
    except Exception as exc:
        logger.exception("sync run %s failed", run.pk)
        _finish(run, SyncRun.Status.FAILED, f"{exc.__class__.__name__}: {exc}")
    return run.status
