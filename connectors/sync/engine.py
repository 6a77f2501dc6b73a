"""The sync engine: set-based merge of one chunk of connector records into the tenant's data.

Each kind is COPYed into a temporary staging table and merged with a handful of SQL
statements (``INSERT ... SELECT``, ``UPDATE ... FROM ... WHERE (...) IS DISTINCT FROM (...)``),
never one ORM save per record; unchanged rows are compared in SQL and never written.

What a full sync saw is recorded in *session* temporary tables created by :func:`begin` (no
WAL, no index, no cleanup: 1.2M keys per run cost a plain append), so that what disappeared is
removed only in :func:`finish`, after the run completed successfully. They live as long as the
worker's database session: a run whose worker dies loses them and deletes nothing, and a run
whose session was replaced midway fails on the missing table instead of deleting what it never
recorded. Bad records are reported and skipped.

A big first load (the tables it fills are empty: a tenant's first sync) runs in one
transaction with those tables' secondary indexes and the foreign keys between them dropped
(:func:`set_aside`) and rebuilt from their catalog definitions in :func:`finish`
(:func:`restore`): a sort per index instead of per-row upkeep of a dozen B-trees. It holds
``ACCESS EXCLUSIVE`` locks on those empty tables until it commits, and a failure rolls all of
it back, indexes and constraints included.

The run's :class:`SyncState` carries what one chunk tells the next: whether this is the first
load of the application's grants (no lookup of existing grants then) and whether anything
that manager links and paths depend on changed (else :func:`finish` skips the tree rebuild).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from django.db import IntegrityError, OperationalError, connection, transaction

from connectors.models import ConnectorInstance, SyncRun
from connectors.protocol.v1 import RecordError, SyncResponse
from identities import lifecycle
from identities.models import Identity
from rapidvalue.webhooks.events import emit_many, has_subscriptions

logger = logging.getLogger(__name__)

IDENTITY_STATUSES = {c for c, _ in Identity.Status.choices}
EMPLOYMENT_TYPES = {c for c, _ in Identity.EmploymentType.choices}
IDENTITY_TEXT = ("email", "first_name", "last_name", "display_name", "department", "title", "location")
MOVER_FIELDS = ("department", "title", "location", "status", "manager_external_id")
CORRELATION_ACCOUNT = {"username": "s.username", "native_id": "s.native_id"}
CORRELATION_IDENTITY = {"email": "upper(i.email)", "external_id": "upper(i.external_id)"}


@dataclass
class ChunkResult:
    counts: Counter = field(default_factory=Counter)
    errors: list[RecordError] = field(default_factory=list)


@dataclass
class Staged:
    """A chunk's records as the rows COPYed into the staging tables, and what was refused on the way.

    Built by :func:`stage` from the connector's answer without the database, so the runner does it
    in its fetch thread while the previous chunk merges: the merge then spends its time in
    PostgreSQL, not in Python contending with the fetch for the interpreter lock.
    """

    identities: list[tuple] = field(default_factory=list)
    entitlements: list[tuple] = field(default_factory=list)
    accounts: list[tuple] = field(default_factory=list)
    grants: list[tuple] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    distinct_identities: int = 0
    distinct_entitlements: int = 0
    records: int = 0  # as the connector counted them (SyncResponse.record_count)


@dataclass
class SyncState:
    """What a run keeps from chunk to chunk (one worker, one database session)."""

    full: bool
    # No active sync grant on this application's entitlements when the run began: new grants
    # are inserted without first looking for an existing one (ON CONFLICT still guards).
    grants_first_load: bool = False
    # New identities inserted without a path (manager not known yet, or a cycle): finish() places them.
    identities_unplaced: int = 0
    # Rows this run inserted per table: after a big first load, fresh planner statistics.
    inserted: Counter = field(default_factory=Counter)
    # A first load into empty tables: the index and foreign-key upkeep set aside until finish().
    set_aside: SetAside | None = None
    # The sources of the other enabled authoritative connectors: their identities are not taken over.
    other_sources: list[str] = field(default_factory=list)

    def began_empty(self, table: str) -> bool:
        """Whether ``table`` was empty when this first load began: nothing in it to find or to end."""
        return self.set_aside is not None and table in self.set_aside.tables


@dataclass
class SetAside:
    """The secondary indexes and foreign keys :func:`set_aside` dropped, as the catalog defined them."""

    tables: list[str]
    unique_too: list[str]  # the tables whose primary key and unique indexes were dropped too
    indexes: list[tuple[str, str]]  # (table, CREATE INDEX statement from pg_get_indexdef)
    constraints: list[tuple[str, str, str]]  # (table, name, pg_get_constraintdef), in the order to add them


ANALYZE_AFTER_ROWS = 10_000
# For the merge of a chunk and for finish(), SET LOCAL: only the run's transactions, every run
# (a small one never uses it). Memory of the PostgreSQL backend, not of the worker: each hash or
# sort node of a statement may use it (hashes twice, hash_mem_multiplier), so the grants' merge
# (five nodes) can reach some 600 MB on a 200k-grant chunk, once per concurrent run. 4 MB (the
# default) spilled those hashes to disk in batches.
SYNC_WORK_MEM = "64MB"
# The id of each row an INSERT ... SELECT creates: a UUIDv7 (RFC 9562) whose first 20 hex digits
# are the statement's (_new_ids(): the time in milliseconds, then 26 bits, monotonic in this
# process) and whose last 12 are a counter, the RFC's "monotonic random" method: a random 47-bit
# start per statement plus the row's number. gen_random_uuid() costs 1.5 us a row here (OpenSSL),
# a tenth of a first load's grant insert. Time-ordered ids also land at the right end of the
# primary key (and of the indexes that lead with a foreign key to them), so B-trees grow at one
# edge instead of everywhere, and a first load's index builds sort presorted input.
NEW_ID = "(%(ids)s || lpad(to_hex(%(id_counter)s::bigint + row_number() OVER ()), 12, '0'))::uuid"
# The tables a sync fills: empty at a first load, they are loaded with their upkeep set aside.
# The joiners' lifecycle events too: written by the identities INSERT, 100k of them at a first load.
FIRST_LOAD_TABLES = ("identities_identity", "identities_lifecycleevent", "access_entitlement", "access_account",
                     "access_grant")
# Filled only by an authoritative source (identities and their joiner events).
IDENTITY_TABLES = ("identities_identity", "identities_lifecycleevent")
# Tables set aside only with the one they follow: identities may exist without events (loaded by
# hand or before events were kept), and those are no first load.
FIRST_LOAD_FOLLOWS = {"identities_lifecycleevent": "identities_identity"}
# Empty tables that those refer to but a sync does not fill: locked too when empty (no role can
# be created during the load), so that the grants' foreign key to them is checked once, not per row.
FIRST_LOAD_REFERENCED = ("access_role",)
# Of those, the ones whose primary key and unique indexes go too: nothing refers to a grant, and
# the first load of grants removes duplicates at the end (_REMOVE_DUPLICATE_GRANTS).
FIRST_LOAD_UNIQUE_TOO = ("access_grant",)

# How long a first load waits for its tables' locks before it loads as a normal run instead.
FIRST_LOAD_LOCK_TIMEOUT = "5s"
LOCK_NOT_AVAILABLE, QUERY_CANCELED = "55P03", "57014"  # SQLSTATEs of lock_timeout, statement_timeout
_SET_TIMEOUTS = "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)"


class NoFirstLoad(Exception):
    """:func:`set_aside` wrote nothing: its tables are busy, or no longer empty."""

# Session temporary tables of what a full sync saw: (name, key type).
SEEN_TABLES = {"rv_seen_identity": "text", "rv_seen_account": "text", "rv_seen_grant": "uuid"}


def begin(run: SyncRun, connector: ConnectorInstance) -> SyncState:
    """Before the first chunk: the seen tables of a full sync, and whether grants are a first load."""
    state = SyncState(full=not run.incremental)
    with connection.cursor() as cursor:
        discard()
        if state.full:
            for table, key_type in SEEN_TABLES.items():
                # ON COMMIT PRESERVE ROWS: the chunks commit one by one, the keys must outlive them.
                cursor.execute(f"CREATE TEMP TABLE {table} (key {key_type})")
        cursor.execute("""
            SELECT EXISTS (SELECT 1 FROM access_grant g JOIN access_entitlement e ON e.id = g.entitlement_id
                           WHERE e.application_id = %s AND g.source = 'sync' AND g.state = 'active')
        """, [connector.application_id])
        state.grants_first_load = not cursor.fetchone()[0]
    state.other_sources = [f"connector:{pk}" for pk in ConnectorInstance.objects.filter(
        authoritative=True, enabled=True).exclude(pk=connector.pk).values_list("pk", flat=True)]
    return state


def first_load_tables(connector: ConnectorInstance) -> list[str]:
    """The tables this connector fills, and FIRST_LOAD_REFERENCED, that are empty now (none unless
    one it fills is). No lock: :func:`set_aside` checks again under its own."""
    tables = [t for t in FIRST_LOAD_TABLES if connector.authoritative or t not in IDENTITY_TABLES]
    empty = _empty([*tables, *FIRST_LOAD_REFERENCED])
    return empty if set(empty) & set(tables) else []


def _empty(tables: list[str]) -> list[str]:
    """Those of ``tables`` with no row, less a FIRST_LOAD_FOLLOWS table whose leader has rows."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"NOT EXISTS (SELECT 1 FROM {t})" for t in tables))  # noqa: S608
        empty = [t for t, is_empty in zip(tables, cursor.fetchone(), strict=True) if is_empty]
    return [t for t in empty if FIRST_LOAD_FOLLOWS.get(t, t) in empty]


def set_aside(tables: list[str]) -> SetAside:
    """Drop the secondary indexes of those of ``tables`` still empty, and the foreign keys between them.

    ``tables``: from :func:`first_load_tables`; those of FIRST_LOAD_REFERENCED are only locked.

    A first load then writes 1.2M rows without updating a dozen B-trees and checking two
    foreign keys per row; :func:`restore` rebuilds them once at the end (a sort per index, one
    anti-join per key), which is several times cheaper. Unique indexes and primary keys stay
    (``ON CONFLICT`` and the merges rely on them, and other tables' foreign keys point at them),
    except on the tables of ``FIRST_LOAD_UNIQUE_TOO``: rebuilding them at the end also checks
    that the load left no duplicate. Partial indexes stay too: most rows a sync writes fall
    outside them, so they cost a predicate check per row where a rebuild reads the whole table.

    Only inside the run's one transaction (the caller's): the ``ACCESS EXCLUSIVE`` locks taken
    here, on these empty tables and on no other, are held until it commits, so a concurrent
    reader of them waits for the load to finish instead of seeing them without their indexes,
    and no concurrent writer can add a row that the re-added foreign keys would refuse. (A table
    that a concurrent commit filled between the two checks stays locked, and keeps its upkeep.)
    A run that fails rolls the DROPs back with everything else: the indexes and constraints are
    never missing outside this transaction.

    The locks are waited for FIRST_LOAD_LOCK_TIMEOUT at most, all tables together: behind a
    waiting ACCESS EXCLUSIVE request every other query of those tables queues too, so a long
    reader (a report, an open console transaction) would stall them all. When they are not
    granted in time, or no table it fills is still empty, it raises :class:`NoFirstLoad` having
    written nothing: the caller leaves the transaction and runs a normal load, chunk by chunk.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("set_aside() must run inside the first load's transaction")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        saved = cursor.fetchone()
        try:
            with transaction.atomic():  # a savepoint: the locks granted before the timeout go with it
                # lock_timeout counts per lock; statement_timeout bounds the whole LOCK statement.
                cursor.execute(_SET_TIMEOUTS, [FIRST_LOAD_LOCK_TIMEOUT] * 2)
                cursor.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) not in (LOCK_NOT_AVAILABLE, QUERY_CANCELED):
                raise
            logger.warning("first load: tables %s busy for %s, loading as a normal run", tables,
                           FIRST_LOAD_LOCK_TIMEOUT)
            raise NoFirstLoad("tables busy") from error
        cursor.execute(_SET_TIMEOUTS, saved)  # the session's own values, for the rest of the run
        # Checked again under the lock: a row committed since first_load_tables() keeps its table's upkeep.
        locked = _empty(tables)
        tables = [t for t in locked if t in FIRST_LOAD_TABLES]
        if not tables:
            raise NoFirstLoad("filled meanwhile")
        # A primary key or unique index that a foreign key stands on stays (none does today).
        cursor.execute("SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                       "AND confrelid = ANY(%s::regclass[])", [list(FIRST_LOAD_UNIQUE_TOO)])
        referred = {row[0] for row in cursor.fetchall()}
        unique_too = [t for t in tables if t in FIRST_LOAD_UNIQUE_TOO and t not in referred]
        cursor.execute("""
            SELECT format('%%I.%%I', n.nspname, c.relname), i.indrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.indrelid = ANY(%s::regclass[])
              AND (NOT i.indisunique OR i.indrelid = ANY(%s::regclass[]))
              -- A partial index that is not unique stays: most rows a sync writes are outside
              -- those of the grants (a role, another source or state; identity holders, rare,
              -- are inside one), so it costs a predicate check a row, where a rebuild reads
              -- the whole table.
              AND (i.indpred IS NULL OR i.indisunique)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
            ORDER BY 1
        """, [tables, unique_too])
        indexes = cursor.fetchall()
        # Foreign keys to the locked tables only: dropping one locks the table it refers to as well,
        # and no other table may be locked for the load. Dropped first, added last; then primary
        # keys and unique constraints.
        cursor.execute("""
            SELECT conrelid::regclass::text, quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = ANY(%(t)s::regclass[])
              AND (contype = 'f' AND confrelid = ANY(%(locked)s::regclass[])
                   OR contype IN ('p', 'u') AND conrelid = ANY(%(u)s::regclass[]))
            ORDER BY contype = 'f' DESC, 1, 2
        """, {"t": tables, "locked": locked, "u": unique_too})
        constraints = cursor.fetchall()
        for table, name, _ in constraints:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        if indexes:
            cursor.execute("DROP INDEX " + ", ".join(name for name, _, _ in indexes))
    return SetAside(tables, unique_too, [(table, definition) for _, table, definition in indexes], constraints[::-1])


def restore(aside: SetAside) -> int:
    """Rebuild what :func:`set_aside` dropped, under the same names and definitions (same transaction).

    Each index build sorts the table once; each ``ADD CONSTRAINT ... FOREIGN KEY`` checks every
    row in one join. A violation (a row referring to nothing) fails the run, which rolls the
    whole load back. A unique index of the grants that finds a grant two chunks repeated is
    built again after removing the repeats; returns how many grants were removed.
    """
    removed, deduplicated = 0, False
    with connection.cursor() as cursor:
        # ALTER TABLE refuses a table with deferred checks pending (of the foreign keys kept, to
        # tables not set aside): run them now, as the commit would have.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # Index builds sort in memory rather than in temporary files (until the transaction ends).
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for table, name, definition in aside.constraints:
            cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        for table, definition in aside.indexes:
            try:
                with transaction.atomic():
                    cursor.execute(definition)
            except IntegrityError:
                if table != "access_grant" or deduplicated:
                    raise
                cursor.execute(_REMOVE_DUPLICATE_GRANTS)
                removed, deduplicated = cursor.rowcount, True
                cursor.execute(definition)
        # Back to checks at commit: Django declares every foreign key DEFERRABLE INITIALLY DEFERRED.
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return removed


def _use_work_mem() -> None:
    """Chunk-sized hashes and sorts (200k grants; 1M seen keys in finish()) in memory rather than
    spilled to disk in batches: for the caller's transaction only."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL work_mem = '{SYNC_WORK_MEM}'")


def discard() -> None:
    """Drop the seen tables of this session (a previous run that failed in this worker left them)."""
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS " + ", ".join(f"pg_temp.{t}" for t in SEEN_TABLES))


def _copy(table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({', '.join(c + ' text' for c in columns)})"
                       " ON COMMIT DROP")
        cursor.execute(f"TRUNCATE {table}")
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _seen(state: SyncState, seen_table: str, table: str, key_sql: str, target: str) -> None:
    """Record the chunk's keys (full sync only); no IF NOT EXISTS: a missing table fails the run.

    Not when ``target`` began empty: all its rows are this run's, finish() ends none of them."""
    if not state.full or state.began_empty(target):
        return
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO pg_temp.{seen_table} (key) SELECT {key_sql} FROM {table} s")  # noqa: S608


_last_prefix = (0, 0)  # (milliseconds, 26 bits) of the last statement's ids in this process
_prefix_lock = threading.Lock()


def _new_ids() -> dict[str, str | int]:
    """The parameters of NEW_ID for one statement: its prefix and the start of its counter.

    Two statements must never make the same id: grants are inserted with an untargeted ``ON
    CONFLICT DO NOTHING`` (two partial unique indexes are arbiters), which would drop a grant
    whose id collided rather than fail. In this process the prefix strictly increases (the 26
    bits count up within a millisecond, as RFC 9562 allows), so no two statements share one.
    Across worker processes, ids collide only if the 26 bits match within the same millisecond
    and the two counters' ranges (47 random bits each) overlap: about 2^-54 for two 200k-row chunks.
    """
    global _last_prefix
    with _prefix_lock:
        ms, bits = time.time_ns() // 1_000_000, secrets.randbits(26)
        last_ms, last_bits = _last_prefix
        if ms <= last_ms:
            ms, bits = last_ms, last_bits + 1
            if bits >> 26:  # 2^26 statements in one millisecond: borrow the next one
                ms, bits = ms + 1, 0
        _last_prefix = (ms, bits)
    prefix = (f"{ms >> 16 & 0xFFFFFFFF:08x}-{ms & 0xFFFF:04x}-7{bits >> 14:03x}-"
              f"{0x8 | (bits >> 12 & 0x3):x}{bits & 0xFFF:03x}-")
    return {"ids": prefix, "id_counter": secrets.randbits(47)}


def _valid_date(value: str | None) -> str | None:
    if not value:
        return None
    return date.fromisoformat(value).isoformat()


# --- identities ------------------------------------------------------------------------------

_IDENTITY_COLUMNS = ("external_id", *IDENTITY_TEXT, "employment_type", "status", "start_date", "end_date",
                     "manager_external_id", "attributes")

_IDENTITY_DATA_DIFFERS = """(i.email, i.first_name, i.last_name, i.display_name, i.department, i.title,
        i.location, i.employment_type, i.status, i.start_date, i.end_date, i.manager_external_id, i.attributes)
    IS DISTINCT FROM (s.email, s.first_name, s.last_name, s.display_name, s.department, s.title, s.location,
        s.employment_type, s.status, s.start_date::date, s.end_date::date, s.manager_external_id,
        s.attributes::jsonb)"""
# The source too: an identity entered by hand (or by a connector since removed) that this source
# also lists is taken over even when nothing else differs, so that it ends when the source drops
# it. Not from another enabled authoritative connector: two HR sources listing the same person
# would take it from each other on every run.
_IDENTITY_DIFFERS = ("(" + _IDENTITY_DATA_DIFFERS
                     + " OR (i.source IS DISTINCT FROM %(source)s AND i.source <> ALL(%(other_sources)s)))")

# Only the rows that differ are locked (their old values read for the mover events) and written: a
# resync locked every identity of the chunk before, which wrote each of their pages. A row that
# differs in the statement's snapshot is locked in ``old``; if a concurrent edit holds it, FOR
# UPDATE waits and re-reads it (READ COMMITTED), so the old values of a mover event are those of
# the version this UPDATE replaces, and a row that the edit made equal is left alone. A row that an
# edit committed during the statement made differ is not seen until the next run.
_UPDATE_IDENTITIES = """
WITH src AS (SELECT DISTINCT ON (external_id) * FROM stage_identity ORDER BY external_id),
old AS (
    SELECT i.id, i.external_id, i.department, i.title, i.location, i.status, i.manager_external_id,
           """ + _IDENTITY_DATA_DIFFERS + """ AS data_changed
    FROM identities_identity i JOIN src s USING (external_id)
    WHERE """ + _IDENTITY_DIFFERS + """
    FOR UPDATE OF i
)
UPDATE identities_identity i SET
    email = s.email, first_name = s.first_name, last_name = s.last_name, display_name = s.display_name,
    department = s.department, title = s.title, location = s.location, employment_type = s.employment_type,
    status = s.status, start_date = s.start_date::date, end_date = s.end_date::date,
    manager_external_id = s.manager_external_id, attributes = s.attributes::jsonb, source = %(source)s,
    updated_at = now()
FROM src s JOIN old o USING (external_id)
WHERE i.id = o.id AND """ + _IDENTITY_DIFFERS + """
RETURNING i.id, o.department, o.title, o.location, o.status, o.manager_external_id, o.data_changed
"""  # noqa: S608 (constants only)

# New identities are inserted with their manager link and path already set when the manager is
# known (an existing identity, or a new one of the same chunk, placed recursively): written once,
# where linking and re-pathing them in finish() rewrote each row twice more (17 indexes each).
# Who cannot be placed yet (manager not there yet, a cycle) gets path '' and finish() places them.
_INSERT_IDENTITIES_CTES = """
WITH RECURSIVE new AS MATERIALIZED (
    SELECT """ + NEW_ID + """ AS id, s.*
    FROM (SELECT DISTINCT ON (external_id) * FROM stage_identity ORDER BY external_id) s
    WHERE NOT EXISTS (SELECT 1 FROM identities_identity i WHERE i.external_id = s.external_id)
),
placed AS (
    SELECT n.id, n.external_id, m.id AS manager_id,
           CASE WHEN m.id IS NULL THEN '' ELSE m.path END || replace(n.id::text, '-', '') || '/' AS path,
           CASE WHEN m.id IS NULL THEN 0 ELSE m.depth + 1 END AS depth
    FROM new n
    LEFT JOIN identities_identity m ON n.manager_external_id <> '' AND m.external_id = n.manager_external_id
    WHERE (n.manager_external_id = '' OR m.id IS NOT NULL OR n.manager_external_id = n.external_id)
      AND (m.id IS NULL OR m.path <> '')
      AND NOT EXISTS (SELECT 1 FROM new p WHERE n.manager_external_id <> '' AND p.external_id = n.manager_external_id
                      AND p.id <> n.id)
    UNION ALL
    SELECT n.id, n.external_id, t.id, t.path || replace(n.id::text, '-', '') || '/', t.depth + 1
    FROM new n JOIN placed t ON n.manager_external_id = t.external_id AND n.id <> t.id
    WHERE t.depth < 500
),
ins AS (
INSERT INTO identities_identity (id, external_id, email, first_name, last_name, display_name, department, title,
    location, employment_type, status, start_date, end_date, manager_external_id, manager_id, path, depth,
    attributes, source, created_at, updated_at)
SELECT n.id, n.external_id, n.email, n.first_name, n.last_name, n.display_name, n.department, n.title,
    n.location, n.employment_type, n.status, n.start_date::date, n.end_date::date, n.manager_external_id,
    p.manager_id, COALESCE(p.path, ''), COALESCE(p.depth, 0), n.attributes::jsonb, %(source)s, now(), now()
FROM new n LEFT JOIN placed p ON p.id = n.id
RETURNING id, path = '' AS unplaced
)"""  # noqa: S608 (constants only)
_INSERT_IDENTITIES = _INSERT_IDENTITIES_CTES + "\nSELECT id, unplaced FROM ins"

# The same, when nothing needs the joiners in Python (no subscriber, no webhook subscription):
# their events are written by the same statement (the rows lifecycle.record_events writes), and
# only counts come back: no 20k ids per chunk sent to Python and back.
_INSERT_IDENTITIES_AND_JOINERS = _INSERT_IDENTITIES_CTES + """,
joined AS (
    INSERT INTO identities_lifecycleevent (kind, identity_id, changes, source, occurred_at)
    SELECT %(joiner)s, id, '{}'::jsonb, 'sync', now() FROM ins
)
SELECT count(*), count(*) FILTER (WHERE unplaced) FROM ins
"""  # noqa: S608 (constants only)


def _identity_rows(response: SyncResponse, errors: list[RecordError]) -> list[tuple]:
    rows = []
    for remote in response.identities:
        try:
            status = remote.status or "active"
            if status not in IDENTITY_STATUSES:
                raise ValueError(f"status {status!r} is not one of {sorted(IDENTITY_STATUSES)}")
            employment = remote.employment_type or "employee"
            if employment not in EMPLOYMENT_TYPES:
                employment = "other"
            display = remote.display_name or " ".join(p for p in (remote.first_name, remote.last_name) if p)
            rows.append((remote.external_id, remote.email or "", remote.first_name or "", remote.last_name or "",
                         display, remote.department or "", remote.title or "", remote.location or "",
                         employment, status, _valid_date(remote.start_date), _valid_date(remote.end_date),
                         remote.manager_external_id or "", _json(remote.attributes)))
        except ValueError as exc:
            errors.append(RecordError(kind="identity", key=remote.external_id, error=str(exc)))
    return rows


def _json(value: dict) -> str:
    return json.dumps(value) if value else "{}"


def stage(response: SyncResponse, authoritative: bool) -> Staged:
    """The staging rows of one chunk (no database): see :class:`Staged`."""
    staged = Staged(errors=list(response.record_errors), records=response.record_count)
    if authoritative:
        staged.identities = _identity_rows(response, staged.errors)
        staged.distinct_identities = len({row[0] for row in staged.identities})
    staged.entitlements = [(e.value, e.display_name or "", e.type, e.description or "", e.risk_level or "low",
                            "true" if e.requestable is None else str(e.requestable).lower())
                           for e in response.entitlements]
    staged.distinct_entitlements = len({row[0] for row in staged.entitlements})
    staged.accounts = [(a.native_id, a.username or "", a.status, a.identity_external_id,
                        a.last_login_at.isoformat() if a.last_login_at else None, _json(a.attributes))
                       for a in response.accounts]
    staged.grants = [(g.entitlement_value, g.account_native_id, g.identity_external_id) for g in response.grants]
    return staged


def _merge_identities(run: SyncRun, state: SyncState, staged: Staged, result: ChunkResult) -> None:
    rows = staged.identities
    if not rows:
        return
    _copy("stage_identity", _IDENTITY_COLUMNS, rows)
    with connection.cursor() as cursor:
        source = {"source": f"connector:{run.connector_id}"}
        cursor.execute(_UPDATE_IDENTITIES, {**source, "other_sources": state.other_sources})
        source.update(_new_ids())
        returned = cursor.fetchall()
        updated = [row[:-1] for row in returned]
        taken_over = {row[0] for row in returned if not row[-1]}  # only the source changed
        # Joins against the CTEs (no index, no statistics) must hash: as nested loops they scan the
        # chunk once per new identity (seconds for 10k).
        cursor.execute("SET LOCAL enable_nestloop = off")
        if lifecycle.has_subscribers(lifecycle.JOINER) or has_subscriptions("identity.created"):
            cursor.execute(_INSERT_IDENTITIES, source)
            returned = cursor.fetchall()
            inserted = [row[0] for row in returned]
            created, unplaced = len(inserted), sum(1 for row in returned if row[1])
        else:
            cursor.execute(_INSERT_IDENTITIES_AND_JOINERS, {**source, "joiner": lifecycle.JOINER})
            (created, unplaced), inserted = cursor.fetchone(), []
        cursor.execute("RESET enable_nestloop")
    _seen(state, "rv_seen_identity", "stage_identity", "s.external_id", "identities_identity")
    state.identities_unplaced += unplaced
    state.inserted["identities_identity"] += created
    state.inserted["identities_lifecycleevent"] += created  # a joiner event each, for finish()'s ANALYZE
    result.counts["identities_created"] += created
    result.counts["identities_updated"] += len(updated)
    result.counts["identities_unchanged"] += staged.distinct_identities - created - len(updated)
    _identity_events(inserted, updated, taken_over)


def _identity_events(inserted: list, updated: list, taken_over: set | frozenset = frozenset()) -> None:
    """Joiner, mover and leaver events (and their webhooks) for what this chunk changed.

    A first load makes every identity a joiner: when no joiner subscriber and no webhook
    subscription wants the identity itself, the events are written in SQL from the ids, without
    loading 100k identities into Python. Webhook events are written only for event types with an
    enabled subscription: an outbox row nobody subscribed to is never delivered.
    """
    from identities.services import webhook_data

    if not inserted and not updated:
        return
    hooks = {t: has_subscriptions(t) for t in ("identity.created", "identity.updated", "identity.deactivated")}
    load = [row[0] for row in updated]
    if inserted and (lifecycle.has_subscribers(lifecycle.JOINER) or hooks["identity.created"]):
        load += inserted
    people = Identity.objects.in_bulk(load) if load else {}
    if inserted and inserted[0] in people:
        joiners = [people[pk] for pk in inserted]
        lifecycle.raise_events_bulk(lifecycle.JOINER, joiners)
        if hooks["identity.created"]:
            emit_many("identity.created", [{"identity": webhook_data(p)} for p in joiners])
    elif inserted:
        lifecycle.record_events(lifecycle.JOINER, inserted)
    movers, mover_changes, leavers, updated_payloads, leaver_payloads = [], [], [], [], []
    for pk, *old in updated:
        person = people[pk]
        before = dict(zip(MOVER_FIELDS, old, strict=True))
        changes = {f: [before[f], getattr(person, f)] for f in MOVER_FIELDS if before[f] != getattr(person, f)}
        if "manager_external_id" in changes:
            changes["manager"] = changes.pop("manager_external_id")
        if changes.get("status", [None, None])[1] == Identity.Status.TERMINATED:
            leavers.append(person)
            leaver_payloads.append({"identity": webhook_data(person), "changes": changes})
        else:
            if changes:
                movers.append(person)
                mover_changes.append(changes)
            if pk not in taken_over:  # taken over from another source, same data: nothing to tell
                updated_payloads.append({"identity": webhook_data(person), "changes": changes})
    lifecycle.raise_events_bulk(lifecycle.MOVER, movers, mover_changes)
    lifecycle.raise_events_bulk(lifecycle.LEAVER, leavers, [{} for _ in leavers])
    if hooks["identity.updated"]:
        emit_many("identity.updated", updated_payloads)
    if hooks["identity.deactivated"]:
        emit_many("identity.deactivated", leaver_payloads)


# --- accounts, entitlements, grants ----------------------------------------------------------


def _correlation_sql(connector: ConnectorInstance) -> tuple[str, dict]:
    """COALESCE of the identity found by the record itself, then by each correlation rule."""
    parts = ["(SELECT i.id FROM identities_identity i WHERE i.external_id = s.identity_external_id)"]
    params: dict = {}
    for rule in connector.correlation_rules or []:
        account_attr, identity_attr = rule.get("account", ""), rule.get("identity", "")
        if account_attr in CORRELATION_ACCOUNT:
            left = CORRELATION_ACCOUNT[account_attr]
        elif account_attr.startswith("attributes."):
            name = f"corr_{len(params)}"
            left = f"(s.attributes::jsonb ->> %({name})s)"
            params[name] = account_attr.removeprefix("attributes.")
        else:
            continue
        if identity_attr in CORRELATION_IDENTITY:
            right = CORRELATION_IDENTITY[identity_attr]
        else:
            continue
        # Only whitelisted expressions are interpolated; attribute names travel as parameters.
        parts.append(f"(SELECT i.id FROM identities_identity i WHERE {right} = upper({left}) LIMIT 1)")  # noqa: S608
    return "COALESCE(" + ", ".join(parts) + ")", params


def _merge_accounts(state: SyncState, connector: ConnectorInstance, staged: Staged, result: ChunkResult) -> None:
    """Update what changed, insert what is new, in one statement (one snapshot, one correlation pass).

    ``UPDATE ... WHERE (...) IS DISTINCT FROM (...)`` writes only changed rows, where ``INSERT ...
    ON CONFLICT DO UPDATE`` would lock (and so write) every existing row of a resync.
    """
    rows = staged.accounts
    if not rows:
        return
    _copy("stage_account", ("native_id", "username", "status", "identity_external_id", "last_login_at",
                            "attributes"), rows)
    correlation, params = _correlation_sql(connector)
    # A first load holds the table's ACCESS EXCLUSIVE lock and src is distinct: no insert can
    # conflict, and ON CONFLICT's speculative insertion (an index probe and a token per row) is saved.
    on_conflict = "" if state.began_empty("access_account") else "ON CONFLICT (application_id, native_id) DO NOTHING"
    sql = f"""  -- the correlation expression is built from whitelisted columns only
    WITH src AS MATERIALIZED (
        SELECT s.native_id, s.username, s.status, s.last_login_at::timestamptz AS last_login_at,
               s.attributes::jsonb AS attributes, {correlation} AS identity_id
        FROM (SELECT DISTINCT ON (native_id) * FROM stage_account ORDER BY native_id) s
    ),
    upd AS (
        UPDATE access_account a SET username = src.username, status = src.status,
            last_login_at = src.last_login_at, attributes = src.attributes,
            identity_id = COALESCE(src.identity_id, a.identity_id), updated_at = now()
        FROM src
        WHERE a.application_id = %(app)s AND a.native_id = src.native_id
          AND (a.username, a.status, a.last_login_at, a.attributes, a.identity_id)
              IS DISTINCT FROM (src.username, src.status, src.last_login_at, src.attributes,
                                COALESCE(src.identity_id, a.identity_id))
        RETURNING 1
    ),
    ins AS (
        INSERT INTO access_account (id, application_id, identity_id, native_id, username, status, last_login_at,
            attributes, created_at, updated_at)
        SELECT {NEW_ID}, %(app)s, src.identity_id, src.native_id, src.username, src.status,
            src.last_login_at, src.attributes, now(), now()
        FROM src
        WHERE NOT EXISTS (SELECT 1 FROM access_account a
                          WHERE a.application_id = %(app)s AND a.native_id = src.native_id)
        {on_conflict}
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd), (SELECT count(*) FROM src)
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, {"app": connector.application_id, **_new_ids(), **params})
        created, updated, distinct = cursor.fetchone()
    _seen(state, "rv_seen_account", "stage_account", "s.native_id", "access_account")
    state.inserted["access_account"] += created
    result.counts["accounts_created"] += created
    result.counts["accounts_updated"] += updated
    result.counts["accounts_unchanged"] += distinct - created - updated


def _merge_entitlements(connector: ConnectorInstance, staged: Staged, result: ChunkResult) -> None:
    rows = staged.entitlements
    if not rows:
        return
    _copy("stage_entitlement", ("value", "display_name", "type", "description", "risk_level", "requestable"), rows)
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO access_entitlement (id, application_id, value, display_name, type, description, risk_level,
                requestable, created_at)
            SELECT gen_random_uuid(), %s, s.value, s.display_name, s.type, s.description, s.risk_level,
                s.requestable::boolean, now()
            FROM (SELECT DISTINCT ON (value) * FROM stage_entitlement ORDER BY value) s
            ON CONFLICT (application_id, value) DO UPDATE SET
                display_name = EXCLUDED.display_name, type = EXCLUDED.type, description = EXCLUDED.description
            WHERE (access_entitlement.display_name, access_entitlement.type, access_entitlement.description)
                IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.type, EXCLUDED.description)
            RETURNING (xmax = 0)
        """, [connector.application_id])
        flags = [row[0] for row in cursor.fetchall()]
    result.counts["entitlements_created"] += sum(flags)
    result.counts["entitlements_updated"] += len(flags) - sum(flags)
    result.counts["entitlements_unchanged"] += staged.distinct_entitlements - len(flags)


# How a staged grant finds its holder: the account by native id, else the identity by external id
# (a grant held without an account). The identity join is left out when no staged grant names an
# identity: a hash join there reads every identity, once per chunk, for nothing.
_IDENTITY_HOLDER = {
    True: ("CASE WHEN a.id IS NULL THEN i.id END",
           "LEFT JOIN identities_identity i ON i.external_id = s.identity_external_id", " OR i.id IS NOT NULL"),
    False: ("NULL::uuid", "", ""),
}

# One statement per chunk: resolve the staged grants to ids (src), find the active sync grants
# they already are (held), insert the others (ins) and record the ids of both as seen (full sync),
# counting what did not resolve. No intermediate table: each row is read once from the stage.
_MERGE_GRANTS = """
WITH src AS MATERIALIZED (
    SELECT e.id AS entitlement_id, a.id AS account_id, {identity} AS identity_id
    FROM stage_grant s
    LEFT JOIN access_entitlement e ON e.application_id = %(app)s AND e.value = s.entitlement_value
    LEFT JOIN access_account a ON a.application_id = %(app)s AND a.native_id = s.account_native_id
    {identity_join}
){held},
r AS MATERIALIZED (
    SELECT src.*, {existing} AS existing_id FROM src {join_held}
),
ins AS (
    INSERT INTO access_grant (id, identity_id, account_id, entitlement_id, source, source_reference,
        granted_by, state, created_at)
    SELECT """ + NEW_ID + """, r.identity_id, r.account_id, r.entitlement_id, 'sync', %(connector)s, 'sync',
        'active', now()
    FROM r
    WHERE r.existing_id IS NULL AND r.entitlement_id IS NOT NULL
      AND (r.account_id IS NOT NULL OR r.identity_id IS NOT NULL)
    ON CONFLICT DO NOTHING
    RETURNING id
){record}
SELECT (SELECT count(*) FROM ins),
       (SELECT count(*) FROM r WHERE r.entitlement_id IS NULL OR (r.account_id IS NULL AND r.identity_id IS NULL))
"""  # noqa: S608 (constants only)

# The active sync grants of the chunk's accounts, read by account (one index range each, ~10
# grants) and hash-joined to the staged ones: a tenth of the index descents of one probe per grant.
# Grants held by an identity directly (no account) are rare: looked up likewise, by identity, only
# when some staged grant names an identity.
_HELD_BY_ACCOUNT = """,
held AS MATERIALIZED (
    SELECT g.id, g.account_id, g.entitlement_id FROM access_grant g
    WHERE g.account_id = ANY(ARRAY(SELECT DISTINCT account_id FROM src WHERE account_id IS NOT NULL))
      AND g.source = 'sync' AND g.state = 'active'
)"""
_HELD_BY_IDENTITY = """,
held_by_identity AS MATERIALIZED (
    SELECT g.id, g.identity_id, g.entitlement_id FROM access_grant g
    WHERE g.identity_id = ANY(ARRAY(SELECT DISTINCT identity_id FROM src WHERE account_id IS NULL
                                                                          AND identity_id IS NOT NULL))
      AND g.account_id IS NULL AND g.source = 'sync' AND g.state = 'active'
)"""
_JOIN_HELD = ("LEFT JOIN held h ON h.account_id = src.account_id AND h.entitlement_id = src.entitlement_id",
              "LEFT JOIN held_by_identity hi ON src.account_id IS NULL AND hi.identity_id = src.identity_id "
              "AND hi.entitlement_id = src.entitlement_id")
_RECORD_SEEN = """,
seen AS (
    INSERT INTO pg_temp.rv_seen_grant (key)
    SELECT id FROM ins UNION ALL SELECT existing_id FROM r WHERE existing_id IS NOT NULL
)"""


# A first load into an empty access_grant without its unique indexes: nothing to look up, nothing
# for ON CONFLICT to stand on. The staged grants are resolved and inserted by one statement, with
# no intermediate table; a grant the source repeats (rare) is found once at the end, by the unique
# index build (_REMOVE_DUPLICATE_GRANTS). What did not resolve is read only when the count says so.
_INSERT_GRANTS_UNINDEXED = """
INSERT INTO access_grant (id, identity_id, account_id, entitlement_id, source, source_reference, granted_by,
    state, created_at)
SELECT """ + NEW_ID + """, {identity}, a.id, e.id, 'sync', %(connector)s, 'sync', 'active', now()
FROM stage_grant s
JOIN access_entitlement e ON e.application_id = %(app)s AND e.value = s.entitlement_value
LEFT JOIN access_account a ON a.application_id = %(app)s AND a.native_id = s.account_native_id
{identity_join}
WHERE a.id IS NOT NULL{or_identity}
"""

_UNRESOLVED_STAGED = """
SELECT s.entitlement_value, s.account_native_id, s.identity_external_id, e.id IS NULL
FROM stage_grant s
LEFT JOIN access_entitlement e ON e.application_id = %(app)s AND e.value = s.entitlement_value
LEFT JOIN access_account a ON a.application_id = %(app)s AND a.native_id = s.account_native_id
{identity_join}
WHERE e.id IS NULL OR NOT (a.id IS NOT NULL{or_identity})
LIMIT 1000
"""

# access_grant began empty: its active sync grants all came from this first load (others, such as a
# joiner subscriber's birthright grants, may be there too). Keep one of each (account or identity,
# entitlement), the key and the rows of the unique indexes grant_sync_account_uniq and grant_sync_identity_uniq.
_REMOVE_DUPLICATE_GRANTS = """
DELETE FROM access_grant g USING (
    SELECT id, row_number() OVER (PARTITION BY entitlement_id, account_id,
                                  CASE WHEN account_id IS NULL THEN identity_id END ORDER BY id) AS n
    FROM access_grant
    -- The unique indexes' rows: a joiner subscriber's (birthright) grants are never removed.
    WHERE source = 'sync' AND state = 'active'
) d
WHERE g.id = d.id AND d.n > 1
"""


def _merge_grants(state: SyncState, connector: ConnectorInstance, staged: Staged, result: ChunkResult) -> None:
    """Resolve the staged grants to ids, insert the new ones, record the ids of all (full sync).

    Existing grants are looked up once, while resolving, by account; a first load skips that.
    The ids a full sync saw come from that lookup and from ``INSERT ... RETURNING``: never a
    second pass over the grant table. What did not resolve is read again only when some did not.
    """
    rows = staged.grants
    if not rows:
        return
    _copy("stage_grant", ("entitlement_value", "account_native_id", "identity_external_id"), rows)
    by_identity = any(row[2] for row in rows)
    identity, identity_join, or_identity = _IDENTITY_HOLDER[by_identity]
    params = {"app": connector.application_id, "connector": str(connector.pk), **_new_ids()}
    with connection.cursor() as cursor:
        # Every join here must hash: the staging tables have no statistics, and a nested loop over
        # them scans the chunk once per row.
        cursor.execute("SET LOCAL enable_nestloop = off")
        if state.began_empty("access_grant") and "access_grant" in state.set_aside.unique_too:
            # Nothing to end in finish() either: no seen ids to record.
            cursor.execute(_INSERT_GRANTS_UNINDEXED.format(identity=identity, identity_join=identity_join,
                                                           or_identity=or_identity), params)
            created = cursor.rowcount
            unresolved_count = len(rows) - created
        else:
            held, existing, join_held = "", "NULL::uuid", ""
            if not state.grants_first_load:
                held, existing, join_held = _HELD_BY_ACCOUNT, "h.id", _JOIN_HELD[0]
                if by_identity:
                    held, existing = held + _HELD_BY_IDENTITY, "COALESCE(h.id, hi.id)"
                    join_held += " " + _JOIN_HELD[1]
            cursor.execute(_MERGE_GRANTS.format(
                identity=identity, identity_join=identity_join, held=held, existing=existing,
                join_held=join_held, record=_RECORD_SEEN if state.full else "",
            ), params)
            created, unresolved_count = cursor.fetchone()
        cursor.execute("RESET enable_nestloop")
        unresolved = []
        if unresolved_count:
            cursor.execute(_UNRESOLVED_STAGED.format(identity_join=identity_join, or_identity=or_identity), params)
            unresolved = cursor.fetchall()
    state.inserted["access_grant"] += created
    result.counts["grants_created"] += created
    result.counts["grants_unchanged"] += len(rows) - created - unresolved_count
    for value, account, identity_id, no_entitlement in unresolved:
        what = f"unknown entitlement {value!r}" if no_entitlement else "unknown account or identity"
        result.errors.append(RecordError(kind="grant", key=f"{account or identity_id} -> {value}", error=what))


def merge_chunk(run: SyncRun, connector: ConnectorInstance, staged: Staged, state: SyncState) -> ChunkResult:
    """Merge one chunk, in the caller's transaction. Order matters: grants refer to the rest.

    Manager links and paths are not touched here but once, in :func:`finish`: per chunk they
    cost a pass over every identity each time.
    """
    result = ChunkResult(errors=list(staged.errors))
    _use_work_mem()
    if connector.authoritative:
        _merge_identities(run, state, staged, result)
    _merge_entitlements(connector, staged, result)
    _merge_accounts(state, connector, staged, result)
    _merge_grants(state, connector, staged, result)
    result.counts["errors"] += len(result.errors)
    return result


# --- after the chunks --------------------------------------------------------------------------

_RELINK = """
UPDATE identities_identity c SET manager_id = m.id
FROM identities_identity m
WHERE c.manager_external_id <> '' AND m.external_id = c.manager_external_id AND m.id <> c.id
  AND c.manager_id IS DISTINCT FROM m.id
"""

# Paths from the roots down, and (same tree, computed once) who is unreachable from a root: the
# members of a manager cycle. NOT EXISTS against the CTE is a hashed anti-join; ``NOT IN`` was
# planned as a scan of the tree per identity (quadratic: minutes at 100k).
_REPATH = """
WITH RECURSIVE tree AS (
    SELECT id, replace(id::text, '-', '') || '/' AS path, 0 AS depth
    FROM identities_identity WHERE manager_id IS NULL
    UNION ALL
    SELECT c.id, t.path || replace(c.id::text, '-', '') || '/', t.depth + 1
    FROM identities_identity c JOIN tree t ON c.manager_id = t.id
    WHERE t.depth < 500
),
repathed AS (
    UPDATE identities_identity i SET path = tree.path, depth = tree.depth
    FROM tree WHERE i.id = tree.id AND (i.path IS DISTINCT FROM tree.path OR i.depth <> tree.depth)
    RETURNING 1
)
SELECT i.id FROM identities_identity i WHERE NOT EXISTS (SELECT 1 FROM tree t WHERE t.id = i.id)
"""


def link_managers() -> int:
    """Point every identity at the manager its source named, once that manager exists; how many moved."""
    with connection.cursor() as cursor:
        cursor.execute(_RELINK)
        return cursor.rowcount


def rebuild_paths() -> list[str]:
    """Recompute the manager paths in one statement; break (and report) manager cycles."""
    with connection.cursor() as cursor:
        cursor.execute(_REPATH)
        unreachable = [row[0] for row in cursor.fetchall()]
        if not unreachable:
            return []
        # Identities unreachable from a root sit in a cycle: detach them, report, and place them.
        cursor.execute("UPDATE identities_identity SET manager_id = NULL, path = replace(id::text, '-', '') || '/', "
                       "depth = 0 WHERE id = ANY(%s) RETURNING external_id", [unreachable])
        cycles = [row[0] for row in cursor.fetchall()]
        cursor.execute(_REPATH)
    return cycles


def finish(run: SyncRun, connector: ConnectorInstance, state: SyncState) -> Counter:
    """After the last chunk: links and paths, and for a full sync, what disappeared. Caller's transaction.

    The tree is rebuilt only when a link moved or a new identity could not be placed at insert:
    paths depend on nothing else, so a resync where no manager changed, and a first load whose
    managers came before their reports, skip a rewrite of every identity.
    """
    counts: Counter = Counter()
    _use_work_mem()
    # Tables that began empty hold only this run's rows: nothing there disappeared.
    empty = {t for t in FIRST_LOAD_TABLES if state.began_empty(t)}
    if state.set_aside is not None:
        # Before ANALYZE: it gathers the statistics of expression indexes.
        repeated = restore(state.set_aside)
        state.set_aside = None
        counts["grants_created"] -= repeated
        counts["grants_unchanged"] += repeated
    with connection.cursor() as cursor:
        for table, rows in state.inserted.items():
            if rows >= ANALYZE_AFTER_ROWS:
                # Until autovacuum gets there, a table filled by this run looks empty to the planner.
                cursor.execute(f"ANALYZE {table}")
    relinked = link_managers()
    if relinked or state.identities_unplaced:
        counts["manager_cycles"] = len(rebuild_paths())
    if state.full:
        counts.update(accounts_deleted=0, grants_deleted=0, **({"identities_deleted": 0} if connector.authoritative
                                                               else {}))
        with connection.cursor() as cursor:
            # The seen tables have no index: the anti-joins below must be hash anti-joins. Fresh
            # statistics are not enough (a just-filled access_grant still looks empty to the
            # planner, which then picks a nested loop: a scan of 1M seen keys per grant), so
            # nested loops are off for these statements only.
            for table in SEEN_TABLES:
                cursor.execute(f"ANALYZE pg_temp.{table}")
            cursor.execute("SET LOCAL enable_nestloop = off")
            if "access_account" not in empty:
                cursor.execute("""
                    UPDATE access_account a SET status = 'deleted', updated_at = now()
                    WHERE a.application_id = %s AND a.status <> 'deleted' AND NOT EXISTS (
                        SELECT 1 FROM pg_temp.rv_seen_account s WHERE s.key = a.native_id)
                """, [connector.application_id])
                counts["accounts_deleted"] = cursor.rowcount
            if "access_grant" not in empty:
                cursor.execute("""
                    UPDATE access_grant g SET state = 'ended', ended_at = now()
                    WHERE g.source = 'sync' AND g.source_reference = %s AND g.state = 'active'
                      AND NOT EXISTS (SELECT 1 FROM pg_temp.rv_seen_grant s WHERE s.key = g.id)
                """, [str(connector.pk)])
                counts["grants_deleted"] = cursor.rowcount
            if connector.authoritative and "identities_identity" not in empty:
                cursor.execute("""
                    SELECT i.id FROM identities_identity i
                    WHERE i.status <> 'terminated' AND i.source = %s AND NOT EXISTS (
                        SELECT 1 FROM pg_temp.rv_seen_identity s WHERE s.key = i.external_id)
                """, [f"connector:{connector.pk}"])
                gone = [row[0] for row in cursor.fetchall()]
                cursor.execute("RESET enable_nestloop")  # the leavers' subscribers want their index probes
                ended: list = []
                if gone:
                    cursor.execute("""
                        WITH old AS (SELECT id, status FROM identities_identity WHERE id = ANY(%s) FOR UPDATE)
                        UPDATE identities_identity i SET status = 'terminated', updated_at = now() FROM old
                        WHERE i.id = old.id AND i.status <> 'terminated' AND i.source = %s
                        RETURNING i.id, i.department, i.title, i.location, old.status, i.manager_external_id
                    """, [gone, f"connector:{connector.pk}"])
                    ended = cursor.fetchall()
                    _identity_events([], ended)
                counts["identities_deleted"] = len(ended)
            else:
                cursor.execute("RESET enable_nestloop")
        discard()
    return counts
