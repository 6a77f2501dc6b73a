"""Connector instances and the sync engine: full, incremental, deletions only after success."""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import pytest
from django_tenants.utils import tenant_context

from access.models import Account, Grant
from connectors import services
from connectors.base import Connector, register
from connectors.models import ConnectorInstance, SyncRun
from connectors.protocol import v1
from connectors.sync import runner
from identities.models import Identity, LifecycleEvent
from rapidvalue.audit.models import AuditEvent
from tests.conftest import assert_error

SECRET = "s3cr3t-Bind-Passw0rd"

HR_V1 = """external_id,email,first_name,last_name,department,manager_external_id
boss,boss@x.example,Bea,Boss,Exec,
ann,ann@x.example,Ann,A,Eng,boss
bob,bob@x.example,Bob,B,Eng,ann
cy,cy@x.example,Cy,C,Sales,boss
"""
ACCOUNTS_V1 = """native_id,username,identity_external_id
u-ann,ann,ann
u-bob,bob,
u-cy,cy,cy
u-ghost,ghost,
"""
ENTS = """value,display_name
g-eng,Engineering
g-all,Everyone
"""
GRANTS_V1 = """entitlement_value,account_native_id
g-eng,u-ann
g-eng,u-bob
g-all,u-ann
g-all,u-cy
g-nope,u-ann
"""


def csv_config(hr=HR_V1, accounts=ACCOUNTS_V1, grants=GRANTS_V1):
    return {"identities": {"content": hr}, "entitlements": {"content": ENTS}, "accounts": {"content": accounts},
            "grants": {"content": grants}}


@pytest.fixture
def hr(api, world):
    body = {"name": "HR file", "type": "csv", "config": csv_config(), "authoritative": True,
            "auth_config": {"password": SECRET},
            "correlation_rules": [{"account": "username", "identity": "email"}, {"account": "username",
                                                                                 "identity": "external_id"}]}
    response = api("acme", "admin").post("/api/v1/connectors", body)
    assert response.status_code == 201, response.body
    return response.body


def run_sync(world, connector_id, **kwargs) -> SyncRun:
    with tenant_context(world.acme.tenant):
        connector = ConnectorInstance.objects.get(pk=connector_id)
        run, _ = services.start_sync(connector, **kwargs)
        runner.execute(run.pk)
        run.refresh_from_db()
        return run


def acme(world, fn):
    with tenant_context(world.acme.tenant):
        return fn()


def test_credentials_are_write_only_encrypted_and_never_audited(api, world, hr, caplog):
    caplog.set_level(logging.DEBUG)
    client = api("acme", "admin")
    for body in (hr, client.get(f"/api/v1/connectors/{hr['id']}").body, client.get("/api/v1/connectors").body):
        assert SECRET not in json.dumps(body) and "auth_config" not in json.dumps(body)
    row = acme(world, lambda: ConnectorInstance.objects.get(pk=hr["id"]))
    assert SECRET not in row.auth_config_encrypted and services.auth_config_of(row) == {"password": SECRET}
    run_sync(world, hr["id"])
    trail = acme(world, lambda: json.dumps(list(AuditEvent.objects.values("before", "after", "changes"))))
    assert SECRET not in trail and SECRET not in caplog.text


@pytest.mark.parametrize("body", [
    {"name": "x", "type": "nope", "config": {}},
    {"name": "x", "type": "synthetic", "config": {"people": "many"}},
    {"name": "x", "type": "csv", "config": {"identities": {"path": "/no/such.csv"}}},
    {"name": "x", "type": "csv", "config": {}, "mode": "agent"},
    {"name": "x", "type": "synthetic", "config": {"people": 5}, "correlation_rules": [{"account": "x; DROP"}]},
])
def test_bad_connector_config_is_400_and_creates_nothing(api, world, body):
    response = api("acme", "admin").post("/api/v1/connectors", body)
    assert response.status_code == 400, response.body
    assert acme(world, ConnectorInstance.objects.count) == 0


def test_bad_sync_request_is_400_and_nothing_runs(api, world, hr):
    client = api("acme", "admin")
    for body in ({"chunk_size": 0}, {"max_records": -1}, {"callback_url": "not a url"}, {"incremental": "maybe"}):
        assert_error(client.post(f"/api/v1/connectors/{hr['id']}/sync", body), 400)
    assert acme(world, SyncRun.objects.count) == 0


def test_full_sync_merges_correlates_links_and_reports(api, world, hr):
    run = run_sync(world, hr["id"], chunk_size=3)
    assert run.status == "succeeded", run.error
    counts = run.counts
    assert counts["identities_created"] == 4 and counts["accounts_created"] == 4 and counts["grants_created"] == 4
    assert counts["errors"] == 1  # the grant on the unknown entitlement
    people = acme(world, lambda: {i.external_id: i for i in Identity.objects.filter(source__startswith="connector:")})
    assert people["bob"].manager_id == people["ann"].pk and people["ann"].manager_id == people["boss"].pk
    assert people["bob"].depth == 2 and people["bob"].path.startswith(people["boss"].path)
    accounts = acme(world, lambda: {a.native_id: a.identity_id for a in Account.objects.all()})
    assert accounts["u-ann"] == people["ann"].pk  # by the record
    assert accounts["u-bob"] == people["bob"].pk  # by the correlation rule username -> external_id
    assert accounts["u-ghost"] is None  # orphan
    joiners = acme(world, lambda: LifecycleEvent.objects.filter(kind="joiner", source="sync").count())
    assert joiners == 4
    client = api("acme", "admin")
    runs = client.get(f"/api/v1/connectors/{hr['id']}/sync-runs").body
    assert runs["items"][0]["status"] == "succeeded" and runs["items"][0]["progress"] == 100
    errors = client.get(f"/api/v1/connectors/{hr['id']}/sync-runs/{run.pk}/errors").body["items"]
    assert len(errors) == 1 and "g-nope" in errors[0]["key"]
    orphans = client.get("/api/v1/accounts?orphan=true").body["items"]
    assert [a["native_id"] for a in orphans] == ["u-ghost"]


def test_resync_updates_movers_leavers_and_deletes_only_what_disappeared(api, world, hr):
    run_sync(world, hr["id"])
    client = api("acme", "admin")
    hr_v2 = HR_V1.replace("cy,cy@x.example,Cy,C,Sales,boss\n", "").replace("bob,bob@x.example,Bob,B,Eng,ann",
                                                                         "bob,bob@x.example,Bob,B,Sales,boss")
    accounts_v2 = ACCOUNTS_V1.replace("u-ghost,ghost,\n", "")
    grants_v2 = GRANTS_V1.replace("g-all,u-ann\n", "")
    client.patch(f"/api/v1/connectors/{hr['id']}", {"config": csv_config(hr_v2, accounts_v2, grants_v2)})
    run = run_sync(world, hr["id"])
    assert run.status == "succeeded", run.error
    assert run.counts["identities_updated"] == 1 and run.counts["identities_deleted"] == 1
    assert run.counts["accounts_deleted"] == 1 and run.counts["grants_deleted"] == 1
    bob = acme(world, lambda: Identity.objects.get(external_id="bob"))
    boss = acme(world, lambda: Identity.objects.get(external_id="boss"))
    assert bob.department == "Sales" and bob.manager_id == boss.pk and bob.depth == 1
    mover = acme(world, lambda: LifecycleEvent.objects.get(kind="mover", identity=bob))
    assert mover.changes["department"] == ["Eng", "Sales"] and mover.changes["manager"] == ["ann", "boss"]
    cy = acme(world, lambda: Identity.objects.get(external_id="cy"))
    assert cy.status == "terminated"
    assert acme(world, lambda: LifecycleEvent.objects.filter(kind="leaver", identity=cy).exists())
    # The leaver's access went with them; the vanished account is marked deleted, not removed.
    assert acme(world, lambda: Account.objects.get(native_id="u-cy").status) == "disabled"
    assert acme(world, lambda: Account.objects.get(native_id="u-ghost").status) == "deleted"
    ann_all = acme(world, lambda: Grant.objects.get(account__native_id="u-ann", entitlement__value="g-all").state)
    assert ann_all == "ended"
    again = run_sync(world, hr["id"])
    assert again.counts["identities_unchanged"] == 3 and again.counts.get("identities_updated", 0) == 0


def test_incremental_sync_never_deletes(api, world, hr):
    run_sync(world, hr["id"])
    api("acme", "admin").patch(f"/api/v1/connectors/{hr['id']}", {"config": csv_config(HR_V1.splitlines()[0] + "\n")})
    run = run_sync(world, hr["id"], incremental=True)
    assert run.status == "succeeded" and run.counts.get("identities_deleted", 0) == 0
    assert acme(world, lambda: Identity.objects.filter(status="terminated").count()) == 0


@register
class FlakyConnector(Connector):
    """Fails on its second chunk, like a directory that drops the connection midway."""

    type = "test-flaky"
    capabilities: ClassVar[v1.Capabilities] = v1.Capabilities(sync_accounts=True, paging=True)
    fail = True

    def test_connection(self, request):
        return v1.TestConnectionResponse(success=True)

    def sync(self, request):
        start = int(request.cursor or 0)
        if start >= 2 and FlakyConnector.fail:
            raise ConnectionError("directory went away")
        accounts = [v1.RemoteAccount(native_id=f"acct-{n}") for n in range(start, start + 2)]
        return v1.SyncResponse(success=True, accounts=accounts, has_more=start < 2, next_cursor=str(start + 2),
                               total_estimate=4)


def test_a_run_killed_midway_deletes_nothing_and_the_next_run_completes(api, world):
    with tenant_context(world.acme.tenant):
        connector = services.create_connector(name="Flaky", type="test-flaky")
        stale = Account.objects.create(application=connector.application, native_id="acct-stale")
    FlakyConnector.fail = True
    try:
        failed = run_sync(world, connector.pk, chunk_size=2)
    finally:
        FlakyConnector.fail = False
    assert failed.status == "failed" and "directory went away" in failed.error
    assert acme(world, lambda: Account.objects.get(pk=stale.pk).status) == "active"  # nothing deleted
    assert acme(world, lambda: Account.objects.filter(native_id__in=["acct-0", "acct-1"]).count()) == 2
    done = run_sync(world, connector.pk, chunk_size=2)
    assert done.status == "succeeded" and done.counts["accounts_deleted"] == 1
    assert acme(world, lambda: Account.objects.get(pk=stale.pk).status) == "deleted"


def test_two_runs_of_one_connector_never_overlap_and_cancel(api, world, hr):
    client = api("acme", "admin")
    first = client.post(f"/api/v1/connectors/{hr['id']}/sync", {"incremental": False, "chunk_size": 1000})
    assert first.status_code == 202 and first.body["status"] == "queued"
    assert_error(client.post(f"/api/v1/connectors/{hr['id']}/sync", {}), 409, "sync_in_progress")
    cancelled = client.post(f"/api/v1/connectors/{hr['id']}/sync-runs/{first.body['id']}/cancel")
    assert cancelled.body["status"] == "cancelled"
    assert acme(world, lambda: runner.execute(first.body["id"])) == "skipped"
    assert client.post(f"/api/v1/connectors/{hr['id']}/sync", {}).status_code == 202
    assert_error(client.post(f"/api/v1/connectors/{hr['id']}/sync-runs/{first.body['id']}/cancel"), 409)


@pytest.mark.parametrize(("status", "column", "minutes", "error"), [
    ("running", "heartbeat_at", 16, "worker lost: no progress"),
    ("queued", "created_at", 60 + 16, "never started: its task was lost"),
])
def test_stuck_runs_stop_blocking_their_connector(api, world, hr, settings, status, column, minutes, error):
    """A running run without a heartbeat (its worker died) and a queued run older than any deferral
    (its task message was lost) are failed by the next start, which then goes ahead."""
    from datetime import timedelta

    from django.utils import timezone

    client = api("acme", "admin")
    settings.SYNC_AGENT_MAX_WAIT_SECONDS = 3600
    started = client.post(f"/api/v1/connectors/{hr['id']}/sync", {})
    assert started.status_code == 202
    run = SyncRun.objects.filter(pk=started.body["id"])
    acme(world, lambda: run.update(status=status, **{column: timezone.now() - timedelta(minutes=minutes - 2)}))
    assert_error(client.post(f"/api/v1/connectors/{hr['id']}/sync", {}), 409, "sync_in_progress")  # not yet
    acme(world, lambda: run.update(**{column: timezone.now() - timedelta(minutes=minutes)}))
    again = client.post(f"/api/v1/connectors/{hr['id']}/sync", {})
    assert again.status_code == 202, again.body
    old = acme(world, lambda: SyncRun.objects.get(pk=started.body["id"]))
    assert (old.status, old.error) == ("failed", error)


def test_identities_sync_triggers_the_authoritative_sources(api, world, hr):
    api("acme", "admin").post("/api/v1/connectors", {"name": "Directory", "type": "synthetic",
                                                      "config": {"people": 3}})
    started = api("acme", "admin").post("/api/v1/identities/sync", {})
    assert started.status_code == 202 and [r["connector"] for r in started.body] == [hr["id"]]


def test_test_connection_and_roles(api, world, hr):
    assert api("acme", "admin").post(f"/api/v1/connectors/{hr['id']}/test").body["success"] is True
    assert api("acme", "auditor").get(f"/api/v1/connectors/{hr['id']}").status_code == 200
    assert_error(api("acme", "auditor").post(f"/api/v1/connectors/{hr['id']}/sync", {}), 403, "read_only_role")
    assert_error(api("acme", "member").get("/api/v1/connectors"), 403)
    assert_error(api("globex", "admin").get(f"/api/v1/connectors/{hr['id']}"), 404)


@pytest.mark.parametrize("config", [
    {"url": "ldap://127.0.0.1:389", "base_dn": "dc=x"},
    {"url": "ldaps://10.0.0.5", "base_dn": "dc=x"},
])
def test_hosted_connectors_may_not_reach_private_networks(api, world, settings, config):
    settings.ALLOW_PRIVATE_TARGETS = False
    response = api("acme", "admin").post("/api/v1/connectors", {
        "name": "Corp LDAP", "type": "ldap", "config": config, "auth_config": {"bind_dn": "cn=x", "password": "p"}})
    assert_error(response, 400, "unsafe_target")
    assert acme(world, ConnectorInstance.objects.count) == 0
