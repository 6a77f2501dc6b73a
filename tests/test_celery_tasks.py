"""Tenant-aware Celery tasks, run by a real worker process (no eager mode).

The worker is a separate ``celery -A rapidvalue worker`` process on this session's test database
and Redis database. It has its own database connection, so everything it must see is committed
here (``django_db_blocker.unblock()``, no ``db`` fixture) and removed again in ``finally``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tenants.utils import tenant_context
from tenant_schemas_celery.task import TenantTask, headers_with_schema

from rapidvalue.api.models import IdempotencyRecord
from rapidvalue.api.tasks import purge_idempotency_records, purge_idempotency_records_all_tenants
from rapidvalue.celery import app
from rapidvalue.tenancy.models import Tenant

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TASK_TIMEOUT = 30


class Worker:
    def __init__(self, process: subprocess.Popen, log_path: Path, hostname: str):
        self.process = process
        self.log_path = log_path
        self.hostname = hostname

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 80) -> str:
        return "\n--- celery worker log (tail) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def result(self, async_result, timeout: float = TASK_TIMEOUT):
        """The task's return value; on failure or timeout the worker's log is in the message."""
        try:
            return async_result.get(timeout=timeout)
        except Exception as exc:
            pytest.fail(f"task {async_result.id} failed: {exc!r}{self.tail()}")


def _database_url_of_test_db() -> str:
    db = connection.settings_dict
    return "postgres://{}:{}@{}:{}/{}".format(
        quote(db["USER"], safe=""), quote(db["PASSWORD"] or "", safe=""), db["HOST"] or "127.0.0.1",
        db["PORT"] or 5432, quote(db["NAME"], safe=""),
    )


def _point_app_at(broker_url: str, result_backend: str) -> None:
    """Send from this process to these URLs, dropping connections cached for the old ones."""
    app.conf.broker_url = broker_url
    app.conf.result_backend = result_backend
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@pytest.fixture(scope="module")
def worker(request, world, django_db_blocker, tmp_path_factory):
    """A real Celery worker on the test database and this run's Redis database."""
    failures_before = request.session.testsfailed
    saved = (app.conf.broker_url, app.conf.result_backend)
    _point_app_at(settings.REDIS_URL, settings.REDIS_URL)
    hostname = f"rv-test-{uuid.uuid4().hex[:8]}@localhost"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    with django_db_blocker.unblock():
        database_url = _database_url_of_test_db()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "rapidvalue.settings",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "rapidvalue", "worker", "--pool", "solo", "--concurrency", "1",
        "-l", "info", "-n", hostname, "--without-gossip", "--without-mingle",
        "-Q", f"celery,{settings.SYNC_AGENT_QUEUE}",
    ]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    handle = Worker(process, log_path, hostname)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"celery worker exited with {process.returncode} before it was ready{handle.tail()}")
            if app.control.ping(destination=[hostname], timeout=0.5):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"celery worker did not answer ping within 60 s{handle.tail()}")
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        _point_app_at(*saved)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if request.session.testsfailed > failures_before and reporter is not None:
            reporter.write_sep("-", f"celery worker log ({log_path})")
            reporter.write_line(handle.log())


@pytest.fixture
def committed(django_db_blocker):
    """Committed database access for the test body; removes every record the test made."""
    scope = f"celery-test-{uuid.uuid4().hex[:12]}"
    with django_db_blocker.unblock():
        try:
            yield scope
        finally:
            for tenant in Tenant.objects.exclude(schema_name="public"):
                with tenant_context(tenant):
                    IdempotencyRecord.objects.filter(scope=scope).delete()
            connection.set_schema_to_public()


def _record(scope: str, key: str, *, age: timedelta = timedelta(0)) -> IdempotencyRecord:
    """An idempotency record in the current schema, created ``age`` ago (committed)."""
    record = IdempotencyRecord.objects.create(
        scope=scope, key=key, request_hash="0" * 64, method="POST", path="/api/v1/users",
        status_code=201, response_body={"ok": True},
    )
    if age:
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - age)
    return record


def _exists(tenant, pk: int) -> bool:
    with tenant_context(tenant):
        return IdempotencyRecord.objects.filter(pk=pk).exists()


EXPIRED = settings.IDEMPOTENCY_TTL + timedelta(hours=1)


def test_tasks_are_tenant_aware_and_not_eager(world, db):
    """The app sends to a real broker and stamps the sender's schema on every message.

    (This test also uses ``db``: pytest-django creates the test database only when a collected
    test asks for it, and the worker tests below deliberately do not.)
    """
    assert app.conf.task_always_eager is False
    assert purge_idempotency_records.app is app
    for task in (purge_idempotency_records, purge_idempotency_records_all_tenants):
        assert isinstance(task._get_current_object(), TenantTask), type(task)
        assert task.name in app.tasks
    with tenant_context(world.acme.tenant):
        assert headers_with_schema({})["_schema_name"] == "acme"
    assert headers_with_schema({})["_schema_name"] == "public"


def test_worker_runs_the_task_in_the_schema_it_was_sent_from(world, worker, committed):
    acme, globex = world.acme.tenant, world.globex.tenant
    with tenant_context(globex):
        globex_expired = _record(committed, "same-key", age=EXPIRED)
    with tenant_context(acme):
        acme_expired = _record(committed, "same-key", age=EXPIRED)
        acme_fresh = _record(committed, "fresh-key", age=timedelta(hours=23))
        result = purge_idempotency_records.delay()
    assert worker.result(result) == 1, worker.tail()
    assert not _exists(acme, acme_expired.pk), "acme's expired record is purged"
    assert _exists(acme, acme_fresh.pk), "a record inside the 24 h window survives"
    assert _exists(globex, globex_expired.pk), "globex's record is untouched by a task sent from acme"

    # Sent from globex, the same task purges globex's record and nothing in acme.
    with tenant_context(globex):
        result = purge_idempotency_records.delay()
    assert worker.result(result) == 1, worker.tail()
    assert not _exists(globex, globex_expired.pk)
    assert _exists(acme, acme_fresh.pk)


def test_beat_entry_point_fans_out_one_purge_per_active_tenant(world, worker, committed):
    acme, globex = world.acme.tenant, world.globex.tenant
    log_start = len(worker.log())
    expired, fresh = {}, {}
    for tenant in (acme, globex):
        with tenant_context(tenant):
            expired[tenant.slug] = _record(committed, "old", age=EXPIRED)
            fresh[tenant.slug] = _record(committed, "new")
    connection.set_schema_to_public()
    active = Tenant.objects.exclude(schema_name="public").filter(status="active").count()
    assert active >= 2

    # Beat sends from the control plane (public schema): the fan-out itself touches no tenant table.
    fanned_out = worker.result(purge_idempotency_records_all_tenants.delay())
    assert fanned_out == active, worker.tail()

    deadline = time.monotonic() + TASK_TIMEOUT
    while any(_exists(t, expired[t.slug].pk) for t in (acme, globex)):
        if time.monotonic() > deadline:
            left = [t.slug for t in (acme, globex) if _exists(t, expired[t.slug].pk)]
            pytest.fail(f"expired records still present in {left} after {TASK_TIMEOUT} s{worker.tail()}")
        time.sleep(0.2)
    assert all(_exists(t, fresh[t.slug].pk) for t in (acme, globex))

    # Each tenant's purge ran in its own schema: one success per active tenant, none failed, and
    # exactly the two tenants that had an expired record report one deletion each.
    marker = "Task rapidvalue.api.tasks.purge_idempotency_records["
    deadline = time.monotonic() + TASK_TIMEOUT
    while True:
        lines = [line for line in worker.log()[log_start:].splitlines() if marker in line]
        succeeded = [line for line in lines if " succeeded in " in line]
        if len(succeeded) >= active or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(succeeded) == active, (lines, worker.tail())
    assert not [line for line in lines if "raised" in line], worker.tail()
    assert sorted(line.rsplit(":", 1)[1].strip() for line in succeeded) == ["0"] * (active - 2) + ["1", "1"]


def test_beat_schedule_names_tasks_the_worker_has_registered(worker):
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule, "the beat schedule is not empty"
    assert app.conf.beat_schedule == schedule
    registered = app.control.inspect(destination=[worker.hostname], timeout=5).registered() or {}
    assert worker.hostname in registered, (registered, worker.tail())
    worker_tasks = set(registered[worker.hostname])
    app.loader.import_default_modules()  # what a worker or beat does at start-up
    for entry, spec in schedule.items():
        assert spec["task"] in app.tasks, (entry, spec["task"])
        assert spec["task"] in worker_tasks, (entry, spec["task"], sorted(worker_tasks))
        assert spec["schedule"], entry
