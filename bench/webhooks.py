"""Benchmark: webhook deliveries per second to a local receiver, and the delay ``emit`` adds to an API write.

Sets up a tenant ``benchhooks`` (rate limit lifted), a fast receiver in a process of its own
(asyncio, answers 200 at once, counts requests and unique event ids, checks every signature and the
per-subscription order), N subscriptions to ``identity.created`` on it (through the service, so the
secret is encrypted as in production) and Celery workers, then measures:

  (1) throughput: E identities created through ``identities.services.create_identity`` in committed
      transactions (batches); each commit kicks one delivery task per subscription and event. The
      clock runs from the first emit until the receiver has the last of the E x N deliveries (and
      then until every ``WebhookDelivery`` row is ``succeeded``). Then (``--mode both``, the default)
      the same again with the consumers paused while the backlog is written, timing only the drain: the
      delivery capacity, which the live figure hides when the emitter is the slower side.
  (2) write latency: ``POST /api/v1/identities`` over HTTP against gunicorn, K requests each with
      0 subscriptions, with N subscriptions while workers deliver, and with N subscriptions while the
      workers are paused (the write path alone: outbox rows + one broker publish per subscription),
      interleaved in blocks so that machine-load drift hits all series alike.

Run from the repository root (PostgreSQL and Redis running)::

    DATABASE_URL=postgres://rapidvalue:rapidvalue@127.0.0.1:5432/rv_bench_hooks \\
    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/webhooks.py
    ... bench/webhooks.py --events 500 --requests 100      # quick run
    ... bench/webhooks.py --pool prefork                   # one worker, --concurrency 4
    ... bench/webhooks.py --profile                        # plus a per-delivery cost breakdown (in-process)

No beat runs: if deliveries stall (no progress for ``--stall-seconds`` while rows are pending), the
script does what beat does every 30 s (``sweep_webhooks``) and reports it. Figures only mean something
on an otherwise idle machine (the load average is printed). Exit status: 0 when every delivery arrived,
signed and in order, 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rapidvalue.settings")
# This process, the workers and gunicorn share SECRET_KEY: the Fernet key that encrypts the signing
# secrets and the token signing key are derived from it.
os.environ.setdefault("SECRET_KEY", "bench-only-" + "k" * 40)
os.environ["RAPIDVALUE_ALLOW_PRIVATE_TARGETS"] = "1"  # the receiver is on loopback
os.environ.setdefault("RAPIDVALUE_DEBUG", "0")  # no per-query bookkeeping in this process either
os.environ.setdefault("RAPIDVALUE_LOG_LEVEL", "WARNING")

DEFAULT_TENANT = "benchhooks"
ADMIN_EMAIL = "admin@benchhooks.example"
ADMIN_PASSWORD = "benchhooks-Admin-passw0rd"
EVENT = "identity.created"
QUEUE = "celery"  # the default queue every task goes to
DELIVERY_TASK = "rapidvalue.webhooks.tasks.deliver_subscription"


# --------------------------------------------------------------------------------------------
# The receiver: runs as `python bench/webhooks.py --receiver` in a process of its own (no Django)
# --------------------------------------------------------------------------------------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


class ReceiverState:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.pairs: set[tuple[str, str]] = set()  # (path = subscription, event id)
        self.event_ids: set[str] = set()
        self.per_path: Counter[str] = Counter()
        self.duplicates = 0
        self.bad_signatures = 0
        self.unsigned = 0
        self.out_of_order = 0
        self.last: dict[str, tuple[datetime, str]] = {}
        self.first_at: float | None = None
        self.last_new_at: float | None = None

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        now = time.time()
        self.requests += 1
        if self.first_at is None:
            self.first_at = now
        event_id = headers.get("x-rapidvalue-event-id", "")
        key = (path, event_id)
        if key in self.pairs:
            self.duplicates += 1  # a redelivery: same event id, the receiver would ignore it
            return
        self.pairs.add(key)
        self.event_ids.add(event_id)
        self.per_path[path] += 1
        self.last_new_at = now
        secret = self.secrets.get(path)
        if secret is None:
            self.unsigned += 1
        else:
            timestamp = headers.get("x-rapidvalue-timestamp", "")
            mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(f"v1={mac}", headers.get("x-rapidvalue-signature", "")):
                self.bad_signatures += 1
        try:
            envelope = json.loads(body)
            position = (datetime.fromisoformat(envelope["occurred_at"]), envelope["id"])
        except (ValueError, KeyError, TypeError):
            self.out_of_order += 1
            return
        previous = self.last.get(path)
        if previous is not None and position < previous:
            self.out_of_order += 1
        else:
            self.last[path] = position

    def stats(self) -> dict:
        return {
            "requests": self.requests, "unique": len(self.pairs), "event_ids": len(self.event_ids),
            "per_path": dict(self.per_path), "duplicates": self.duplicates, "bad_signatures": self.bad_signatures,
            "unsigned": self.unsigned, "out_of_order": self.out_of_order, "first_at": self.first_at,
            "last_new_at": self.last_new_at,
        }


def _response(status: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


async def _serve(state: ReceiverState) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                if path == "/_stats":
                    writer.write(_response("200 OK", state.stats()))
                elif path == "/_config":
                    state.secrets = json.loads(body)["secrets"]
                    writer.write(_response("200 OK", {"ok": True}))
                elif path == "/_reset":
                    state.reset()
                    writer.write(_response("200 OK", {"ok": True}))
                else:
                    state.record(path, headers, body)
                    writer.write(OK_RESPONSE)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def run_receiver() -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(ReceiverState()))
    return 0


class Receiver:
    """The receiver process, seen from the benchmark."""

    def __init__(self) -> None:
        import httpx

        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--receiver"],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise SystemExit(f"the receiver did not start (said {line!r})")
        self.base = f"http://127.0.0.1:{int(line)}"
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def url(self, index: int) -> str:
        return f"{self.base}/hook/{index}"

    def configure(self, secrets: dict[str, str]) -> None:
        self.client.post("/_config", json={"secrets": secrets}).raise_for_status()

    def reset(self) -> None:
        self.client.post("/_reset").raise_for_status()

    def stats(self) -> dict:
        return self.client.get("/_stats").json()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        _terminate(self.proc)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _terminate(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    from django.conf import settings

    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "rapidvalue.settings",
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": os.environ["SECRET_KEY"],
        "RAPIDVALUE_ALLOW_PRIVATE_TARGETS": "1",
        "RAPIDVALUE_DEBUG": "0",
        "RAPIDVALUE_LOG_LEVEL": "WARNING",
        "RAPIDVALUE_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass
class Workers:
    procs: list[subprocess.Popen] = field(default_factory=list)
    hostnames: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    description: str = ""

    def start(self, count: int, pool: str, concurrency: int, log_dir: Path) -> None:
        from rapidvalue.celery import app

        tag = uuid.uuid4().hex[:6]
        if pool == "prefork":
            plans = [["--pool", "prefork", "--concurrency", str(concurrency)]]
            self.description = (f"1 celery worker --pool prefork --concurrency {concurrency} "
                                f"({concurrency + 1} processes)")
        else:
            plans = [["--pool", "solo"]] * count
            self.description = f"{count} celery workers --pool solo ({count} processes)"
        for index, pool_args in enumerate(plans):
            hostname = f"bench{index}-{tag}@localhost"
            log = log_dir / f"worker-{index}.log"
            command = [sys.executable, "-m", "celery", "-A", "rapidvalue", "worker", *pool_args, "-l", "warning",
                       "-n", hostname, "--without-gossip", "--without-mingle"]
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=out,
                                                   stderr=subprocess.STDOUT))
            self.hostnames.append(hostname)
            self.logs.append(log)
        deadline = time.monotonic() + 90
        answered: set[str] = set()
        while len(answered) < len(self.hostnames):
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise SystemExit(f"a worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not answer ping within 90 s (answered: {sorted(answered)})")
            for reply in app.control.ping(destination=self.hostnames, timeout=1.0):
                answered.update(reply)

    def pause(self) -> None:
        """Stop consuming (tasks pile up in the queue); replies once every worker has done so."""
        from rapidvalue.celery import app

        replies = app.control.cancel_consumer(QUEUE, destination=self.hostnames, reply=True, timeout=10)
        if len(replies) < len(self.hostnames):
            raise SystemExit(f"pause: only {len(replies)} of {len(self.hostnames)} workers replied")

    def resume(self) -> None:
        from rapidvalue.celery import app

        replies = app.control.add_consumer(QUEUE, destination=self.hostnames, reply=True, timeout=10)
        if len(replies) < len(self.hostnames):
            raise SystemExit(f"resume: only {len(replies)} of {len(self.hostnames)} workers replied")

    def tasks_done(self) -> int:
        """Delivery tasks executed so far, summed over the workers (from `inspect stats`)."""
        from rapidvalue.celery import app

        stats = app.control.inspect(destination=self.hostnames, timeout=5).stats() or {}
        return sum(s.get("total", {}).get(DELIVERY_TASK, 0) for s in stats.values())

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"a worker died with {proc.returncode}:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # warm shutdown: finishes the task at hand
        for proc in self.procs:
            _terminate(proc)


def start_gunicorn(port: int, workers: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "rapidvalue.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--log-level", "warning", "--timeout", "120"]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(client, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(Exception):  # not listening yet
            if client.get("/health").status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer /health within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


def redis_client():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


# --------------------------------------------------------------------------------------------
# Tenant, subscriptions, events
# --------------------------------------------------------------------------------------------


def prepare_tenant(slug: str):
    from django.db import connection

    from rapidvalue.tenancy.models import Tenant, schema_name_for
    from rapidvalue.tenancy.services import delete_tenant, provision_tenant

    connection.set_schema_to_public()
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is not None:
        delete_tenant(tenant)
        print(f"deleted the previous tenant '{slug}'")
    schema = schema_name_for(slug)
    with connection.cursor() as cursor:  # leftovers of an interrupted run: a schema without tenant
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if cursor.fetchone():
            cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # migrate_schemas prints every migration
        result = provision_tenant(slug, name="Webhook benchmark", admin_email=ADMIN_EMAIL,
                                  admin_password=ADMIN_PASSWORD)
    tenant = result.tenant
    Tenant.objects.filter(pk=tenant.pk).update(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000)
    tenant.refresh_from_db()
    print(f"provisioned tenant '{slug}' (schema {tenant.schema_name}, rate limit 1,000,000/s) "
          f"in {time.perf_counter() - started:.1f} s")
    return tenant


def create_subscriptions(tenant, receiver: Receiver, count: int) -> tuple[list, dict[str, str]]:
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks import services

    subscriptions, secrets = [], {}
    with tenant_context(tenant):
        for index in range(count):
            created = services.create_subscription(url=receiver.url(index), event_types=[EVENT],
                                                   description=f"bench receiver {index}", created_by="bench")
            subscriptions.append(created.subscription)
            secrets[f"/hook/{index}"] = created.secret
    return subscriptions, secrets


def set_subscriptions_enabled(tenant, enabled: bool) -> None:
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks.models import WebhookSubscription

    with tenant_context(tenant):
        WebhookSubscription.objects.exclude(description__startswith="bench profile").update(enabled=enabled)


def clear_outbox(tenant) -> None:
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks.models import WebhookEvent

    with tenant_context(tenant):
        WebhookEvent.objects.all().delete()  # deliveries cascade


def delivery_counts(tenant) -> dict[str, int]:
    from django.db.models import Count
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks.models import WebhookDelivery

    with tenant_context(tenant):
        rows = WebhookDelivery.objects.order_by().values("status").annotate(n=Count("id"))
        return {row["status"]: row["n"] for row in rows}


def delivery_summary(tenant) -> dict:
    from django.db.models import Count, Max, Sum
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks.models import WebhookDelivery

    with tenant_context(tenant):
        agg = WebhookDelivery.objects.aggregate(n=Count("id"), total_attempts=Sum("attempts"),
                                                max_attempts=Max("attempts"))
        errors = list(WebhookDelivery.objects.exclude(last_error="").values_list("last_error", flat=True)[:3])
    return {**agg, "errors": errors}


def emit_identities(tenant, count: int, batch: int, prefix: str) -> tuple[float, float]:
    """Create ``count`` identities (each emits identity.created); returns (start, end) wall-clock times."""
    from django.db import transaction
    from django_tenants.utils import tenant_context

    from identities.services import create_identity

    started = time.time()
    with tenant_context(tenant):
        for first in range(0, count, batch):
            with transaction.atomic():  # commit = the outbox rows are final and the delivery tasks are kicked
                for index in range(first, min(count, first + batch)):
                    create_identity(external_id=f"{prefix}-{index:07d}", first_name="Bench",
                                    last_name=f"Joiner {index}", email=f"{prefix}-{index}@benchhooks.example",
                                    department="Benchmarks")
    return started, time.time()


@dataclass
class Delivered:
    complete: bool
    stats: dict
    counts: dict[str, int]
    db_done_at: float | None
    sweeps: int = 0
    stalls: list[str] = field(default_factory=list)


def wait_delivered(tenant, receiver: Receiver, workers: Workers, expected: int, timeout: float,
                   stall_seconds: float) -> Delivered:
    """Poll until the receiver has ``expected`` unique deliveries and every row is ``succeeded``."""
    from django_tenants.utils import tenant_context

    from rapidvalue.webhooks.tasks import sweep_webhooks

    deadline = time.monotonic() + timeout
    last_progress, last_unique, sweeps, stalls = time.monotonic(), -1, 0, []
    counts: dict[str, int] = {}
    stats = receiver.stats()
    while time.monotonic() < deadline:
        stats = receiver.stats()
        if stats["unique"] >= expected:
            counts = delivery_counts(tenant)
            if counts.get("succeeded", 0) >= expected:
                return Delivered(True, stats, counts, time.time(), sweeps, stalls)
        if stats["unique"] != last_unique:
            last_unique, last_progress = stats["unique"], time.monotonic()
        elif time.monotonic() - last_progress > stall_seconds:
            workers.check_alive()
            counts = delivery_counts(tenant)
            queued = redis_client().llen(QUEUE)
            stalls.append(f"no progress for {stall_seconds:.0f} s at {stats['unique']}/{expected} received; "
                          f"rows by status {counts}; {queued} task(s) in the queue")
            print(f"  STALL: {stalls[-1]}; running sweep_webhooks (what beat does every 30 s)", flush=True)
            with tenant_context(tenant):
                sweep_webhooks.delay()
            sweeps += 1
            last_progress = time.monotonic()
        time.sleep(0.1)
    return Delivered(False, stats, delivery_counts(tenant), None, sweeps, stalls)


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    mode: str
    events: int
    subscriptions: int
    deliveries: int
    emit_seconds: float
    elapsed: float  # start -> last unique delivery at the receiver
    elapsed_db: float | None  # start -> every row succeeded (as polled)
    tasks: int
    delivered: Delivered
    summary: dict
    queued_at_end: int  # delivery tasks still in the queue when everything had been delivered
    leftover_seconds: float  # how long the workers then spent on those (no-op) tasks

    @property
    def rate(self) -> float:
        return self.deliveries / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        s = self.delivered.stats
        return (self.delivered.complete and s["bad_signatures"] == 0 and s["out_of_order"] == 0
                and s["unsigned"] == 0 and self.delivered.counts.get("failed", 0) == 0)


def measure_throughput(args, tenant, receiver: Receiver, workers: Workers, mode: str, round_no: int) -> Throughput:
    clear_outbox(tenant)
    receiver.reset()
    expected = args.events * args.subscriptions
    tasks_before = workers.tasks_done()
    prefix = f"tp{round_no}-{mode}-{uuid.uuid4().hex[:6]}"
    print(f"throughput ({mode}): emitting {args.events:,} identity.created in batches of {args.batch} "
          f"-> {expected:,} deliveries ...", flush=True)
    if mode == "backlog":
        workers.pause()
        emit_start, emit_end = emit_identities(tenant, args.events, args.batch, prefix)
        print(f"  backlog written in {emit_end - emit_start:.1f} s ({redis_client().llen(QUEUE):,} tasks queued); "
              "resuming the workers", flush=True)
        start = time.time()
        workers.resume()
    else:
        emit_start, emit_end = emit_identities(tenant, args.events, args.batch, prefix)
        start = emit_start
        print(f"  emitted in {emit_end - emit_start:.1f} s ({args.events / (emit_end - emit_start):.0f} events/s); "
              "waiting for the deliveries ...", flush=True)
    delivered = wait_delivered(tenant, receiver, workers, expected, args.timeout, args.stall_seconds)
    last = delivered.stats["last_new_at"] or time.time()
    elapsed_db = (delivered.db_done_at - start) if delivered.db_done_at else None
    # Tasks still queued now have nothing left to deliver; let the workers eat them before the next series.
    queued_at_end = redis_client().llen(QUEUE)
    drain_started = time.monotonic()
    while redis_client().llen(QUEUE) and time.monotonic() - drain_started < args.timeout:
        time.sleep(0.1)
    time.sleep(0.5)  # the last task being executed
    result = Throughput(mode, args.events, args.subscriptions, expected, emit_end - emit_start, last - start,
                        elapsed_db, workers.tasks_done() - tasks_before, delivered, delivery_summary(tenant),
                        queued_at_end, time.monotonic() - drain_started)
    print(f"  {'done' if delivered.complete else 'INCOMPLETE'}: {delivered.stats['unique']:,}/{expected:,} in "
          f"{result.elapsed:.1f} s = {result.rate:.0f} deliveries/s", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Write latency over HTTP
# --------------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)  # linear interpolation between closest ranks
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class CheckFailed(Exception):
    pass


def wait_idle(tenant, timeout: float = 300) -> None:
    """Every delivery row succeeded and no task left in the queue (the workers idle, CPUs free)."""
    deadline = time.monotonic() + timeout
    redis = redis_client()
    while time.monotonic() < deadline:
        counts = delivery_counts(tenant)
        if not any(n for status, n in counts.items() if status != "succeeded") and not redis.llen(QUEUE):
            time.sleep(0.3)  # the task at hand in each worker
            return
        time.sleep(0.05)
    raise CheckFailed(f"deliveries of the latency series did not drain in {timeout:.0f} s: {counts}")


def measure_latency(args, tenant, subscriptions, workers: Workers, log_dir: Path) -> tuple[dict, int, int]:
    import httpx

    clear_outbox(tenant)
    port = free_port()
    log_path = log_dir / "gunicorn.log"
    proc = start_gunicorn(port, args.gunicorn_workers, log_path)
    n_subs = len(subscriptions)
    labels = {
        "off": "0 subscriptions",
        "live": f"{n_subs} subscriptions, workers delivering",
        "paused": f"{n_subs} subscriptions, workers paused (write path only)",
    }
    series: dict[str, list[float]] = {key: [] for key in labels}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_healthy(client, proc, log_path)
            response = client.post("/api/v1/auth/login",
                                   json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "tenant": tenant.slug})
            if response.status_code != 200:
                raise CheckFailed(f"login failed: {response.status_code} {response.text[:300]}")
            headers = {"Authorization": f"Bearer {response.json()['access']}"}
            run = uuid.uuid4().hex[:6]
            counter = iter(range(10**9))

            def post(key: str | None) -> None:
                n = next(counter)
                body = {"external_id": f"lat-{run}-{n:06d}", "first_name": "Latency", "last_name": f"Probe {n}",
                        "email": f"lat-{run}-{n}@benchhooks.example", "department": "Benchmarks"}
                t0 = time.perf_counter()
                r = client.post("/api/v1/identities", json=body, headers=headers)
                elapsed = (time.perf_counter() - t0) * 1000
                if r.status_code != 201:
                    raise CheckFailed(f"POST /api/v1/identities answered {r.status_code}: {r.text[:300]}")
                if key is not None:
                    series[key].append(elapsed)

            print(f"write latency: {args.warmup} warm-up, then {args.requests} POST /api/v1/identities per series, "
                  f"interleaved in blocks of {args.block} ...", flush=True)
            set_subscriptions_enabled(tenant, True)
            for _ in range(args.warmup):  # both paths warm in each gunicorn worker
                post(None)
            set_subscriptions_enabled(tenant, False)
            for _ in range(args.warmup):
                post(None)
            wait_idle(tenant)
            done = 0
            while done < args.requests:  # each block starts with the workers idle
                n = min(args.block, args.requests - done)
                set_subscriptions_enabled(tenant, False)
                for _ in range(n):
                    post("off")
                set_subscriptions_enabled(tenant, True)
                for _ in range(n):
                    post("live")  # the workers deliver meanwhile, on the same CPUs
                wait_idle(tenant)
                workers.pause()
                for _ in range(n):
                    post("paused")  # outbox rows + a broker publish per subscription, nothing delivered yet
                workers.resume()
                wait_idle(tenant)
                done += n
            delivered = delivery_counts(tenant).get("succeeded", 0)
            expected = (args.warmup + len(series["live"]) + len(series["paused"])) * n_subs
    finally:
        _terminate(proc)
    return {labels[k]: v for k, v in series.items()}, delivered, expected


# --------------------------------------------------------------------------------------------
# Where a delivery's time goes (in-process, --profile)
# --------------------------------------------------------------------------------------------


def profile_delivery(tenant, receiver: Receiver, count: int) -> None:
    """Time the parts of ``deliver_due`` for ``count`` deliveries of a subscription no worker is told about."""
    import ssl

    import certifi
    import httpx
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from rapidvalue import crypto, outbound
    from rapidvalue.webhooks import delivery, services
    from rapidvalue.webhooks.models import WebhookDelivery, WebhookEvent, WebhookSubscription
    from rapidvalue.webhooks.tasks import deliver_subscription

    print(f"\nprofile: {count} deliveries run in this process, one subscription, timed by part", flush=True)
    with tenant_context(tenant):
        created = services.create_subscription(url=f"{receiver.base}/hook/profile", event_types=["agent.online"],
                                               description="bench profile (never kicked)")
        sub = created.subscription
        WebhookSubscription.objects.filter(pk=sub.pk).update(enabled=False)  # no emit() will pick it
        base = timezone.now()
        events = WebhookEvent.objects.bulk_create(
            WebhookEvent(type="agent.online", payload={"agent": {"id": f"a-{i}", "name": "bench"}},
                         occurred_at=base + timedelta(microseconds=i)) for i in range(count))
        WebhookDelivery.objects.bulk_create(
            WebhookDelivery(subscription=sub, event=e, event_time=e.occurred_at) for e in events)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE webhooks_webhookdelivery")
        with transaction.atomic(), connection.cursor() as cursor:  # EXPLAIN ANALYZE runs the UPDATE: roll back
            now = timezone.now()
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + delivery._CLAIM_SQL,
                           {"subscription": sub.pk, "lease": now + timedelta(seconds=60), "now": now})
            plan = [row[0] for row in cursor.fetchall()]
            transaction.set_rollback(True)
        print(f"  claim query head ({count} pending rows in the queue):")
        for line in plan:
            print(f"    {line}")

        spent: Counter[str] = Counter()
        originals = {}

        def timed(owner, name, label):
            original = getattr(owner, name)
            originals[(owner, name)] = original

            def wrapper(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return original(*a, **kw)
                finally:
                    spent[label] += time.perf_counter() - t0
            setattr(owner, name, wrapper)

        timed(delivery, "claim_next", "claim (UPDATE ... RETURNING + SELECT event, subscription)")
        timed(crypto, "decrypt", "decrypt the signing secret (Fernet)")
        timed(delivery, "envelope", "build the envelope")
        timed(outbound, "post", "outbound.post (new httpx.Client + POST + close)")
        timed(delivery, "record", "record (UPDATE + refresh_from_db)")
        try:
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                made = 0
                while made < count:
                    step = delivery.deliver_due(sub.pk, limit=count - made)
                    if step == 0:
                        break
                    made += step
                total = time.perf_counter() - t0
        finally:
            for (owner, name), original in originals.items():
                setattr(owner, name, original)
        ok = WebhookDelivery.objects.filter(subscription=sub, status="succeeded").count()
        print(f"  {made} attempts, {ok} succeeded in {total:.2f} s = {made / total:.0f}/s in one process "
              f"({total / made * 1000:.2f} ms each, {len(queries) / made:.1f} SQL statements each)")
        for label, seconds in spent.most_common():
            print(f"    {seconds / made * 1000:7.2f} ms  {label}")
        accounted = sum(spent.values())
        print(f"    {(total - accounted) / made * 1000:7.2f} ms  the rest (json, signing, headers, loop)")

        # Alternatives, measured against the same receiver.
        url = f"{receiver.base}/hook/profile-alt"
        body = b'{"x":1}'
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            with httpx.Client(timeout=outbound.DEFAULT_TIMEOUT, follow_redirects=False) as client:
                client.post(url, content=body)
        fresh = (time.perf_counter() - t0) / n * 1000
        with httpx.Client(timeout=outbound.DEFAULT_TIMEOUT, follow_redirects=False) as client:
            client.post(url, content=body)
            t0 = time.perf_counter()
            for _ in range(n):
                client.post(url, content=body)
            shared = (time.perf_counter() - t0) / n * 1000
        t0 = time.perf_counter()
        for _ in range(n):
            httpx.Client(timeout=outbound.DEFAULT_TIMEOUT).close()
        construct = (time.perf_counter() - t0) / n * 1000
        ssl_context = ssl.create_default_context(cafile=certifi.where())  # what httpx builds for every Client()
        t0 = time.perf_counter()
        for _ in range(n):
            with httpx.Client(timeout=outbound.DEFAULT_TIMEOUT, follow_redirects=False, verify=ssl_context) as client:
                client.post(url, content=body)
        fresh_shared_ssl = (time.perf_counter() - t0) / n * 1000
        secret = sub.secret_encrypted
        t0 = time.perf_counter()
        for _ in range(n):
            crypto.decrypt(secret)
        decrypt = (time.perf_counter() - t0) / n * 1000
        t0 = time.perf_counter()
        for _ in range(n):
            deliver_subscription.delay(str(uuid.uuid4()))  # unknown id: a worker answers 0 at once
        enqueue = (time.perf_counter() - t0) / n * 1000
        print(f"  POST with a new httpx.Client each time (as outbound.post does): {fresh:.2f} ms; constructing+closing "
              f"a client alone: {construct:.2f} ms (it builds an SSL context from the certifi bundle, even for http)")
        print(f"  POST with a new httpx.Client given one prebuilt SSL context: {fresh_shared_ssl:.2f} ms; with one "
              f"kept-alive client: {shared:.2f} ms")
        print(f"  crypto.decrypt: {decrypt:.3f} ms; deliver_subscription.delay() (one broker publish, "
              f"paid on commit per subscription): {enqueue:.2f} ms")
        WebhookEvent.objects.filter(deliveries__subscription=sub).delete()
        sub.delete()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="identity.created events emitted (default 2000).")
    parser.add_argument("--subscriptions", type=int, default=4, help="subscriptions on the receiver (default 4).")
    parser.add_argument("--requests", type=int, default=300, help="POSTs per latency series (default 300).")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up POSTs per path (default 20).")
    parser.add_argument("--block", type=int, default=25, help="latency series interleave in blocks of this size.")
    parser.add_argument("--batch", type=int, default=50, help="identities per committed transaction (default 50).")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4).")
    parser.add_argument("--pool", choices=["solo", "prefork"], default="solo",
                        help="solo: --workers separate worker processes (default); prefork: one worker with "
                             "--concurrency --workers.")
    parser.add_argument("--mode", choices=["live", "backlog", "both"], default="both",
                        help="live: workers deliver while events are emitted; backlog: emit with the workers "
                             "paused, then time the drain (the delivery capacity); both (default).")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all deliveries.")
    parser.add_argument("--stall-seconds", type=float, default=10,
                        help="run the sweeper after this long without progress (default 10).")
    parser.add_argument("--tenant", default=DEFAULT_TENANT)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also break a delivery's cost down (in-process).")
    parser.add_argument("--profile-deliveries", type=int, default=300)
    parser.add_argument("--no-migrate", action="store_true", help="skip migrate_schemas.")
    parser.add_argument("--keep", action="store_true", help="keep the tenant afterwards.")
    return parser.parse_args(argv)


def machine_info() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    redis_version = redis_client().info("server").get("redis_version", "?")
    return (f"machine: nproc={nproc} ({cpu or platform.machine()}), Python {platform.python_version()}, "
            f"PostgreSQL {pg_version}, Redis {redis_version}, {platform.system()} {platform.release()}")


def print_throughput(result: Throughput) -> None:
    d, s = result.delivered, result.delivered.stats
    failed = d.counts.get("failed", 0)
    not_done = sum(n for status, n in d.counts.items() if status != "succeeded")
    print(f"throughput ({result.mode}): {result.events:,} events x {result.subscriptions} subscriptions = "
          f"{result.deliveries:,} deliveries in {result.elapsed:.2f} s -> {result.rate:.0f} deliveries/s"
          + ("" if d.complete else "  INCOMPLETE"))
    if result.mode == "live":
        lag = result.elapsed - result.emit_seconds
        print(f"  emitting took {result.emit_seconds:.2f} s ({result.events / result.emit_seconds:.0f} events/s, "
              "in this process, competing for the CPUs); clock = first emit -> last delivery at the receiver")
        print(f"  the last delivery came {lag:.2f} s after the last commit"
              + ("  => the emitter was the bottleneck (the workers kept up); see the backlog figure for the "
                 "delivery capacity" if lag < 0.05 * result.elapsed + 1 else ""))
    else:
        print(f"  backlog written beforehand in {result.emit_seconds:.2f} s; clock = resume -> last delivery")
    if result.elapsed_db is not None:
        print(f"  every WebhookDelivery row 'succeeded' after {result.elapsed_db:.2f} s (as polled every 0.1 s)")
    print(f"  receiver: {s['requests']:,} requests, {s['unique']:,} unique (subscription, event), "
          f"{s['event_ids']:,} distinct event ids, {s['duplicates']} duplicates, {s['bad_signatures']} bad "
          f"signatures, {s['out_of_order']} out of order; per subscription {sorted(s['per_path'].values())}")
    print(f"  rows by status {d.counts}; attempts {result.summary['total_attempts']} for "
          f"{result.summary['n']} deliveries "
          f"(max {result.summary['max_attempts']} on one); failed: {failed}; not succeeded: {not_done}"
          + (f"; errors e.g. {result.summary['errors']}" if result.summary["errors"] else ""))
    print(f"  delivery tasks executed: {result.tasks:,} for {result.deliveries:,} deliveries (one kicked per event "
          f"and subscription; each drains up to 100 in order); {result.queued_at_end:,} were still "
          f"queued when the last delivery was in, with nothing left to do (eaten in {result.leftover_seconds:.1f} s "
          f"more, after the clock); sweeps needed: {d.sweeps}")
    for stall in d.stalls:
        print(f"  STALL: {stall}")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--receiver"]:
        return run_receiver()
    args = parse_args(argv)

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("rapidvalue.tenancy").setLevel(logging.WARNING)
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from rapidvalue.celery import app

    if not settings.ALLOW_PRIVATE_TARGETS:
        raise SystemExit("RAPIDVALUE_ALLOW_PRIVATE_TARGETS=1 did not take effect")
    print(f"database {connection.settings_dict['NAME']} on {connection.settings_dict['HOST']}, "
          f"broker {settings.REDIS_URL}")
    if not args.no_migrate:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            call_command("migrate_schemas", "--noinput", verbosity=0)
        print(f"migrate_schemas: {time.perf_counter() - started:.1f} s")
    app.control.purge()  # tasks left in the queue by an interrupted run

    tenant = prepare_tenant(args.tenant)
    log_dir = Path(tempfile.mkdtemp(prefix="rv-bench-hooks-"))
    receiver: Receiver | None = None
    workers = Workers()
    throughput: list[Throughput] = []
    latency: dict[str, list[float]] = {}
    latency_delivered = latency_expected = 0
    status = 0
    try:
        receiver = Receiver()
        subscriptions, secrets = create_subscriptions(tenant, receiver, args.subscriptions)
        receiver.configure(secrets)
        print(f"receiver {receiver.base} (asyncio, own process); {len(subscriptions)} subscriptions to {EVENT}")
        started = time.perf_counter()
        workers.start(args.workers, args.pool, args.workers, log_dir)
        print(f"workers: {workers.description}, answered ping in {time.perf_counter() - started:.1f} s")

        load_before = os.getloadavg()
        if not args.skip_throughput:
            modes = ["live", "backlog"] if args.mode == "both" else [args.mode]
            for round_no, mode in enumerate(modes):
                throughput.append(measure_throughput(args, tenant, receiver, workers, mode, round_no))
        load_mid = os.getloadavg()
        if not args.skip_latency:
            latency, latency_delivered, latency_expected = measure_latency(args, tenant, subscriptions, workers,
                                                                           log_dir)
        load_after = os.getloadavg()
        if args.profile:
            workers.stop()  # the CPUs to ourselves
            profile_delivery(tenant, receiver, args.profile_deliveries)

        print()
        print(machine_info())
        print(f"load average (1 min) before / after throughput / after latency: {load_before[0]:.2f} / "
              f"{load_mid[0]:.2f} / {load_after[0]:.2f} (this benchmark alone runs ~8 busy processes; a load "
              f"above 1.0 before it started means other work shared the CPUs)")
        print(f"workers: {workers.description}, prefetch multiplier {settings.CELERY_WORKER_PREFETCH_MULTIPLIER}, "
              f"acks_late {settings.CELERY_TASK_ACKS_LATE}; receiver: asyncio, own process, answers 200 at once")
        for result in throughput:
            print_throughput(result)
            if not result.ok:
                status = 2
        if latency:
            print(f"write latency, POST /api/v1/identities over HTTP (gunicorn {args.gunicorn_workers} sync workers, "
                  "RAPIDVALUE_DEBUG=0, one keep-alive client, sequential):")
            print(f"  {'series':<58} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
            for label, values in latency.items():
                print(f"  {label:<58} {len(values):>4} {quantile(values, 0.5):>6.1f}ms {quantile(values, 0.95):>6.1f}ms"
                      f" {quantile(values, 0.99):>6.1f}ms {max(values):>6.1f}ms")
            base, *others = latency.items()
            for label, values in others:
                diffs = [quantile(values, q) - quantile(base[1], q) for q in (0.5, 0.95, 0.99)]
                print(f"  emit overhead, {label} - {base[0]}: p50 {diffs[0]:+.1f} ms, p95 {diffs[1]:+.1f} ms, "
                      f"p99 {diffs[2]:+.1f} ms")
            print(f"  deliveries caused by the latency series (warm-up included): "
                  f"{latency_delivered}/{latency_expected} succeeded")
            if latency_delivered != latency_expected:
                status = 2
        return status
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 2
    finally:
        workers.stop()
        if receiver is not None:
            receiver.stop()
        with contextlib.suppress(Exception):
            app.control.purge()
            client = redis_client()
            for key in client.scan_iter("celery-task-meta-*", count=1000):
                client.delete(key)
        if not args.keep:
            from rapidvalue.tenancy.services import delete_tenant

            connection.set_schema_to_public()
            tenant.refresh_from_db()
            delete_tenant(tenant)
            print(f"deleted tenant '{tenant.slug}' (--keep keeps it); worker and gunicorn logs in {log_dir}")


if __name__ == "__main__":
    sys.exit(main())
