"""A worker killed between claim and send loses nothing: real Celery worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, transaction
from django_tenants.utils import tenant_context

from rapidvalue.celery import app
from rapidvalue.webhooks import services
from rapidvalue.webhooks.events import emit
from rapidvalue.webhooks.models import WebhookDelivery, WebhookEvent
from rapidvalue.webhooks.tasks import sweep_webhooks
from tests.http_receiver import Receiver
from tests.test_celery_tasks import REPO, _database_url_of_test_db, _point_app_at

pytestmark = pytest.mark.slow
LEASE = 2


def start_worker(database_url: str, log_path) -> tuple[subprocess.Popen, str]:
    hostname = f"rv-hook-{uuid.uuid4().hex[:8]}@localhost"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": settings.REDIS_URL,
           "DJANGO_SETTINGS_MODULE": "rapidvalue.settings", "RAPIDVALUE_ALLOW_PRIVATE_TARGETS": "1",
           "RAPIDVALUE_WEBHOOK_LEASE_SECONDS": str(LEASE), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "celery", "-A", "rapidvalue", "worker", "--pool", "solo", "-l", "info",
               "-n", hostname, "--without-gossip", "--without-mingle", "-Q", f"celery,{settings.SYNC_AGENT_QUEUE}"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
    return process, hostname


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_worker_killed_mid_delivery_delivers_exactly_once_to_an_idempotent_receiver(
    world, django_db_blocker, tmp_path, settings
):
    settings.ALLOW_PRIVATE_TARGETS = True
    saved = (app.conf.broker_url, app.conf.result_backend)
    _point_app_at(settings.REDIS_URL, settings.REDIS_URL)
    # The first request hangs long enough for the test to kill the worker that sent it.
    receiver = Receiver(statuses=[200], delay_first=8).start()
    workers: list[subprocess.Popen] = []
    with django_db_blocker.unblock():
        database_url = _database_url_of_test_db()
        with tenant_context(world.acme.tenant):
            subscription = services.create_subscription(url=receiver.url, event_types=["agent.online"]).subscription
        try:
            first, _ = start_worker(database_url, tmp_path / "worker-a.log")
            workers.append(first)
            with tenant_context(world.acme.tenant), transaction.atomic():
                event = emit("agent.online", {"agent": {"id": "a-1", "name": "dc-agent"}})
            # Committed: the on-commit kick reached worker A, which claimed and is now sending.
            receiver.wait_for(1, timeout=30)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            with tenant_context(world.acme.tenant):
                stuck = WebhookDelivery.objects.get(subscription=subscription)
                assert stuck.status == "in_progress" and stuck.attempts == 1
            time.sleep(LEASE + 0.5)
            second, _ = start_worker(database_url, tmp_path / "worker-b.log")
            workers.append(second)
            with tenant_context(world.acme.tenant):
                sweep_webhooks.delay()  # what beat does every 30 s
            received = receiver.wait_for(2, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with tenant_context(world.acme.tenant):
                    final = WebhookDelivery.objects.get(subscription=subscription)
                if final.status == "succeeded":
                    break
                time.sleep(0.2)
            assert final.status == "succeeded" and final.attempts == 2
            event_ids = [r.headers["X-RapidValue-Event-Id"] for r in received]
            assert event_ids == [str(event.id), str(event.id)]  # a duplicate, with the same id
            assert len(set(event_ids)) == 1  # so an idempotent receiver processes it exactly once
        finally:
            for process in workers:
                stop(process)
            receiver.stop()
            _point_app_at(*saved)
            with tenant_context(world.acme.tenant):
                WebhookEvent.objects.filter(deliveries__subscription=subscription).delete()
                subscription.delete()
            connection.set_schema_to_public()


def test_committed_events_are_delivered_by_the_worker_without_any_help(world, django_db_blocker, tmp_path,
                                                                        settings):
    settings.ALLOW_PRIVATE_TARGETS = True
    saved = (app.conf.broker_url, app.conf.result_backend)
    _point_app_at(settings.REDIS_URL, settings.REDIS_URL)
    receiver = Receiver().start()
    process = None
    person = None
    with django_db_blocker.unblock():
        database_url = _database_url_of_test_db()
        with tenant_context(world.acme.tenant):
            created = services.create_subscription(url=receiver.url, event_types=["identity.created"])
        try:
            process, _ = start_worker(database_url, tmp_path / "worker.log")
            from identities.services import create_identity

            with tenant_context(world.acme.tenant), transaction.atomic():
                person = create_identity(external_id=f"hr-worker-{uuid.uuid4().hex[:6]}", first_name="Wanda")
            (received,) = receiver.wait_for(1, timeout=30)
            assert received.json()["data"]["identity"]["id"] == str(person.pk)
        finally:
            if process is not None:
                stop(process)
            receiver.stop()
            _point_app_at(*saved)
            with tenant_context(world.acme.tenant):
                WebhookEvent.objects.filter(deliveries__subscription=created.subscription).delete()
                created.subscription.delete()
                if person is not None:
                    type(person).objects.filter(pk=person.pk).delete()
            connection.set_schema_to_public()
