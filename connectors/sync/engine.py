"""The sync engine: set-based merge of one chunk of connector records into the tenant's data.

Each kind is COPYed into a temporary staging table and merged with a handful of SQL
statements (``INSERT ... ON CONFLICT``, ``UPDATE ... FROM``), never one ORM save per record.
What a full sync saw is recorded (``SyncSeen``) so that what disappeared is removed only in
:func:`finish`, after the run completed successfully. Bad records are reported and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from django.db import connection

from connectors.models import ConnectorInstance, SyncRun
from connectors.protocol.v1 import RecordError, SyncResponse
from identities import lifecycle
from identities.models import Identity
from rapidvalue.webhooks.events import emit_many

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


def _copy(table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({', '.join(c + ' text' for c in columns)})"
                       " ON COMMIT DROP")
        cursor.execute(f"TRUNCATE {table}")
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _seen(run: SyncRun, kind: str, table: str, key_sql: str) -> None:
    if run.incremental:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO connectors_syncseen (run_id, kind, key) SELECT %s, %s, {key_sql} "  # noqa: S608
                       f"FROM {table} s", [run.pk, kind])


def _valid_date(value: str | None) -> str | None:
    if not value:
        return None
    return date.fromisoformat(value).isoformat()


# --- identities ------------------------------------------------------------------------------

_IDENTITY_COLUMNS = ("external_id", *IDENTITY_TEXT, "employment_type", "status", "start_date", "end_date",
                     "manager_external_id", "attributes")

_UPDATE_IDENTITIES = """
WITH src AS (SELECT DISTINCT ON (external_id) * FROM stage_identity ORDER BY external_id),
old AS (
    SELECT i.id, i.external_id, i.department, i.title, i.location, i.status, i.manager_external_id
    FROM identities_identity i JOIN src USING (external_id) FOR UPDATE OF i
)
UPDATE identities_identity i SET
    email = s.email, first_name = s.first_name, last_name = s.last_name, display_name = s.display_name,
    department = s.department, title = s.title, location = s.location, employment_type = s.employment_type,
    status = s.status, start_date = s.start_date::date, end_date = s.end_date::date,
    manager_external_id = s.manager_external_id, attributes = s.attributes::jsonb, source = %(source)s,
    updated_at = now()
FROM src s JOIN old o USING (external_id)
WHERE i.id = o.id AND (i.email, i.first_name, i.last_name, i.display_name, i.department, i.title, i.location,
        i.employment_type, i.status, i.start_date, i.end_date, i.manager_external_id, i.attributes)
    IS DISTINCT FROM (s.email, s.first_name, s.last_name, s.display_name, s.department, s.title, s.location,
        s.employment_type, s.status, s.start_date::date, s.end_date::date, s.manager_external_id, s.attributes::jsonb)
RETURNING i.id, o.department, o.title, o.location, o.status, o.manager_external_id
"""

_INSERT_IDENTITIES = """
INSERT INTO identities_identity (id, external_id, email, first_name, last_name, display_name, department, title,
    location, employment_type, status, start_date, end_date, manager_external_id, path, depth, attributes,
    source, created_at, updated_at)
SELECT gen_random_uuid(), s.external_id, s.email, s.first_name, s.last_name, s.display_name, s.department, s.title,
    s.location, s.employment_type, s.status, s.start_date::date, s.end_date::date, s.manager_external_id, '', 0,
    s.attributes::jsonb, %(source)s, now(), now()
FROM (SELECT DISTINCT ON (external_id) * FROM stage_identity ORDER BY external_id) s
WHERE NOT EXISTS (SELECT 1 FROM identities_identity i WHERE i.external_id = s.external_id)
RETURNING id
"""


def _merge_identities(run: SyncRun, response: SyncResponse, result: ChunkResult) -> None:
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
            rows.append((remote.external_id, *(getattr(remote, f) or "" for f in IDENTITY_TEXT[:3]), display,
                         *(getattr(remote, f) or "" for f in IDENTITY_TEXT[4:]), employment, status,
                         _valid_date(remote.start_date), _valid_date(remote.end_date),
                         remote.manager_external_id or "", json.dumps(remote.attributes)))
        except ValueError as exc:
            result.errors.append(RecordError(kind="identity", key=remote.external_id, error=str(exc)))
    if not rows:
        return
    _copy("stage_identity", _IDENTITY_COLUMNS, rows)
    with connection.cursor() as cursor:
        source = {"source": f"connector:{run.connector_id}"}
        cursor.execute(_UPDATE_IDENTITIES, source)
        updated = cursor.fetchall()
        cursor.execute(_INSERT_IDENTITIES, source)
        inserted = [row[0] for row in cursor.fetchall()]
    _seen(run, "i", "stage_identity", "s.external_id")
    result.counts["identities_created"] += len(inserted)
    result.counts["identities_updated"] += len(updated)
    result.counts["identities_unchanged"] += len({r[0] for r in rows}) - len(inserted) - len(updated)
    _identity_events(inserted, updated)


def _identity_events(inserted: list, updated: list) -> None:
    """Joiner, mover and leaver events (and their webhooks) for what this chunk changed."""
    from identities.services import webhook_data

    changed_ids = inserted + [row[0] for row in updated]
    if not changed_ids:
        return
    people = Identity.objects.in_bulk(changed_ids)
    joiners = [people[pk] for pk in inserted]
    lifecycle.raise_events_bulk(lifecycle.JOINER, joiners)
    emit_many("identity.created", [{"identity": webhook_data(p)} for p in joiners])
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
            updated_payloads.append({"identity": webhook_data(person), "changes": changes})
    lifecycle.raise_events_bulk(lifecycle.MOVER, movers, mover_changes)
    lifecycle.raise_events_bulk(lifecycle.LEAVER, leavers, [{} for _ in leavers])
    emit_many("identity.updated", updated_payloads)
    emit_many("identity.deactivated", leaver_payloads)


# --- accounts, entitlements, grants ----------------------------------------------------------


def _correlation_sql(connector: ConnectorInstance) -> tuple[str, list]:
    """COALESCE of the identity found by the record itself, then by each correlation rule."""
    parts = ["(SELECT i.id FROM identities_identity i WHERE i.external_id = s.identity_external_id)"]
    params: list = []
    for rule in connector.correlation_rules or []:
        account_attr, identity_attr = rule.get("account", ""), rule.get("identity", "")
        if account_attr in CORRELATION_ACCOUNT:
            left = CORRELATION_ACCOUNT[account_attr]
        elif account_attr.startswith("attributes."):
            left = "(s.attributes::jsonb ->> %s)"
            params.append(account_attr.removeprefix("attributes."))
        else:
            continue
        if identity_attr in CORRELATION_IDENTITY:
            right = CORRELATION_IDENTITY[identity_attr]
        else:
            continue
        # Only whitelisted expressions are interpolated; attribute names travel as parameters.
        parts.append(f"(SELECT i.id FROM identities_identity i WHERE {right} = upper({left}) LIMIT 1)")  # noqa: S608
    return "COALESCE(" + ", ".join(parts) + ")", params


def _merge_accounts(run: SyncRun, connector: ConnectorInstance, response: SyncResponse, result: ChunkResult) -> None:
    rows = [(a.native_id, a.username or "", a.status, a.identity_external_id,
             a.last_login_at.isoformat() if a.last_login_at else None, json.dumps(a.attributes))
            for a in response.accounts]
    if not rows:
        return
    _copy("stage_account", ("native_id", "username", "status", "identity_external_id", "last_login_at",
                            "attributes"), rows)
    correlation, params = _correlation_sql(connector)
    sql = f"""  -- the correlation expression is built from whitelisted columns only
    INSERT INTO access_account (id, application_id, identity_id, native_id, username, status, last_login_at,
        attributes, created_at, updated_at)
    SELECT gen_random_uuid(), %s, {correlation}, s.native_id, s.username, s.status, s.last_login_at::timestamptz,
        s.attributes::jsonb, now(), now()
    FROM (SELECT DISTINCT ON (native_id) * FROM stage_account ORDER BY native_id) s
    ON CONFLICT (application_id, native_id) DO UPDATE SET
        username = EXCLUDED.username, status = EXCLUDED.status, last_login_at = EXCLUDED.last_login_at,
        attributes = EXCLUDED.attributes, identity_id = COALESCE(EXCLUDED.identity_id, access_account.identity_id),
        updated_at = now()
    WHERE (access_account.username, access_account.status, access_account.last_login_at, access_account.attributes,
           access_account.identity_id)
        IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.status, EXCLUDED.last_login_at, EXCLUDED.attributes,
           COALESCE(EXCLUDED.identity_id, access_account.identity_id))
    RETURNING (xmax = 0)
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [connector.application_id, *params])
        flags = [row[0] for row in cursor.fetchall()]
    _seen(run, "a", "stage_account", "s.native_id")
    result.counts["accounts_created"] += sum(flags)
    result.counts["accounts_updated"] += len(flags) - sum(flags)
    result.counts["accounts_unchanged"] += len({r[0] for r in rows}) - len(flags)


def _merge_entitlements(connector: ConnectorInstance, response: SyncResponse, result: ChunkResult) -> None:
    rows = [(e.value, e.display_name or "", e.type, e.description or "", e.risk_level or "low",
             "true" if e.requestable is None else str(e.requestable).lower()) for e in response.entitlements]
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
    result.counts["entitlements_unchanged"] += len({r[0] for r in rows}) - len(flags)


def _merge_grants(run: SyncRun, connector: ConnectorInstance, response: SyncResponse, result: ChunkResult) -> None:
    rows = [(g.entitlement_value, g.account_native_id, g.identity_external_id) for g in response.grants]
    if not rows:
        return
    _copy("stage_grant", ("entitlement_value", "account_native_id", "identity_external_id"), rows)
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE TEMP TABLE IF NOT EXISTS resolved_grant (entitlement_id uuid, account_id uuid, identity_id uuid,
                entitlement_value text, account_native_id text, identity_external_id text) ON COMMIT DROP;
            TRUNCATE resolved_grant;
            INSERT INTO resolved_grant
            SELECT e.id, a.id, CASE WHEN a.id IS NULL THEN i.id END, s.entitlement_value, s.account_native_id,
                   s.identity_external_id
            FROM stage_grant s
            LEFT JOIN access_entitlement e ON e.application_id = %(app)s AND e.value = s.entitlement_value
            LEFT JOIN access_account a ON a.application_id = %(app)s AND a.native_id = s.account_native_id
            LEFT JOIN identities_identity i ON i.external_id = s.identity_external_id
        """, {"app": connector.application_id})
        cursor.execute("""
            INSERT INTO access_grant (id, identity_id, account_id, entitlement_id, source, source_reference,
                granted_by, state, created_at)
            SELECT gen_random_uuid(), r.identity_id, r.account_id, r.entitlement_id, 'sync', %s, 'sync', 'active', now()
            FROM resolved_grant r
            WHERE r.entitlement_id IS NOT NULL AND (r.account_id IS NOT NULL OR r.identity_id IS NOT NULL)
            ON CONFLICT DO NOTHING
        """, [str(connector.pk)])
        created = cursor.rowcount
        cursor.execute("""
            SELECT entitlement_value, account_native_id, identity_external_id, entitlement_id IS NULL
            FROM resolved_grant WHERE entitlement_id IS NULL OR (account_id IS NULL AND identity_id IS NULL)
            LIMIT 1000
        """)
        unresolved = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM resolved_grant WHERE entitlement_id IS NULL "
                       "OR (account_id IS NULL AND identity_id IS NULL)")
        unresolved_count = cursor.fetchone()[0]
    if not run.incremental:
        # Seen grants are recorded by id: the deletion pass is then a plain anti-join.
        with connection.cursor() as cursor:
            cursor.execute("""
                INSERT INTO connectors_syncseen (run_id, kind, key)
                SELECT %(run)s, 'g', g.id::text FROM resolved_grant r
                JOIN access_grant g ON g.entitlement_id = r.entitlement_id AND g.account_id = r.account_id
                WHERE r.account_id IS NOT NULL AND g.source = 'sync' AND g.state = 'active'
                UNION ALL
                SELECT %(run)s, 'g', g.id::text FROM resolved_grant r
                JOIN access_grant g ON g.entitlement_id = r.entitlement_id AND g.identity_id = r.identity_id
                WHERE r.account_id IS NULL AND r.identity_id IS NOT NULL AND g.account_id IS NULL
                  AND g.source = 'sync' AND g.state = 'active'
            """, {"run": run.pk})
    result.counts["grants_created"] += created
    result.counts["grants_unchanged"] += len(rows) - created - unresolved_count
    for value, account, identity, no_entitlement in unresolved:
        what = f"unknown entitlement {value!r}" if no_entitlement else "unknown account or identity"
        result.errors.append(RecordError(kind="grant", key=f"{account or identity} -> {value}", error=what))


def merge_chunk(run: SyncRun, connector: ConnectorInstance, response: SyncResponse) -> ChunkResult:
    """Merge one chunk, in the caller's transaction. Order matters: grants refer to the rest."""
    result = ChunkResult(errors=list(response.record_errors))
    if connector.authoritative:
        _merge_identities(run, response, result)
    _merge_entitlements(connector, response, result)
    _merge_accounts(run, connector, response, result)
    _merge_grants(run, connector, response, result)
    link_managers()
    result.counts["errors"] += len(result.errors)
    return result


# --- after the chunks --------------------------------------------------------------------------

_RELINK = """
UPDATE identities_identity c SET manager_id = m.id
FROM identities_identity m
WHERE c.manager_external_id <> '' AND m.external_id = c.manager_external_id AND m.id <> c.id
  AND c.manager_id IS DISTINCT FROM m.id
"""

_REPATH = """
WITH RECURSIVE tree AS (
    SELECT id, replace(id::text, '-', '') || '/' AS path, 0 AS depth
    FROM identities_identity WHERE manager_id IS NULL
    UNION ALL
    SELECT c.id, t.path || replace(c.id::text, '-', '') || '/', t.depth + 1
    FROM identities_identity c JOIN tree t ON c.manager_id = t.id
    WHERE t.depth < 500
)
UPDATE identities_identity i SET path = tree.path, depth = tree.depth
FROM tree WHERE i.id = tree.id AND (i.path IS DISTINCT FROM tree.path OR i.depth <> tree.depth)
"""


def link_managers() -> None:
    """Point every identity at the manager its source named, once that manager exists."""
    with connection.cursor() as cursor:
        cursor.execute(_RELINK)


def rebuild_paths() -> list[str]:
    """Recompute the manager paths in one statement; break (and report) manager cycles."""
    with connection.cursor() as cursor:
        cursor.execute(_REPATH)
        # Identities unreachable from a root sit in a cycle: detach them and report.
        cursor.execute("""
            WITH RECURSIVE tree AS (
                SELECT id FROM identities_identity WHERE manager_id IS NULL
                UNION ALL SELECT c.id FROM identities_identity c JOIN tree t ON c.manager_id = t.id
            )
            UPDATE identities_identity i SET manager_id = NULL, path = replace(i.id::text, '-', '') || '/', depth = 0
            WHERE i.id NOT IN (SELECT id FROM tree)  -- a hashed anti-join, not a scan per row
            RETURNING external_id
        """)
        cycles = [row[0] for row in cursor.fetchall()]
        if cycles:
            cursor.execute(_REPATH)
    return cycles


def finish(run: SyncRun, connector: ConnectorInstance) -> Counter:
    """After the last chunk: paths, and for a full sync, what disappeared. Caller's transaction."""
    counts: Counter = Counter()
    cycles = rebuild_paths()
    counts["manager_cycles"] = len(cycles)
    if not run.incremental:
        with connection.cursor() as cursor:
            # Fresh statistics, or the planner takes the just-filled table for empty and picks a
            # nested loop over every seen key for every row (quadratic); with them, a hash anti-join.
            cursor.execute("ANALYZE connectors_syncseen")
            cursor.execute("""
                UPDATE access_account a SET status = 'deleted', updated_at = now()
                WHERE a.application_id = %s AND a.status <> 'deleted' AND NOT EXISTS (
                    SELECT 1 FROM connectors_syncseen s WHERE s.run_id = %s AND s.kind = 'a' AND s.key = a.native_id)
            """, [connector.application_id, run.pk])
            counts["accounts_deleted"] = cursor.rowcount
            cursor.execute("""
                UPDATE access_grant g SET state = 'ended', ended_at = now()
                WHERE g.source = 'sync' AND g.source_reference = %s AND g.state = 'active'
                  AND NOT EXISTS (SELECT 1 FROM connectors_syncseen s
                                  WHERE s.run_id = %s AND s.kind = 'g' AND s.key = g.id::text)
            """, [str(connector.pk), run.pk])
            counts["grants_deleted"] = cursor.rowcount
            if connector.authoritative:
                cursor.execute("""
                    SELECT i.id FROM identities_identity i
                    WHERE i.status <> 'terminated' AND i.source = %s AND NOT EXISTS (
                        SELECT 1 FROM connectors_syncseen s WHERE s.run_id = %s AND s.kind = 'i'
                          AND s.key = i.external_id)
                """, [f"connector:{connector.pk}", run.pk])
                gone = [row[0] for row in cursor.fetchall()]
                if gone:
                    cursor.execute("UPDATE identities_identity SET status = 'terminated', updated_at = now() "
                                   "WHERE id = ANY(%s) RETURNING id, department, title, location, 'active', "
                                   "manager_external_id", [gone])
                    _identity_events([], cursor.fetchall())
                counts["identities_deleted"] = len(gone)
    from connectors.models import SyncSeen

    SyncSeen.objects.filter(run=run)._raw_delete(connection.alias)
    return counts
