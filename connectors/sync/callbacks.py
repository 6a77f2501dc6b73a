"""Progress to the caller's ``callback_url``: signed, ordered by sequence, retried, never blocking.

Each progress report is a Celery task of its own (retried with backoff); the sync only
enqueues it. Bodies carry a ``sequence`` so a receiver can order them; they are signed like
webhooks (``X-RapidValue-Signature: v1=HMAC-SHA256(secret, "<timestamp>.<body>")``) with the
``callback_secret`` returned once when the sync was started.
"""

from __future__ import annotations

import json
import logging

from django.db import DEFAULT_DB_ALIAS, connection

from connectors.models import SyncRun

logger = logging.getLogger("rapidvalue.sync")


def payload(run: SyncRun, sequence: int, final: bool) -> dict:
    return {
        "sync_run_id": str(run.pk), "connector_id": str(run.connector_id), "sequence": sequence,
        "status": run.status, "progress": run.progress, "processed": run.processed,
        "total_estimate": run.total_estimate, "final": final,
        "counts": run.counts,
    }


def send_progress(run: SyncRun, final: bool = False, using: str = DEFAULT_DB_ALIAS) -> None:
    """Enqueue a progress report; ``using``: the connection the run writes its progress through."""
    if not run.callback_url:
        return
    run.callback_sequence += 1
    sequence = run.callback_sequence
    SyncRun.objects.using(using).filter(pk=run.pk).update(callback_sequence=sequence)
    from django_tenants.utils import schema_context

    from connectors.tasks import post_callback

    body = json.dumps(payload(run, sequence, final), separators=(",", ":"))
    try:
        with schema_context(connection.schema_name):
            post_callback.delay(str(run.pk), body)
    except Exception:  # progress reporting must never break the sync
        logger.warning("could not enqueue sync progress callback", exc_info=True)
