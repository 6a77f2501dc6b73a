"""Benchmark: a full sync of a synthetic HR source, a 1% resync, and a raw COPY of the same rows.

Sets up a tenant ``benchsync`` with one authoritative synthetic connector (100,000 people, 2,000
groups, 10 grants per person: 100k identities, 100k accounts, 2k entitlements, 1M grants), then:

  (1) full sync: ``start_sync`` queues the run (the Celery enqueue is intercepted), and a worker
      process of its own (``python bench/sync.py --worker ...``, a fresh interpreter, so its peak RSS
      is the worker's alone) runs ``connectors.sync.runner.execute(run_id)`` in the tenant schema;
  (2) raw COPY: the same rows (the connector's own output, turned into the final tuples with ids,
      manager links and paths resolved) are rendered to files first, then only the ``COPY`` into
      scratch tables of the same column types is timed (plain tables, and for reference the same with
      the real tables' indexes);
  (3) resync with 1% changed: the connector is the ``synthetic-bench`` type registered here, which
      for every 100th person changes department and title, drops one grant and (every other one)
      adds one; a second full (non-incremental) run in a fresh worker.

Prints wall time, rows merged per second, the worker's peak RSS, the run's counts, a breakdown of
where the worker spent its time (Python phases and SQL statements), and a PASS/FAIL table against
the targets: full sync within 5x the raw COPY, the 1% resync under 15 s, worker memory under 1 GB.

Run from the repository root (PostgreSQL and Redis running)::

    DATABASE_URL=postgres://rapidvalue:rapidvalue@127.0.0.1:5432/rv_bench_sync \\
    REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python bench/sync.py
    ... bench/sync.py --scale 0.05        # quick run (5k people, 100 groups, 50k grants)
    ... bench/sync.py --profile resync    # cProfile the worker of that run (slower; figures then indicative)
    ... bench/sync.py --keep              # keep the tenant afterwards

Exit status: 0 when every target is met, 1 when one is missed, 2 when a run failed or its counts
are not the expected ones. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rapidvalue.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-" + "k" * 40)  # the worker decrypts what this process encrypted
os.environ.setdefault("RAPIDVALUE_DEBUG", "0")  # a production worker: no per-query bookkeeping
os.environ.setdefault("RAPIDVALUE_LOG_LEVEL", "WARNING")

DEFAULT_TENANT = "benchsync"
ADMIN_EMAIL = "admin@benchsync.example"
BENCH_TYPE = "synthetic-bench"
CONNECTOR_NAME = "Synthetic HR (bench)"
FULL_PEOPLE = 100_000
FULL_GROUPS = 2_000
RESULT_MARK = "BENCH-SYNC-RESULT "
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# The bench connector: the synthetic source, with 1 person in N changed
# --------------------------------------------------------------------------------------------


def register_bench_connector() -> None:
    """Register ``synthetic-bench``: SyntheticConnector plus ``config.bench_change_every``.

    With ``bench_change_every = N`` (0: nothing changes) every person whose index is N // 2 modulo N
    gets another department and title, loses their first group, and every other such person joins a
    group they were not in. Called in this process and in the worker (same module, same class).
    """
    from connectors.base import _registry, register
    from connectors.builtin.synthetic import DEPARTMENTS, SyntheticConnector
    from connectors.protocol.v1 import RemoteGrant

    if BENCH_TYPE in _registry:
        return

    class BenchSyntheticConnector(SyntheticConnector):
        type = BENCH_TYPE

        def sync(self, request):
            response = super().sync(request)
            every = int(request.config.get("bench_change_every") or 0)
            if not every or not response.identities:
                return response
            groups = request.config.get("groups", max(10, request.config["people"] // 50))
            per_person = min(request.config.get("grants_per_person", 10), groups)
            first = int(request.cursor or 0)
            if len(response.grants) != per_person * len(response.identities):
                raise AssertionError("synthetic grants are no longer per_person per person, in order")
            grants = []
            for offset, identity in enumerate(response.identities):
                index = first + offset
                mine = response.grants[offset * per_person:(offset + 1) * per_person]
                if index % every != every // 2:
                    grants.extend(mine)
                    continue
                identity.department = DEPARTMENTS[(index + 3) % len(DEPARTMENTS)]
                identity.title = f"Senior {identity.title}"
                held = {g.entitlement_value for g in mine}
                grants.extend(mine[1:])  # the first group is gone
                if (index // every) % 2 == 0:
                    new = next(f"grp-{g % groups:05d}" for g in range(index, index + groups + 1)
                               if f"grp-{g % groups:05d}" not in held)
                    grants.append(RemoteGrant(entitlement_value=new, account_native_id=mine[0].account_native_id))
            response.grants = grants
            return response

    register(BenchSyntheticConnector)


def changed_people(people: int, every: int) -> tuple[int, int]:
    """(people changed, grants added) for ``bench_change_every = every``."""
    changed = [i for i in range(every // 2, people, every)]
    return len(changed), sum(1 for i in changed if (i // every) % 2 == 0)


# --------------------------------------------------------------------------------------------
# The worker: `python bench/sync.py --worker --schema S --run R` (a fresh interpreter)
# --------------------------------------------------------------------------------------------


class Recorder:
    """Inclusive wall time and calls per labelled function, and per SQL statement."""

    def __init__(self):
        self.phases: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self.sql: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def wrap(self, owner, attr: str, label, first_arg: bool = False):
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                name = label.format(args[0]) if first_arg else label
                record = self.phases[name]
                record[0] += time.perf_counter() - started
                record[1] += 1

        setattr(owner, attr, timed)

    def sql_wrapper(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            record = self.sql[statement_label(sql)]
            record[0] += time.perf_counter() - started
            record[1] += 1


def statement_label(sql: str) -> str:
    text = re.sub(r"--[^\n]*", " ", sql)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:110]


def instrument(recorder: Recorder) -> None:
    from connectors.dispatcher import ConnectorDispatcher
    from connectors.sync import engine, runner
    from identities import lifecycle

    recorder.wrap(ConnectorDispatcher, "sync", "connector.sync (generate chunk)")
    recorder.wrap(engine, "stage", "engine.stage (staging rows, in the fetch thread)")
    recorder.wrap(engine, "merge_chunk", "engine.merge_chunk")
    recorder.wrap(engine, "_merge_identities", "  _merge_identities")
    recorder.wrap(engine, "_identity_events", "    _identity_events (joiner/mover/leaver + webhooks)")
    recorder.wrap(lifecycle, "raise_events_bulk", "      lifecycle.raise_events_bulk")
    recorder.wrap(engine, "emit_many", "      webhooks emit_many")
    recorder.wrap(engine, "_merge_entitlements", "  _merge_entitlements")
    recorder.wrap(engine, "_merge_accounts", "  _merge_accounts")
    recorder.wrap(engine, "_merge_grants", "  _merge_grants")
    recorder.wrap(engine, "_copy", "    COPY into {}", first_arg=True)
    recorder.wrap(engine, "link_managers", "  link_managers")
    recorder.wrap(engine, "finish", "engine.finish")
    recorder.wrap(engine, "rebuild_paths", "  rebuild_paths")
    recorder.wrap(runner.callbacks, "send_progress", "callbacks.send_progress")


def worker_main(args: argparse.Namespace) -> int:
    import django

    django.setup()
    register_bench_connector()
    from django.db import connection
    from django_tenants.utils import get_tenant_model, tenant_context

    from connectors.sync import runner

    recorder = Recorder()
    instrument(recorder)
    tenant = get_tenant_model().objects.get(schema_name=args.schema)
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
    with tenant_context(tenant), connection.execute_wrapper(recorder.sql_wrapper):
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        status = runner.execute(args.run)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
    if profiler:
        profiler.dump_stats(args.profile_out)
    hwm_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    result = {"status": status, "seconds": elapsed, "vmhwm_kb": hwm_kb,
              "phases": dict(recorder.phases), "sql": dict(recorder.sql)}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The parent: tenant, connector, runs, raw COPY, summary
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    status: str = "not run"
    seconds: float = 0.0  # runner.execute in the worker
    process_seconds: float = 0.0  # the worker process, start to exit (interpreter and Django start included)
    maxrss_kb: int = 0
    counts: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    sql: dict = field(default_factory=dict)
    error: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply the default sizes (100k people, 2k groups), e.g. 0.05 for a quick run.")
    parser.add_argument("--people", type=int, default=None, help="People (identities = accounts); overrides --scale.")
    parser.add_argument("--groups", type=int, default=None, help="Groups (entitlements); default 2000 x scale.")
    parser.add_argument("--grants-per-person", type=int, default=10, help="Grants per person (default 10).")
    parser.add_argument("--seed", type=int, default=20261128, help="Seed of the synthetic source.")
    # 20k people (240k rows) a chunk: 5 chunks, so per-chunk costs (hash builds over the accounts and
    # identities, temp tables, a commit) are paid 5 times, not 20; the worker peaks near 420 MB with
    # the next chunk prefetched, well under 1 GB. The API accepts up to 50,000.
    parser.add_argument("--chunk-size", type=int, default=20000, help="People per chunk (default 20000).")
    parser.add_argument("--change-every", type=int, default=100,
                        help="The resync changes 1 person in N (default 100: 1%%).")
    parser.add_argument("--copy-target", type=float, default=5.0, help="Full sync within N x raw COPY (default 5).")
    parser.add_argument("--resync-target", type=float, default=15.0, help="Resync under N seconds (default 15).")
    parser.add_argument("--memory-target-mb", type=float, default=1024.0, help="Worker peak RSS (default 1024 MB).")
    parser.add_argument("--no-copy", action="store_true", help="Skip the raw COPY baseline.")
    parser.add_argument("--no-resync", action="store_true", help="Skip the 1%% resync.")
    parser.add_argument("--profile", choices=["full", "resync", "both"], default=None,
                        help="Run that worker under cProfile and print the top functions (adds overhead).")
    parser.add_argument("--sql-top", type=int, default=12, help="SQL statements listed per run (default 12).")
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help="Slug of the benchmark tenant (default benchsync).")
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark tenant afterwards.")
    parser.add_argument("--no-migrate", action="store_true", help="Skip migrate_schemas (already migrated).")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Give up on a worker after N s (default 3600).")
    # The worker side (internal).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        args.people = args.people if args.people is not None else max(10, round(FULL_PEOPLE * args.scale))
        args.groups = args.groups if args.groups is not None else max(10, round(FULL_GROUPS * args.scale))
        if args.grants_per_person > args.groups:
            parser.error("--grants-per-person must not exceed --groups")
    return args


def machine_info() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
        cursor.execute("SHOW synchronous_commit")
        sync_commit = cursor.fetchone()[0]
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: nproc={nproc} ({cpu or platform.machine()}), Python {platform.python_version()}, "
            f"PostgreSQL {pg_version} (shared_buffers {shared_buffers}, synchronous_commit {sync_commit}), "
            f"{platform.system()} {platform.release()}")


def prepare_tenant(slug: str):
    from django.db import connection

    from rapidvalue.tenancy.models import Tenant, schema_name_for
    from rapidvalue.tenancy.services import delete_tenant, provision_tenant

    connection.set_schema_to_public()
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is not None:
        started = time.perf_counter()
        delete_tenant(tenant)
        print(f"deleted the previous tenant '{slug}' in {time.perf_counter() - started:.1f} s")
    schema = schema_name_for(slug)
    with connection.cursor() as cursor:  # leftovers of an interrupted run: a schema without tenant
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if cursor.fetchone():
            cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # migrate_schemas prints every migration
        result = provision_tenant(slug, name="Sync benchmark", admin_email=ADMIN_EMAIL)
    print(f"provisioned tenant '{slug}' (schema {result.tenant.schema_name}) in {time.perf_counter() - started:.1f} s")
    return result.tenant


def connector_config(args: argparse.Namespace, change_every: int = 0) -> dict:
    config = {"people": args.people, "seed": args.seed, "groups": args.groups,
              "grants_per_person": args.grants_per_person}
    if change_every:
        config["bench_change_every"] = change_every
    return config


def queue_run(connector, chunk_size: int) -> str:
    """``start_sync`` as the API calls it; the Celery enqueue it schedules is caught (we run the worker)."""
    from unittest import mock

    from django.db import transaction

    from connectors import tasks
    from connectors.services import start_sync

    queued: list[str] = []
    with mock.patch.object(tasks, "schedule_run", side_effect=lambda run_id, **_: queued.append(run_id)), \
            transaction.atomic():
        run, _ = start_sync(connector, incremental=False, chunk_size=chunk_size, requested_by="bench/sync.py")
    # on_commit ran the enqueue as the transaction committed
    if queued != [str(run.pk)]:
        raise RuntimeError(f"start_sync did not enqueue run {run.pk} (got {queued})")
    return str(run.pk)


def run_worker(tenant, run_id: str, label: str, args: argparse.Namespace, profile: bool) -> RunResult:
    from connectors.models import SyncRun

    result = RunResult(label=label)
    profile_out = Path(tempfile.gettempdir()) / f"rv-bench-sync-{label}-{os.getpid()}.prof" if profile else None
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--schema", tenant.schema_name,
               "--run", run_id]
    if profile_out:
        command += ["--profile-out", str(profile_out)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()  # the worker's logs go to stderr, straight through
    _, wait_status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    result.process_seconds = time.perf_counter() - started
    result.maxrss_kb = usage.ru_maxrss  # kilobytes on Linux: the worker's own peak, not this process's
    payload = next((line[len(RESULT_MARK):] for line in output.splitlines() if line.startswith(RESULT_MARK)), None)
    if proc.returncode != 0 or payload is None:
        result.status = "crashed"
        result.error = f"worker exit status {proc.returncode}; output: {output[-2000:]}"
        return result
    data = json.loads(payload)
    result.status, result.seconds = data["status"], data["seconds"]
    result.phases, result.sql = data["phases"], data["sql"]
    run = SyncRun.objects.get(pk=run_id)
    result.counts, result.error = run.counts, run.error
    if profile_out:
        print_profile(profile_out, label)
    return result


def print_profile(path: Path, label: str) -> None:
    import pstats

    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats(key).print_stats(25)
        print(f"--- cProfile of the {label} worker, top 25 by {key} ---")
        text = out.getvalue()
        print(text[text.find("   ncalls"):].rstrip())
    with contextlib.suppress(OSError):
        path.unlink()


def merged_rows(args: argparse.Namespace) -> dict[str, int]:
    return {"identities": args.people, "accounts": args.people, "entitlements": args.groups,
            "grants": args.people * args.grants_per_person}


def print_run(result: RunResult, rows: dict[str, int], sql_top: int) -> None:
    total = sum(rows.values())
    print(f"{result.label}: status {result.status}, wall {result.seconds:.2f} s (runner.execute in the worker; "
          f"worker process {result.process_seconds:.2f} s with interpreter and Django start), "
          f"{total:,} rows ({', '.join(f'{k} {v:,}' for k, v in rows.items())}) -> "
          f"{total / result.seconds if result.seconds else 0:,.0f} rows/s, "
          f"worker peak RSS {result.maxrss_kb / 1024:.0f} MB")
    if result.error:
        print(f"  error: {result.error}")
    counts = {k: v for k, v in sorted(result.counts.items()) if v}
    print("  counts: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    if result.phases:
        print(f"  where the worker's {result.seconds:.2f} s went (inclusive; indented = part of the line above):")
        order = ["connector.sync (generate chunk)", "engine.stage (staging rows, in the fetch thread)",
                 "engine.merge_chunk", "  _merge_identities",
                 "    COPY into stage_identity", "    _identity_events (joiner/mover/leaver + webhooks)",
                 "      lifecycle.raise_events_bulk", "      webhooks emit_many", "  _merge_entitlements",
                 "    COPY into stage_entitlement", "  _merge_accounts", "    COPY into stage_account",
                 "  _merge_grants", "    COPY into stage_grant", "  link_managers", "engine.finish",
                 "  rebuild_paths", "callbacks.send_progress"]
        shown = set()
        for name in order + sorted(result.phases):
            if name in result.phases and name not in shown:
                shown.add(name)
                seconds, calls = result.phases[name]
                print(f"    {name:<56} {seconds:>8.2f} s {100 * seconds / result.seconds:>5.1f}%  ({calls:,} calls)")
        # Fetching and staging run in the fetch thread, overlapping the merge: not part of the sum.
        top = sum(result.phases.get(n, [0])[0] for n in ("engine.merge_chunk", "engine.finish",
                                                         "callbacks.send_progress"))
        rest = result.seconds - top
        print(f"    {'runner: waiting for the first page, commits, bookkeeping':<56} {rest:>8.2f} s "
              f"{100 * rest / result.seconds:>5.1f}%")
    if result.sql:
        print(f"  slowest SQL (through Django's cursor; COPY data transfer is under the COPY lines above), "
              f"top {sql_top} of {len(result.sql)}:")
        for label, (seconds, calls) in sorted(result.sql.items(), key=lambda kv: -kv[1][0])[:sql_top]:
            print(f"    {seconds:>8.2f} s {calls:>6,} x  {label}")


# --- raw COPY baseline -------------------------------------------------------------------------

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value).translate(_COPY_ESCAPES)


def bench_uuid(kind: int, index: int) -> uuid.UUID:
    return uuid.UUID(int=(kind << 96) | (0x4000 << 64) | (0x8 << 60) | index)


BASELINE_COLUMNS = {
    "identities_identity": ("id", "external_id", "email", "first_name", "last_name", "display_name", "department",
                            "title", "location", "employment_type", "status", "start_date", "end_date",
                            "manager_external_id", "path", "depth", "attributes", "created_at", "updated_at",
                            "manager_id", "source"),
    "access_account": ("id", "native_id", "username", "status", "last_login_at", "attributes", "created_at",
                       "updated_at", "identity_id", "application_id"),
    "access_entitlement": ("id", "value", "display_name", "type", "description", "risk_level", "requestable",
                           "created_at", "application_id", "owner_id"),
    "access_grant": ("id", "source", "source_reference", "granted_by", "valid_from", "valid_until", "state",
                     "ended_at", "created_at", "account_id", "entitlement_id", "identity_id", "role_id"),
}


def render_baseline_rows(args: argparse.Namespace, files: dict, connector_pk: str, application_id: str) -> float:
    """The rows the full sync ends with, from the connector itself, as COPY text in ``files``."""
    from connectors.dispatcher import ConnectorDispatcher
    from connectors.protocol.v1 import SyncRequest

    dispatcher = ConnectorDispatcher(BENCH_TYPE)
    now = "2026-01-01 00:00:00+00"
    source = f"connector:{connector_pk}"
    started = time.perf_counter()

    def path_of(index: int) -> tuple[str, int]:
        segments = []
        while True:
            segments.append(bench_uuid(1, index).hex + "/")
            if index == 0:
                break
            index = (index - 1) // 8
        return "".join(reversed(segments)), len(segments) - 1

    def write(table: str, row: tuple) -> None:
        files[table].write("\t".join(map(copy_text, row)) + "\n")

    cursor = None
    config = connector_config(args)
    while True:
        response = dispatcher.sync(SyncRequest(connector_business_id=connector_pk, incremental=False,
                                               last_sync_at=None, auth_config={}, config=config, cursor=cursor,
                                               chunk_size=args.chunk_size))
        for e in response.entitlements:
            number = int(e.value.rsplit("-", 1)[1])
            write("access_entitlement", (bench_uuid(3, number), e.value, e.display_name or "", e.type,
                                         e.description or "", e.risk_level or "low", True, now, application_id, None))
        for r in response.identities:
            index = int(r.external_id.rsplit("-", 1)[1])
            path, depth = path_of(index)
            display = r.display_name or f"{r.first_name} {r.last_name}"
            manager = bench_uuid(1, (index - 1) // 8) if index else None
            write("identities_identity", (
                bench_uuid(1, index), r.external_id, r.email, r.first_name, r.last_name, display, r.department,
                r.title, r.location, r.employment_type, r.status, None, None, r.manager_external_id or "", path,
                depth, json.dumps(r.attributes), now, now, manager, source))
        for a in response.accounts:
            index = int(a.native_id.rsplit("-", 1)[1])
            write("access_account", (bench_uuid(2, index), a.native_id, a.username, a.status, None,
                                     json.dumps(a.attributes), now, now, bench_uuid(1, index), application_id))
        for number, g in enumerate(response.grants, start=int(cursor or 0) * args.grants_per_person):
            account = int(g.account_native_id.rsplit("-", 1)[1])
            group = int(g.entitlement_value.rsplit("-", 1)[1])
            write("access_grant", (bench_uuid(4, number), "sync", str(connector_pk), "sync", None, None, "active",
                                   None, now, bench_uuid(2, account), bench_uuid(3, group), None, None))
        if not response.has_more:
            break
        cursor = response.next_cursor
    return time.perf_counter() - started


def raw_copy_baseline(args: argparse.Namespace, tenant, connector) -> dict:
    """Time COPY of the rows into scratch tables of the same column types (plain, then indexed)."""
    from django.db import connection

    schema = tenant.schema_name
    scratch = f"{schema}_copy"
    with contextlib.ExitStack() as stack:
        files = {table: stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))
                 for table in BASELINE_COLUMNS}
        render_seconds = render_baseline_rows(args, files, str(connector.pk), str(connector.application_id))
        sizes = {}
        for table, handle in files.items():
            handle.flush()
            sizes[table] = handle.tell()
        print(f"raw COPY baseline: rendered the same rows as COPY text in {render_seconds:.1f} s (not timed): "
              + ", ".join(f"{t} {s / MB:.0f} MB" for t, s in sizes.items()))
        results = {}
        for variant, like in (("plain", "INCLUDING DEFAULTS"), ("indexed", "INCLUDING DEFAULTS INCLUDING INDEXES "
                                                                           "INCLUDING CONSTRAINTS")):
            with connection.cursor() as cursor:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
                cursor.execute(f'CREATE SCHEMA "{scratch}"')
                for table in BASELINE_COLUMNS:
                    cursor.execute(f'CREATE TABLE "{scratch}"."{table}" (LIKE "{schema}"."{table}" {like})')
            per_table = {}
            for table, columns in BASELINE_COLUMNS.items():
                handle = files[table]
                handle.seek(0)
                started = time.perf_counter()
                sql = f'COPY "{scratch}"."{table}" ({", ".join(columns)}) FROM STDIN'
                with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
                    while block := handle.read(1 << 20):
                        copy.write(block)
                # autocommit: the COPY has committed when the block ends
                per_table[table] = time.perf_counter() - started
            results[variant] = per_table
            what = "into tables with the real ones' indexes and checks" if variant == "indexed" else "plain tables"
            print(f"raw COPY ({what}): {sum(per_table.values()):.2f} s = "
                  + ", ".join(f"{t} {s:.2f} s" for t, s in per_table.items()))
        with connection.cursor() as cursor:
            for table in BASELINE_COLUMNS:
                cursor.execute(f'SELECT count(*) FROM "{scratch}"."{table}"')
                results.setdefault("rows", {})[table] = cursor.fetchone()[0]
            cursor.execute(f'DROP SCHEMA "{scratch}" CASCADE')
        return results


# --- checks -----------------------------------------------------------------------------------


def expected_counts(args: argparse.Namespace, resync: bool) -> dict[str, int]:
    rows = merged_rows(args)
    if not resync:
        return {"identities_created": rows["identities"], "accounts_created": rows["accounts"],
                "entitlements_created": rows["entitlements"], "grants_created": rows["grants"], "errors": 0,
                "grants_deleted": 0, "accounts_deleted": 0, "identities_deleted": 0}
    changed, added = changed_people(args.people, args.change_every)
    return {"identities_updated": changed, "identities_unchanged": rows["identities"] - changed,
            "identities_created": 0, "accounts_created": 0, "accounts_updated": 0,
            "accounts_unchanged": rows["accounts"], "entitlements_unchanged": rows["entitlements"],
            "grants_created": added, "grants_deleted": changed, "grants_unchanged": rows["grants"] - changed,
            "errors": 0, "accounts_deleted": 0, "identities_deleted": 0}


def check_counts(result: RunResult, expected: dict[str, int]) -> list[str]:
    wrong = [f"{k}: expected {v:,}, got {result.counts.get(k, 0):,}" for k, v in expected.items()
             if result.counts.get(k, 0) != v]
    if result.status != "succeeded":
        wrong.insert(0, f"status {result.status}: {result.error}")
    return wrong


def side_tables(tenant) -> str:
    from django.db import connection

    parts = []
    with connection.cursor() as cursor:
        for table in ("identities_lifecycleevent", "webhooks_webhookevent", "webhooks_webhookdelivery",
                      "connectors_syncseen", "audit_auditevent"):
            cursor.execute("SELECT to_regclass(%s)", [f'"{tenant.schema_name}".{table}'])
            if cursor.fetchone()[0] is None:
                continue
            cursor.execute(f'SELECT count(*) FROM "{tenant.schema_name}".{table}')
            parts.append(f"{table}={cursor.fetchone()[0]:,}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)

    import django

    django.setup()
    logging_quiet()
    register_bench_connector()
    from django.core.management import call_command
    from django_tenants.utils import tenant_context

    from connectors.services import create_connector, update_connector
    from rapidvalue.tenancy.services import delete_tenant

    machine = machine_info()
    print(machine)
    if not args.no_migrate:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            call_command("migrate_schemas", "--noinput", verbosity=0)
        print(f"migrate_schemas: {time.perf_counter() - started:.1f} s")
    tenant = prepare_tenant(args.tenant)
    rows = merged_rows(args)
    print(f"source: synthetic, {args.people:,} people, {args.groups:,} groups, {args.grants_per_person} grants per "
          f"person, seed {args.seed}, chunk size {args.chunk_size:,} -> {sum(rows.values()):,} rows to merge")
    full = resync = None
    baseline: dict = {}
    problems: list[str] = []
    load_before = os.getloadavg()
    try:
        with tenant_context(tenant):
            connector = create_connector(name=CONNECTOR_NAME, type=BENCH_TYPE, config=connector_config(args),
                                         authoritative=True)
            run_id = queue_run(connector, args.chunk_size)
            full = run_worker(tenant, run_id, "full sync", args, args.profile in ("full", "both"))
            print_run(full, rows, args.sql_top)
            print(f"  side tables after the full sync: {side_tables(tenant)}")
            problems += [f"full sync {p}" for p in check_counts(full, expected_counts(args, resync=False))]

            if not args.no_copy:
                baseline = raw_copy_baseline(args, tenant, connector)
                expected_rows = {"identities_identity": rows["identities"], "access_account": rows["accounts"],
                                 "access_entitlement": rows["entitlements"], "access_grant": rows["grants"]}
                if baseline["rows"] != expected_rows:
                    problems.append(f"raw COPY rows {baseline['rows']} != {expected_rows}")

            if not args.no_resync:
                connector.refresh_from_db()
                connector = update_connector(connector, config=connector_config(args, args.change_every))
                changed, added = changed_people(args.people, args.change_every)
                print(f"resync: the source now differs for {changed:,} people (1 in {args.change_every}: "
                      f"department and title), {changed:,} grants gone, {added:,} grants new")
                run_id = queue_run(connector, args.chunk_size)
                resync = run_worker(tenant, run_id, "1% resync", args, args.profile in ("resync", "both"))
                print_run(resync, rows, args.sql_top)
                problems += [f"resync {p}" for p in check_counts(resync, expected_counts(args, resync=True))]
    finally:
        load_after = os.getloadavg()
        if not args.keep:
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                from django.db import connection

                connection.set_schema_to_public()
                delete_tenant(type(tenant).objects.get(pk=tenant.pk))
                print(f"deleted tenant '{args.tenant}' in {time.perf_counter() - started:.1f} s")
        else:
            print(f"kept tenant '{args.tenant}' (schema {tenant.schema_name})")

    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
          + ("  <- other processes were using the CPUs: figures are pessimistic"
             if max(load_before[0], load_after[0]) > 1.0 else ""))
    return summary(args, machine, full, resync, baseline, problems)


def summary(args, machine: str, full: RunResult | None, resync: RunResult | None, baseline: dict,
            problems: list[str]) -> int:
    lines = []
    memory_kb = args.memory_target_mb * 1024
    if full is not None and baseline:
        copy_seconds = sum(baseline["plain"].values())
        indexed = sum(baseline["indexed"].values())
        ratio = full.seconds / copy_seconds if copy_seconds else float("inf")
        lines.append((f"full sync vs raw COPY ({full.seconds:.1f} s / {copy_seconds:.2f} s)", f"{ratio:.1f}x",
                      f"<= {args.copy_target:g}x", ratio <= args.copy_target))
        lines.append((f"  (for reference: vs COPY into indexed tables, {indexed:.2f} s)",
                      f"{full.seconds / indexed:.1f}x" if indexed else "-", "", None))
    if resync is not None:
        lines.append((f"{100 / args.change_every:g}% resync wall time", f"{resync.seconds:.1f} s",
                      f"< {args.resync_target:g} s", resync.seconds < args.resync_target))
    for run in (full, resync):
        if run is not None:
            lines.append((f"worker peak RSS, {run.label}", f"{run.maxrss_kb / 1024:.0f} MB",
                          f"< {args.memory_target_mb:g} MB", run.maxrss_kb < memory_kb))
    print()
    print(f"{'target':<58} {'measured':>10} {'limit':>12}  result")
    for name, measured, limit, ok in lines:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:<58} {measured:>10} {limit:>12}  {verdict}")
    print(machine)
    if problems:
        print("correctness problems:")
        for problem in problems:
            print(f"  - {problem}")
        return 2
    return 0 if all(ok for *_, ok in lines if ok is not None) else 1


def logging_quiet() -> None:
    import logging

    logging.getLogger("rapidvalue.tenancy").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
