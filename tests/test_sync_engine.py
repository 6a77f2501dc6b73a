"""The sync engine's fast paths: first load, unchanged rows untouched, placement at insert, seen tables."""

from __future__ import annotations

import gc
import sys
import time
import uuid
from typing import ClassVar
from unittest import mock

import psycopg
import pytest
from django.db import connection, transaction
from django_tenants.utils import tenant_context

from access.models import Account, Entitlement, Grant, Role
from connectors import services
from connectors.base import Connector, register
from connectors.models import ConnectorInstance, SyncRun
from connectors.protocol import v1
from connectors.sync import engine, runner
from identities import lifecycle
from identities.models import Identity, LifecycleEvent
from rapidvalue.webhooks.models import WebhookEvent, WebhookSubscription


@register
class ScriptedConnector(Connector):
    """Returns ``ScriptedConnector.chunks`` one by one (a list of SyncResponse keyword dicts)."""

    type = "test-scripted"
    capabilities: ClassVar[v1.Capabilities] = v1.Capabilities(sync_identities=True, sync_accounts=True,
                                                              sync_grants=True, paging=True, authoritative=True)
    chunks: ClassVar[list[dict]] = []
    seen_gc_thresholds: ClassVar[list[tuple]] = []

    def test_connection(self, request):
        return v1.TestConnectionResponse(success=True)

    def sync(self, request):
        self.seen_gc_thresholds.append(gc.get_threshold())
        index = int(request.cursor or 0)
        more = index + 1 < len(self.chunks)
        return v1.SyncResponse(**{"success": True, "has_more": more, "next_cursor": str(index + 1) if more else None,
                                  **self.chunks[index]})


def person(external_id: str, manager: str | None = None, department: str = "Eng") -> v1.RemoteIdentity:
    return v1.RemoteIdentity(external_id=external_id, email=f"{external_id}@x.example", first_name=external_id,
                             last_name="X", department=department, manager_external_id=manager)


def account(native_id: str, owner: str | None = None) -> v1.RemoteAccount:
    return v1.RemoteAccount(native_id=native_id, username=native_id, identity_external_id=owner)


def grant(value: str, native_id: str) -> v1.RemoteGrant:
    return v1.RemoteGrant(entitlement_value=value, account_native_id=native_id)


ENTITLEMENTS = [v1.RemoteEntitlement(value="g1"), v1.RemoteEntitlement(value="g2")]


@pytest.fixture
def connector(world, db):
    with tenant_context(world.acme.tenant):
        yield services.create_connector(name="Scripted", type="test-scripted", authoritative=True)


def sync(world, connector: ConnectorInstance, chunks: list[dict]) -> SyncRun:
    ScriptedConnector.chunks = chunks
    with tenant_context(world.acme.tenant):
        run, _ = services.start_sync(ConnectorInstance.objects.get(pk=connector.pk))
        runner.execute(run.pk)
        run.refresh_from_db()
        return run


def in_acme(world, fn):
    with tenant_context(world.acme.tenant):
        return fn()


def test_first_load_creates_a_grant_repeated_across_and_within_chunks_once(world, connector):
    chunks = [
        {"entitlements": ENTITLEMENTS, "accounts": [account("a1"), account("a2")],
         "grants": [grant("g1", "a1"), grant("g1", "a1"), grant("g2", "a2")]},
        {"accounts": [account("a3")], "grants": [grant("g1", "a1"), grant("g1", "a3")]},
    ]
    run = sync(world, connector, chunks)
    assert run.status == "succeeded", run.error
    assert run.counts["grants_created"] == 3 and run.counts["grants_unchanged"] == 2
    held = in_acme(world, lambda: sorted(Grant.objects.filter(state="active").values_list(
        "account__native_id", "entitlement__value")))
    assert held == [("a1", "g1"), ("a2", "g2"), ("a3", "g1")]
    # Not a first load any more: the same source changes nothing, and what went away is ended.
    again = sync(world, connector, [chunks[0], {"accounts": [account("a3")], "grants": [grant("g1", "a1")]}])
    assert again.status == "succeeded", again.error
    assert again.counts.get("grants_created", 0) == 0 and again.counts["grants_deleted"] == 1
    ended = in_acme(world, lambda: list(Grant.objects.filter(state="ended").values_list("account__native_id",
                                                                                         flat=True)))
    assert ended == ["a3"]


def test_a_resync_of_the_same_source_writes_no_row(world, connector):
    chunks = [{"entitlements": ENTITLEMENTS, "identities": [person("boss"), person("ann", "boss")],
               "accounts": [account("a1", "ann")], "grants": [grant("g1", "a1")]}]
    assert sync(world, connector, chunks).status == "succeeded"
    stamps = in_acme(world, lambda: (list(Identity.objects.order_by("pk").values_list("updated_at", flat=True)),
                                     list(Account.objects.order_by("pk").values_list("updated_at", flat=True))))
    run = sync(world, connector, chunks)
    assert run.counts["identities_unchanged"] == 2 and run.counts["accounts_unchanged"] == 1
    assert run.counts["grants_unchanged"] == 1
    assert not {k for k, v in run.counts.items() if v and k.endswith(("_created", "_updated", "_deleted"))}
    assert in_acme(world, lambda: (list(Identity.objects.order_by("pk").values_list("updated_at", flat=True)),
                                   list(Account.objects.order_by("pk").values_list("updated_at", flat=True)))) == stamps
    # A changed account is updated, and only it.
    chunks[0]["accounts"] = [account("a1", "boss")]
    run = sync(world, connector, chunks)
    assert run.counts["accounts_updated"] == 1
    assert in_acme(world, lambda: Account.objects.get(native_id="a1").identity.external_id) == "boss"


def test_grants_held_by_an_identity_are_found_again_and_ended_when_gone(world, connector):
    direct = v1.RemoteGrant(entitlement_value="g2", identity_external_id="ann")
    # An account the application does not know: the grant falls back to the identity it names.
    unknown = v1.RemoteGrant(entitlement_value="g1", account_native_id="nope", identity_external_id="ann")
    chunks = [{"entitlements": ENTITLEMENTS, "identities": [person("ann")], "accounts": [account("a1", "ann")],
               "grants": [grant("g1", "a1"), direct, unknown, v1.RemoteGrant(entitlement_value="zz",
                                                                            account_native_id="a1")]}]
    first = sync(world, connector, chunks)
    assert first.counts["grants_created"] == 3 and first.counts["errors"] == 1

    def held():
        return sorted(Grant.objects.filter(state="active").values_list(
            "pk", "account__native_id", "identity__external_id", "entitlement__value"))

    before = in_acme(world, held)
    again = sync(world, connector, chunks)
    assert again.counts.get("grants_created", 0) == 0 and again.counts["grants_unchanged"] == 3
    assert again.counts["grants_deleted"] == 0 and in_acme(world, held) == before
    errors = in_acme(world, lambda: list(again.record_errors.values_list("key", "error")))
    assert errors == [("a1 -> zz", "unknown entitlement 'zz'")]
    chunks[0]["grants"] = [grant("g1", "a1"), unknown]
    last = sync(world, connector, chunks)
    assert last.counts["grants_deleted"] == 1 and last.counts["grants_unchanged"] == 2
    assert in_acme(world, held) == [g for g in before if g[3] != "g2"]


def test_a_resync_locks_and_writes_only_the_identities_that_changed(world, connector):
    """An unchanged identity is neither updated nor locked (FOR UPDATE writes the row's xmax too)."""
    chunks = [{"identities": [person("boss"), person("ann", "boss"), person("bob", "boss")]}]
    assert sync(world, connector, chunks).status == "succeeded"

    def row_versions():
        with connection.cursor() as cursor:
            cursor.execute("SELECT external_id, xmin::text, xmax::text FROM identities_identity ORDER BY 1")
            return {key: (xmin, xmax) for key, xmin, xmax in cursor.fetchall()}

    with connection.cursor() as cursor:  # the rows as committed: later writes and locks show in xmin/xmax
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    before = in_acme(world, row_versions)
    chunks[0]["identities"][1] = person("ann", "boss", department="Sales")
    run = sync(world, connector, chunks)
    assert run.counts["identities_updated"] == 1 and run.counts["identities_unchanged"] == 2
    after = in_acme(world, row_versions)
    assert after["boss"] == before["boss"] and after["bob"] == before["bob"]
    assert after["ann"] != before["ann"]
    moves = in_acme(world, lambda: list(LifecycleEvent.objects.filter(kind="mover").values_list("changes", flat=True)))
    assert moves == [{"department": ["Eng", "Sales"]}]


TWO_CHUNKS = [{"entitlements": ENTITLEMENTS, "identities": [person(f"p{i}") for i in range(5)],
               "accounts": [account(f"a{i}", f"p{i}") for i in range(5)],
               "grants": [grant("g1", f"a{i}") for i in range(5)]},
              {"identities": [person("p9")]}]


def test_a_run_relaxes_the_gc_only_while_it_runs(world, connector):
    ScriptedConnector.seen_gc_thresholds = []
    before = gc.get_threshold()
    assert sync(world, connector, TWO_CHUNKS).status == "succeeded"
    assert ScriptedConnector.seen_gc_thresholds == [runner.RUN_GC_THRESHOLDS] * 2
    assert gc.get_threshold() == before != runner.RUN_GC_THRESHOLDS
    # Overlapping runs (threads of one worker): the settings come back when the last one ends,
    # and the oldest generation, seldom collected meanwhile, is collected then.
    interval = sys.getswitchinterval()
    gc.collect(1)  # counts one collection of generation 1 towards the next of generation 2
    with runner._run_tuning():
        with runner._run_tuning():
            assert sys.getswitchinterval() == runner.RUN_SWITCH_INTERVAL
        assert gc.get_threshold() == runner.RUN_GC_THRESHOLDS and gc.get_count()[2] > 0
    assert (gc.get_threshold(), sys.getswitchinterval()) == (before, interval)
    assert gc.get_count()[2] == 0


def test_synced_rows_get_time_ordered_ids(world, connector):
    assert sync(world, connector, TWO_CHUNKS).status == "succeeded"

    def ids(model, key):
        return [uuid.UUID(str(pk)) for pk in model.objects.order_by(key).values_list("pk", flat=True)]

    for model, key in ((Identity, "external_id"), (Account, "native_id"), (Grant, "account__native_id")):
        created = in_acme(world, lambda model=model, key=key: ids(model, key))
        assert {pk.version for pk in created} == {7}, model
        # One statement's rows share its time-ordered prefix; their counters are consecutive.
        first_chunk = created[:5]
        assert len({pk.hex[:20] for pk in first_chunk}) == 1, model
        counters = sorted(int(pk.hex[20:], 16) for pk in first_chunk)
        assert counters == list(range(counters[0], counters[0] + 5)), model
    p9 = in_acme(world, lambda: Identity.objects.get(external_id="p9").pk)
    assert p9.hex[:20] > in_acme(world, lambda: Identity.objects.get(external_id="p0").pk).hex[:20]
    # Statements of one process never share a prefix, even within a millisecond: each is greater.
    prefixes = [engine._new_ids()["ids"] for _ in range(10_000)]
    assert prefixes == sorted(set(prefixes)) and len(prefixes) == 10_000
    assert all(uuid.UUID(prefix + "000000000000").version == 7 for prefix in prefixes[:100])
    later = time.time_ns() // 1_000_000 + 60_000
    # The last 26-bit value of a millisecond: the next statement borrows the following millisecond.
    with mock.patch.object(engine, "_last_prefix", (later, 2**26 - 1)):
        assert engine._new_ids()["ids"] == str(uuid.UUID(int=(later + 1) << 80 | 7 << 76 | 2 << 62))[:24]


def test_identities_are_placed_at_insert_or_in_finish(world, connector):
    chunks = [
        {"identities": [person("ceo"), person("vp", "ceo"), person("dev", "vp"), person("late", "mgr")]},
        {"identities": [person("mgr", "ceo"), person("a", "b"), person("b", "a")]},
    ]
    run = sync(world, connector, chunks)
    assert run.status == "succeeded", run.error
    assert run.counts["manager_cycles"] == 2  # a and b name each other
    people = in_acme(world, lambda: {i.external_id: i for i in Identity.objects.all()})
    ceo, vp, dev, mgr, late = (people[k] for k in ("ceo", "vp", "dev", "mgr", "late"))
    assert dev.manager_id == vp.pk and dev.depth == 2 and dev.path == ceo.path + vp.path[-33:] + dev.path[-33:]
    # Placed in finish(): the manager arrived in a later chunk.
    assert late.manager_id == mgr.pk and late.depth == 2 and late.path.startswith(mgr.path)
    assert [(people[k].manager_id, people[k].depth) for k in "ab"] == [(None, 0), (None, 0)]  # detached
    joiners = in_acme(world, lambda: LifecycleEvent.objects.filter(kind="joiner", source="sync").count())
    assert joiners == 7


def test_a_run_whose_seen_keys_are_lost_fails_and_deletes_nothing(world, connector):
    first = [{"entitlements": ENTITLEMENTS, "accounts": [account("a1"), account("gone")]}]
    assert sync(world, connector, first).status == "succeeded"
    chunks = [{"accounts": [account("a1")]}, {"accounts": [account("a2")]}]
    with mock.patch.object(runner.callbacks, "send_progress", side_effect=lambda run, **kw: engine.discard()):
        run = sync(world, connector, chunks)
    assert run.status == "failed" and "rv_seen_" in run.error
    assert in_acme(world, lambda: Account.objects.get(native_id="gone").status) == "active"


def test_joiners_without_subscribers_are_recorded_from_ids_and_refused_with_one(world, db):
    with tenant_context(world.acme.tenant):
        person_ = Identity.objects.create(external_id="solo", email="solo@x.example")
        assert lifecycle.record_events(lifecycle.JOINER, [person_.pk]) == 1
        assert LifecycleEvent.objects.get(identity=person_).kind == "joiner"
        with pytest.raises(RuntimeError):
            lifecycle.record_events(lifecycle.LEAVER, [person_.pk])  # access removes a leaver's grants


# --- a first load: indexes and foreign keys set aside, rebuilt at the end -------------------------

FIRST_LOAD_CHUNKS = [
    {"entitlements": ENTITLEMENTS, "identities": [person("ceo"), person("ann", "ceo"), person("bob", "late")],
     "accounts": [account("a1", "ann"), account("a2", "bob")],
     "grants": [grant("g1", "a1"), grant("g1", "a1"), grant("g2", "a2"), grant("nope", "a1")]},
    # A grant repeated from the chunk before, a manager who comes after their report.
    {"identities": [person("late", "ceo")], "accounts": [account("a3", "late"), account("a3", "late"),
                                                        account("a1", "ann")],
     "grants": [grant("g1", "a1"), grant("g2", "a3"),
                v1.RemoteGrant(entitlement_value="g2", identity_external_id="late")]},
]


def catalog() -> list[tuple]:
    """Every index and constraint on the tables a first load sets aside, or that refer to them."""
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT 'index', c.relname, pg_get_indexdef(i.indexrelid), true FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = ANY(%(t)s::regclass[])
            UNION ALL
            SELECT 'constraint', conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint
            WHERE conrelid = ANY(%(t)s::regclass[]) OR confrelid = ANY(%(t)s::regclass[])
            ORDER BY 1, 2
        """, {"t": [*engine.FIRST_LOAD_TABLES, *engine.FIRST_LOAD_REFERENCED]})
        return cursor.fetchall()


def loaded() -> dict:
    """What the load left, by natural keys (ids differ from load to load)."""
    def rows(queryset) -> list[tuple]:
        return sorted(queryset, key=repr)

    return {
        "identities": rows(Identity.objects.values_list("external_id", "manager__external_id", "depth", "status")),
        "paths": sorted(len(p) for p in Identity.objects.values_list("path", flat=True)),
        "accounts": rows(Account.objects.values_list("native_id", "identity__external_id", "status")),
        "grants": rows(Grant.objects.values_list("account__native_id", "identity__external_id",
                                                 "entitlement__value", "state", "source")),
        "joiners": LifecycleEvent.objects.filter(kind="joiner").count(),
    }


def load(world, connector, chunks, *, first_load: bool) -> tuple[SyncRun, list, dict, mock.Mock]:
    """One run in a savepoint rolled back afterwards: (run, catalog after, data after, set_aside spy)."""
    from django.test import override_settings

    threshold = 0 if first_load else 10**9
    with override_settings(SYNC_FIRST_LOAD_MIN_RECORDS=threshold), \
            mock.patch.object(engine, "set_aside", wraps=engine.set_aside) as spy, transaction.atomic():
        run = sync(world, connector, chunks)
        after = in_acme(world, lambda: (catalog(), loaded()))
        transaction.set_rollback(True)
    return run, *after, spy


def test_a_first_load_ends_with_the_same_indexes_constraints_and_rows_as_a_normal_load(world, connector):
    before = in_acme(world, catalog)
    everything = [*engine.FIRST_LOAD_TABLES, *engine.FIRST_LOAD_REFERENCED]
    assert in_acme(world, lambda: engine.first_load_tables(connector)) == everything
    bulk, bulk_catalog, bulk_rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=True)
    spy.assert_called_once_with(everything)
    normal, normal_catalog, normal_rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=False)
    spy.assert_not_called()
    assert bulk.status == normal.status == "succeeded", (bulk.error, normal.error)
    assert bulk_catalog == normal_catalog == before
    assert all(validated for *_, validated in bulk_catalog)
    assert bulk_rows == normal_rows
    assert bulk_rows["grants"] == [("a1", None, "g1", "active", "sync"), ("a2", None, "g2", "active", "sync"),
                                   ("a3", None, "g2", "active", "sync"), (None, "late", "g2", "active", "sync")]
    assert {k: v for k, v in bulk.counts.items() if v} == {k: v for k, v in normal.counts.items() if v}
    assert bulk.counts["grants_created"] == 4 and bulk.counts["grants_unchanged"] == 2
    assert bulk.processed == normal.processed and bulk.progress == 100


def test_a_first_load_keeps_the_upkeep_of_tables_that_are_not_empty(world, connector):
    in_acme(world, lambda: Account.objects.create(application=connector.application, native_id="already"))
    with connection.cursor() as cursor:  # as committed: no deferred check pending (ALTER TABLE refuses those)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    run, after, rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=True)
    assert run.status == "succeeded", run.error
    spy.assert_called_once_with(["identities_identity", "identities_lifecycleevent", "access_entitlement",
                                 "access_grant", "access_role"])
    assert after == in_acme(world, catalog)
    assert len(rows["accounts"]) == 4 and len(rows["grants"]) == 4


def test_identities_without_lifecycle_events_are_no_first_load(world, connector):
    in_acme(world, lambda: Identity.objects.create(external_id="by-hand", email="by-hand@x.example"))
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert in_acme(world, lambda: LifecycleEvent.objects.exists()) is False
    # The events table is empty, but it follows the identities: neither is set aside.
    rest = ["access_entitlement", "access_account", "access_grant", "access_role"]
    assert in_acme(world, lambda: engine.first_load_tables(connector)) == rest
    run, after, rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=True)
    assert run.status == "succeeded", run.error
    spy.assert_called_once_with(rest)
    assert after == in_acme(world, catalog) and rows["joiners"] == 4

    def filled() -> list[str]:
        application = connector.application
        entitlement = Entitlement.objects.create(application=application, value="e-by-hand")
        Grant.objects.create(account=Account.objects.create(application=application, native_id="by-hand"),
                             entitlement=entitlement)
        Role.objects.create(name="by-hand")
        return engine.first_load_tables(connector)

    # Only the events table empty: no first load at all.
    with transaction.atomic():
        assert in_acme(world, filled) == []
        transaction.set_rollback(True)


def test_a_first_load_removes_repeated_sync_grants_only(world, connector):
    g2 = in_acme(world, lambda: Entitlement.objects.create(application=connector.application, value="g2"))
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def birthright(event: lifecycle.Event) -> None:  # a rehire: an ended grant and an active one
        if event.identity.external_id == "late":
            for state in ("ended", "active"):
                Grant.objects.create(identity=event.identity, entitlement=g2, source="birthright", state=state)

    lifecycle.subscribe(lifecycle.JOINER, birthright)
    try:
        run, _, rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=True)
    finally:
        lifecycle._subscribers[lifecycle.JOINER].remove(birthright)
    assert run.status == "succeeded", run.error
    assert "access_grant" in spy.call_args.args[0]
    assert run.counts["grants_created"] == 4 and run.counts["grants_unchanged"] == 2  # the repeats went
    assert [g for g in rows["grants"] if g[4] == "birthright"] == [(None, "late", "g2", "active", "birthright"),
                                                                  (None, "late", "g2", "ended", "birthright")]


def test_a_first_load_whose_tables_are_busy_loads_as_a_normal_one(world, connector, caplog):
    before = in_acme(world, catalog)
    *_, normal_rows, _ = load(world, connector, FIRST_LOAD_CHUNKS, first_load=False)
    db = connection.settings_dict
    # A long reader of one of the empty tables (a report, a console transaction left open).
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
                         port=db["PORT"]) as reader:
        reader.execute("SET idle_in_transaction_session_timeout = '30s'")  # never hangs the suite
        reader.execute(f"SET search_path TO {world.acme.tenant.schema_name}")
        reader.execute("SELECT count(*) FROM access_role").fetchone()
        with mock.patch.object(engine, "FIRST_LOAD_LOCK_TIMEOUT", "200ms"):
            started = time.monotonic()
            run, after, rows, spy = load(world, connector, FIRST_LOAD_CHUNKS, first_load=True)
            waited = time.monotonic() - started
        reader.rollback()
    assert run.status == "succeeded", run.error
    spy.assert_called_once()
    assert "busy for 200ms, loading as a normal run" in caplog.text and waited < 20
    assert after == before and rows == normal_rows


def test_a_first_load_leaves_the_sessions_timeouts_as_they_were(world, connector):
    from django.test import override_settings

    seen = []
    real_set_aside = engine.set_aside

    def set_aside_then_look(tables):
        aside = real_set_aside(tables)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
            seen.append(cursor.fetchone())
        return aside

    with connection.cursor() as cursor:  # the session's own values (rolled back with the test)
        cursor.execute("SET lock_timeout = '7s'; SET statement_timeout = '9min'")
    with override_settings(SYNC_FIRST_LOAD_MIN_RECORDS=0), transaction.atomic(), \
            mock.patch.object(engine, "set_aside", set_aside_then_look):
        assert sync(world, connector, FIRST_LOAD_CHUNKS).status == "succeeded"
        transaction.set_rollback(True)
    assert seen == [("7s", "9min")]


def test_a_source_takes_over_what_it_lists_and_ends_it_from_the_status_it_had(world, connector):
    first = [{"identities": [person("kept"), person("taken"), person("held")]}]
    assert sync(world, connector, first).status == "succeeded"

    def by_hand() -> None:
        Identity.objects.filter(external_id="taken").update(source="console")  # nothing else differs
        Identity.objects.filter(external_id="held").update(status="suspended")
        WebhookSubscription.objects.create(url="https://hooks.acme.example/leavers", secret_encrypted="x",
                                           event_types=["identity.deactivated", "identity.updated"])

    in_acme(world, by_hand)
    run = sync(world, connector, [{"identities": [person("kept"), person("taken")]}])
    assert run.status == "succeeded", run.error
    assert (run.counts["identities_updated"], run.counts["identities_unchanged"]) == (1, 1)
    assert run.counts["identities_deleted"] == 1
    people = in_acme(world, lambda: {i.external_id: i for i in Identity.objects.all()})
    assert people["taken"].source == f"connector:{connector.pk}" and people["held"].status == "terminated"
    payloads = in_acme(world, lambda: list(WebhookEvent.objects.filter(type="identity.deactivated")
                                           .values_list("payload", flat=True)))
    assert [p["changes"]["status"] for p in payloads] == [["suspended", "terminated"]]
    # Taken over with the same data: no identity.updated for a change nobody can see.
    assert in_acme(world, lambda: WebhookEvent.objects.filter(type="identity.updated").count()) == 0
    # Taken over, it ends when the source drops it.
    run = sync(world, connector, [{"identities": [person("kept")]}])
    assert run.counts["identities_deleted"] == 1
    assert in_acme(world, lambda: Identity.objects.get(external_id="taken").status) == "terminated"


def test_two_hr_sources_listing_the_same_people_do_not_take_them_from_each_other(world, connector):
    other = in_acme(world, lambda: services.create_connector(name="Scripted 2", type="test-scripted",
                                                             authoritative=True))
    people = [{"identities": [person("p1"), person("p2")]}]
    assert sync(world, connector, people).counts["identities_created"] == 2
    run = sync(world, other, people)
    assert (run.counts["identities_updated"], run.counts["identities_unchanged"]) == (0, 2)
    sources = in_acme(world, lambda: set(Identity.objects.values_list("source", flat=True)))
    assert sources == {f"connector:{connector.pk}"}
    # Disabled, it is a source like any other: an enabled one takes its people over.
    in_acme(world, lambda: ConnectorInstance.objects.filter(pk=connector.pk).update(enabled=False))
    assert sync(world, other, people).counts["identities_updated"] == 2


# Real failures, raised by PostgreSQL itself: a trigger refuses the second chunk's account, or
# corrupts the grants' entitlement ids so that re-adding their foreign key in finish() fails.
FAULTS = {
    "chunk": """
        CREATE FUNCTION pg_temp.rv_refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'directory row refused'; END $$;
        CREATE TRIGGER rv_fault BEFORE INSERT ON access_account FOR EACH ROW
            WHEN (NEW.native_id = 'a3') EXECUTE FUNCTION pg_temp.rv_refuse();
    """,
    "restore": """
        CREATE FUNCTION pg_temp.rv_corrupt() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN NEW.entitlement_id := gen_random_uuid(); RETURN NEW; END $$;
        CREATE TRIGGER rv_fault BEFORE INSERT ON access_grant FOR EACH ROW EXECUTE FUNCTION pg_temp.rv_corrupt();
    """,
}


@pytest.mark.parametrize("failure", ["connector", "chunk", "restore"])
def test_a_failed_first_load_leaves_every_index_constraint_and_no_row(world, connector, failure, settings):
    settings.SYNC_FIRST_LOAD_MIN_RECORDS = 0
    before = in_acme(world, catalog)
    chunks = [*FIRST_LOAD_CHUNKS, {"success": False}] if failure == "connector" else FIRST_LOAD_CHUNKS
    if failure in FAULTS:
        in_acme(world, lambda: connection.cursor().execute(FAULTS[failure]))
    with mock.patch.object(engine, "set_aside", wraps=engine.set_aside) as spy:
        run = sync(world, connector, chunks)
    spy.assert_called_once()
    assert run.status == "failed"
    expected = {"connector": "connector reported failure", "chunk": "directory row refused",
                "restore": "violates foreign key constraint"}[failure]
    assert expected in run.error
    if failure in FAULTS:
        in_acme(world, lambda: connection.cursor().execute(
            f"DROP TRIGGER rv_fault ON {'access_account' if failure == 'chunk' else 'access_grant'}"))
    assert in_acme(world, catalog) == before
    assert in_acme(world, lambda: (Identity.objects.count(), Account.objects.count(), Grant.objects.count())) \
        == (0, 0, 0)
