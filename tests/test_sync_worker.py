"""Pattern 3 end to end: the API queues a sync, a real Celery worker runs it, and signed,
ordered progress reaches a real HTTP server at the callback_url."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from connectors.models import ConnectorInstance
from identities.models import Identity
from rapidvalue.celery import app
from tests.conftest import Api
from tests.http_receiver import Receiver
from tests.test_celery_tasks import _database_url_of_test_db, _point_app_at
from tests.test_webhook_worker import start_worker, stop

pytestmark = pytest.mark.slow


def test_pattern_3_sync_runs_in_a_worker_and_streams_ordered_signed_progress(world, django_db_blocker, tmp_path,
                                                                             settings):
    settings.ALLOW_PRIVATE_TARGETS = True
    saved = (app.conf.broker_url, app.conf.result_backend)
    _point_app_at(settings.REDIS_URL, settings.REDIS_URL)
    receiver = Receiver().start()
    worker = None
    client = Api(world.acme.tokens["admin"])
    with django_db_blocker.unblock():
        try:
            worker, _ = start_worker(_database_url_of_test_db(), tmp_path / "worker.log")
            created = client.post("/api/v1/connectors", {"name": "Synthetic HR", "type": "synthetic",
                                                         "config": {"people": 1200, "seed": 5}, "authoritative": True})
            assert created.status_code == 201, created.body
            started = client.post(f"/api/v1/connectors/{created.body['id']}/sync", {
                "incremental": False, "max_records": None, "chunk_size": 250, "callback_url": receiver.url})
            assert started.status_code == 202 and started.body["status"] == "queued"
            secret = started.body["callback_secret"]
            run_url = f"/api/v1/connectors/{created.body['id']}/sync-runs/{started.body['id']}"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                run = client.get(run_url).body
                if run["status"] not in ("queued", "running"):
                    break
                time.sleep(0.3)
            assert run["status"] == "succeeded", run
            assert run["counts"]["identities_created"] == 1200 and run["progress"] == 100
            reports = receiver.wait_for(6, timeout=60)  # 5 chunks + the final report
            bodies = sorted((r.json() for r in reports), key=lambda b: b["sequence"])
            assert [b["sequence"] for b in bodies] == list(range(1, len(bodies) + 1))
            progress = [b["progress"] for b in bodies]
            assert progress == sorted(progress) and bodies[-1]["final"] and bodies[-1]["status"] == "succeeded"
            for report in reports:
                ts = report.headers["X-RapidValue-Timestamp"]
                mac = hmac.new(secret.encode(), f"{ts}.".encode() + report.body, hashlib.sha256).hexdigest()
                assert report.headers["X-RapidValue-Signature"] == f"v1={mac}"
        finally:
            if worker is not None:
                stop(worker)
            receiver.stop()
            _point_app_at(*saved)
            with tenant_context(world.acme.tenant):
                for connector in ConnectorInstance.objects.filter(name="Synthetic HR"):
                    application = connector.application
                    connector.delete()
                    application.delete()
                Identity.objects.filter(source__startswith="connector:").delete()
            connection.set_schema_to_public()
