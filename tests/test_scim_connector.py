"""The SCIM 2.0 connector against a real SCIM server (scim2-server, in memory, on a loopback port).

One server seeded with 230 users and 12 groups is shared by the read-only tests; tests that
change data (incremental, provisioning, deletions during a run, odd records) get a small server
of their own, so that the counts of the shared one stay exact whatever order tests run in.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from connectors.base import ConfigurationError, TransientConnectorError, connector_types
from connectors.builtin.scim import ScimConnector, ScimSettings
from connectors.dispatcher import ConnectorDispatcher
from connectors.protocol import v1
from connectors.protocol.v1 import OperationKind
from tests.scim_server import (
    ENTERPRISE,
    GROUP_SCHEMA,
    Directory,
    ScimServer,
    seed_directory,
    start_scim_server,
    user_payload,
)

REPO = Path(__file__).resolve().parent.parent
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@pytest.fixture(scope="session")
def shared() -> Iterator[tuple[ScimServer, Directory]]:
    server = start_scim_server()
    try:
        yield server, seed_directory(server, users=230, groups=12)
    finally:
        server.stop()


@pytest.fixture
def scim(shared) -> Iterator[tuple[ScimServer, Directory]]:
    """The shared server, with no leftover scripted fault and an empty request log."""
    server, _ = shared
    server.faults.clear()
    yield shared
    server.faults.clear()


@pytest.fixture
def fresh() -> Iterator:
    """A factory of private servers, for tests that change data."""
    servers: list[ScimServer] = []

    def make(users: int = 30, groups: int = 4) -> tuple[ScimServer, Directory]:
        server = start_scim_server()
        servers.append(server)
        return server, seed_directory(server, users=users, groups=groups)

    yield make
    for server in servers:
        server.stop()


def config_for(server: ScimServer, **extra) -> dict:
    return {"base_url": server.base_url, "allow_http": True, "retry_backoff_seconds": 0.01, **extra}


def auth_for(server: ScimServer) -> dict:
    return {"token": server.token}


def sync_all(server: ScimServer, config: dict, *, chunk_size: int = 1000, incremental: bool = False,
             last_sync_at: datetime | None = None, max_records: int | None = None,
             auth: dict | None = None) -> tuple[list[v1.SyncResponse], v1.SyncResponse]:
    """Pull chunk after chunk as the sync runner does; return the chunks and everything merged."""
    dispatcher = ConnectorDispatcher("scim")
    chunks: list[v1.SyncResponse] = []
    cursor = None
    while True:
        response = dispatcher.sync(v1.SyncRequest(
            connector_business_id="scim-1", incremental=incremental, last_sync_at=last_sync_at,
            auth_config=auth or auth_for(server), config=config, cursor=cursor, chunk_size=chunk_size,
            max_records=max_records))
        assert response.success, response.error
        chunks.append(response)
        assert len(chunks) < 100, "the cursor does not advance"
        if not response.has_more:
            assert response.next_cursor is None
            break
        cursor = response.next_cursor
    merged = v1.SyncResponse(success=True)
    for chunk in chunks:
        for name in ("identities", "accounts", "entitlements", "grants", "record_errors"):
            getattr(merged, name).extend(getattr(chunk, name))
    merged.total_estimate = chunks[-1].total_estimate
    return chunks, merged


def list_queries(server: ScimServer, endpoint: str) -> list[dict[str, str]]:
    return [{k: v[0] for k, v in parse_qs(query).items()} for method, path, query in server.faults.log
            if method == "GET" and path == f"/v2/{endpoint}"]


def provision(server: ScimServer, *operations: v1.ProvisioningOperation, **config) -> list[v1.OperationResult]:
    response = ConnectorDispatcher("scim").provision(v1.ProvisioningRequest(
        connector_business_id="scim-1", auth_config=auth_for(server), config=config_for(server, **config),
        operations=list(operations)))
    assert [r.operation_id for r in response.results] == [op.operation_id for op in operations]
    return response.results


def op(operation_id: str, kind: OperationKind, **fields) -> v1.ProvisioningOperation:
    return v1.ProvisioningOperation(operation_id=operation_id, kind=kind, **fields)


def test_registered_pure_python_and_capabilities():
    assert "scim" in connector_types()
    caps = ScimConnector.capabilities
    assert caps.sync_identities and caps.sync_accounts and caps.sync_entitlements and caps.sync_grants
    assert caps.incremental and caps.paging and set(caps.operations) == set(OperationKind)
    code = ("import sys; import connectors.builtin.scim;"
            "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- sync ------------------------------------------------------------------------------------------


def test_full_sync_in_chunks_reproduces_the_directory(scim):
    server, directory = scim
    chunks, everything = sync_all(server, config_for(server, page_size=50), chunk_size=80)

    # 242 resources in chunks of at most 80 resources, each fetched in pages of at most 50.
    assert len(chunks) == math.ceil(242 / 80)
    for chunk in chunks:
        assert len(chunk.accounts) + len(chunk.entitlements) <= 80
    assert [len(c.accounts) for c in chunks] == [80, 80, 70, 0]
    assert [len(c.entitlements) for c in chunks] == [0, 0, 10, 2]
    users_pages = [q for q in list_queries(server, "Users") if "filter" not in q]  # not the manager lookups
    assert users_pages and all(int(q["count"]) <= 50 for q in users_pages)
    assert [int(q["startIndex"]) for q in users_pages] == [1, 51, 81, 131, 161, 211]
    assert everything.record_errors == []

    by_id = {u.id: u for u in directory.users}
    accounts = {a.native_id: a for a in everything.accounts}
    assert set(accounts) == set(by_id) and len(everything.accounts) == 230
    identities = {i.external_id: i for i in everything.identities}
    assert set(identities) == {u.expected_external_id for u in directory.users}
    without_external_id = [u for u in directory.users if u.external_id is None]
    assert len(without_external_id) == 23  # they fall back to the SCIM id

    for index, user in enumerate(directory.users):
        account = accounts[user.id]
        assert account.username == user.user_name
        assert account.status == ("disabled" if index % 17 == 5 else "active")
        assert account.identity_external_id == user.expected_external_id
        identity = identities[user.expected_external_id]
        assert identity.email == f"user{index}@corp.example"  # the primary one, not the first
        assert (identity.first_name, identity.last_name) == (f"First{index}", f"Last{index}")
        assert identity.display_name == f"First{index} Last{index}"
        assert identity.department == user.department
        assert identity.title == ("Manager" if index < 30 else "Engineer")
        assert identity.status == account.status
        expected_manager = by_id[user.manager_id].expected_external_id if user.manager_id else None
        assert identity.manager_external_id == expected_manager
    assert sum(1 for i in everything.identities if i.manager_external_id) == sum(
        1 for u in directory.users if u.manager_id)
    # Managers without externalId are referenced by their SCIM id, the external id they were given.
    assert identities[directory.users[1].expected_external_id].manager_external_id == directory.users[0].id

    assert {(e.value, e.display_name) for e in everything.entitlements} == {
        (g.id, g.display_name) for g in directory.groups}
    expected_grants = {(g.id, m) for g in directory.groups for m in g.member_ids}
    grants = [(g.entitlement_value, g.account_native_id) for g in everything.grants]
    assert len(grants) == len(expected_grants) and set(grants) == expected_grants
    assert everything.total_estimate == 2 * 230 + 12 + len(expected_grants)
    assert chunks[0].total_estimate is not None and chunks[0].total_estimate >= 2 * 230 + 12


def test_page_size_within_a_chunk_and_max_records(scim):
    server, _ = scim
    chunks, everything = sync_all(server, config_for(server, page_size=7), chunk_size=500)
    assert len(chunks) == 1 and len(everything.accounts) == 230 and len(everything.entitlements) == 12
    assert len(list_queries(server, "Users")) == math.ceil(230 / 7)

    server.faults.clear()
    chunks, everything = sync_all(server, config_for(server, page_size=50), chunk_size=40, max_records=100)
    assert [len(c.accounts) for c in chunks] == [40, 40, 20]
    assert everything.entitlements == [] and not chunks[-1].has_more


def test_user_and_group_filters_restrict_the_listing(scim):
    server, directory = scim
    config = config_for(server, page_size=30, user_filter='userName sw "user01"',
                        group_filter='displayName eq "Group 03"')
    _, everything = sync_all(server, config, chunk_size=45)
    expected = {u.id for u in directory.users if u.user_name.startswith("user01")}
    assert len(expected) == 100 and {a.native_id for a in everything.accounts} == expected
    (group,) = everything.entitlements
    assert group.display_name == "Group 03"
    assert {g.account_native_id for g in everything.grants} == set(directory.groups[3].member_ids)
    # Managers outside the filter are still resolved (by a lookup on id).
    by_id = {u.id: u for u in directory.users}
    for identity, user in zip(everything.identities, (by_id[a.native_id] for a in everything.accounts), strict=True):
        assert identity.manager_external_id == (by_id[user.manager_id].expected_external_id
                                                if user.manager_id else None)
    lookups = [q for q in list_queries(server, "Users") if q.get("filter", "").startswith("id eq")]
    assert lookups and all(q["filter"].count("id eq") <= 20 for q in lookups)
    assert all(q["filter"] == 'userName sw "user01"' for q in list_queries(server, "Users")
               if not q.get("filter", "").startswith("id eq"))


def test_incremental_returns_only_what_changed(fresh):
    server, directory = fresh(users=40, groups=4)
    time.sleep(1.1)  # the lower bound is cut to whole seconds
    last_sync_at = datetime.now(UTC)
    time.sleep(0.05)
    changed = [directory.users[3], directory.users[13]]  # both have a manager
    with server.client() as client:
        for user in changed:
            assert client.patch(f"/Users/{user.id}", json={"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "title", "value": "Promoted"}]}).status_code in (200, 204)
        group = directory.groups[1]
        assert client.patch(f"/Groups/{group.id}", json={"schemas": [PATCH], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": directory.users[0].id}]}]}).status_code in (200, 204)

    config = config_for(server, page_size=10, incremental_overlap_seconds=0)
    _, delta = sync_all(server, config, chunk_size=25, incremental=True, last_sync_at=last_sync_at)
    assert {a.native_id for a in delta.accounts} == {u.id for u in changed}
    assert {i.title for i in delta.identities} == {"Promoted"}
    assert [e.value for e in delta.entitlements] == [group.id]
    assert {g.account_native_id for g in delta.grants} == {*group.member_ids, directory.users[0].id}
    assert delta.record_errors == []
    filters = [q.get("filter", "") for q in list_queries(server, "Users") + list_queries(server, "Groups")]
    since = last_sync_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f'meta.lastModified gt "{since}"' in filters
    # Managers of changed users are resolved even though they did not change.
    assert all(i.manager_external_id for i in delta.identities)

    # Combined with user_filter: "and", both sides in parentheses.
    server.faults.clear()
    config = config_for(server, incremental_overlap_seconds=0, user_filter='userName eq "user0003"')
    _, delta = sync_all(server, config, incremental=True, last_sync_at=last_sync_at)
    assert [a.native_id for a in delta.accounts] == [changed[0].id]
    assert f'(userName eq "user0003") and (meta.lastModified gt "{since}")' in [
        q.get("filter") for q in list_queries(server, "Users")]

    # Without last_sync_at an incremental request is a full listing.
    _, full = sync_all(server, config_for(server), incremental=True, last_sync_at=None)
    assert len(full.accounts) == 40


def test_incremental_falls_back_to_full_listing_when_the_filter_is_refused(scim):
    server, _ = scim
    for endpoint in ("/v2/Users", "/v2/Groups"):
        server.faults.fail_next(1, 400, endpoint, query_contains="meta.lastModified", scim_type="invalidFilter")
    chunks, everything = sync_all(server, config_for(server, page_size=50), chunk_size=100, incremental=True,
                                  last_sync_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert len(everything.accounts) == 230 and len(everything.entitlements) == 12
    notes = [e for e in everything.record_errors if "incremental filter" in e.error]
    assert {(e.kind, e.location) for e in notes} == {("account", "/Users"), ("entitlement", "/Groups")}
    assert len(everything.record_errors) == 2
    # Once refused, later chunks do not try the filter again.
    tried = [q for q in list_queries(server, "Users") if "meta.lastModified" in q.get("filter", "")]
    assert len(tried) == 1 and len(chunks) == 3


def test_retries_429_and_5xx_then_gives_up_with_a_transient_error(scim):
    server, _ = scim
    server.faults.fail_next(2, 503, "/v2/Users")
    server.faults.fail_next(1, 429, "/v2/Groups", retry_after="1")
    started = time.monotonic()
    _, everything = sync_all(server, config_for(server, page_size=100), chunk_size=300)
    assert len(everything.accounts) == 230 and time.monotonic() - started >= 1.0  # Retry-After honoured
    assert not server.faults.faults

    server.faults.fail_next(10, 502, "/v2/Users")
    request = v1.SyncRequest(connector_business_id="c", incremental=False, last_sync_at=None,
                             auth_config=auth_for(server), config=config_for(server, max_retries=2))
    with pytest.raises(TransientConnectorError) as caught:
        ScimConnector().sync(request)
    assert "HTTP 502" in str(caught.value) and "3 attempts" in str(caught.value)
    assert server.token not in str(caught.value)
    assert len(server.faults.faults) == 10 - 3


def test_deleting_users_during_a_run_does_not_hide_the_others(fresh):
    """Index paging shifts when users behind the position disappear; a full sync must still see everyone."""
    server, directory = fresh(users=60, groups=2)
    connector = ScimConnector()
    config = config_for(server, page_size=10)
    first = connector.sync(v1.SyncRequest(connector_business_id="c", incremental=False, last_sync_at=None,
                                          auth_config=auth_for(server), config=config, chunk_size=20))
    assert len(first.accounts) == 20 and first.has_more
    deleted = [a.native_id for a in first.accounts[:5]]
    with server.client() as client:
        for scim_id in deleted:
            assert client.delete(f"/Users/{scim_id}").status_code == 204
    seen = {a.native_id for a in first.accounts}
    cursor = first.next_cursor
    while cursor:
        chunk = connector.sync(v1.SyncRequest(connector_business_id="c", incremental=False, last_sync_at=None,
                                              auth_config=auth_for(server), config=config, chunk_size=20,
                                              cursor=cursor))
        assert len({a.native_id for a in chunk.accounts}) == len(chunk.accounts)  # no duplicate within a chunk
        seen |= {a.native_id for a in chunk.accounts}
        cursor = chunk.next_cursor
    assert {u.id for u in directory.users} - set(deleted) <= seen


def test_odd_records_are_reported_and_the_rest_goes_on(fresh):
    server, directory = fresh(users=12, groups=1)
    with server.client() as client:
        orphan = client.post("/Users", json=user_payload(900, external_id=None, manager_id="no-such-user"))
        assert orphan.status_code == 201
        orphan_id = orphan.json()["id"]
        parent = client.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "Parent", "members": [
            {"value": directory.groups[0].id, "type": "Group"}, {"value": directory.users[1].id},
            {"value": directory.users[1].id}]})
        assert parent.status_code == 201
        parent_id = parent.json()["id"]
    # external_id from externalId only: users without it keep their account but lose their identity.
    config = config_for(server, mapping={"external_id": "externalId", "location": []})
    _, everything = sync_all(server, config)
    assert len(everything.accounts) == 13
    no_external = {u.id for u in directory.users if u.external_id is None} | {orphan_id}
    assert {a.native_id for a in everything.accounts if a.identity_external_id is None} == no_external
    assert len(everything.identities) == 13 - len(no_external)
    errors = {(e.kind, e.key): e.error for e in everything.record_errors}
    assert all("no external id" in errors["identity", scim_id] for scim_id in no_external)
    assert "nested group" in errors["grant", f"{directory.groups[0].id} -> {parent_id}"]
    assert [g.account_native_id for g in everything.grants if g.entitlement_value == parent_id] == [
        directory.users[1].id]  # the duplicate member counted once

    # A manager reference to nobody: manager left empty, identity kept, reported.
    _, default_mapping = sync_all(server, config_for(server))
    orphan_identity = next(i for i in default_mapping.identities if i.external_id == orphan_id)
    assert orphan_identity.manager_external_id is None
    (error,) = [e for e in default_mapping.record_errors if e.kind == "identity"]
    assert error.key == orphan_id and "manager" in error.error


# --- test connection and failures --------------------------------------------------------------------


def test_connection_ok_wrong_token_unreachable_and_bad_filter(scim):
    server, _ = scim
    connector = ScimConnector()

    def check(config, auth=None):
        return connector.test_connection(v1.TestConnectionRequest(
            connector_business_id="c", auth_config=auth or auth_for(server), config=config))

    ok = check(config_for(server))
    assert ok.success and ok.details["users"] == 230 and ok.details["groups"] == 12
    assert ok.details["patch"] and ok.details["filter"] and "230 users" in ok.message

    wrong = check(config_for(server), {"token": "not-the-token"})
    assert not wrong.success and "401" in wrong.message and "auth_config" in wrong.message
    assert "not-the-token" not in json.dumps(wrong.model_dump())

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    unreachable = check({"base_url": f"http://127.0.0.1:{closed_port}/v2", "allow_http": True})
    assert not unreachable.success and "ConnectError" in unreachable.message
    assert time.monotonic() - started < 5  # no retries for a connection test

    bad_filter = check(config_for(server, user_filter='nosuchattribute eq "x"'))
    assert not bad_filter.success
    assert "config.user_filter" in bad_filter.message and "invalidFilter" in bad_filter.message

    invalid = check({"base_url": "http://example.test/scim"})
    assert not invalid.success and "https" in invalid.message


def test_sync_with_a_wrong_token_fails_cleanly(scim):
    server, _ = scim
    response = ScimConnector().sync(v1.SyncRequest(
        connector_business_id="c", incremental=False, last_sync_at=None, auth_config={"token": "wrong-secret-token"},
        config=config_for(server)))
    assert not response.success and "401" in (response.error or "") and "auth_config" in (response.error or "")
    assert "wrong-secret-token" not in response.model_dump_json()

    refused = ScimConnector().sync(v1.SyncRequest(
        connector_business_id="c", incremental=False, last_sync_at=None, auth_config=auth_for(server),
        config=config_for(server, user_filter='userName zz "x"')))
    assert not refused.success and "HTTP 400" in (refused.error or "")

    with pytest.raises(ConfigurationError, match="cursor"):
        ScimConnector().sync(v1.SyncRequest(connector_business_id="c", incremental=False, last_sync_at=None,
                                            auth_config=auth_for(server), config=config_for(server),
                                            cursor="not-a-cursor"))


def test_redirects_are_not_followed_and_a_missing_groups_endpoint_means_no_groups(scim):
    server, _ = scim
    server.faults.fail_next(1, 302, "/v2/Users")
    response = ScimConnector().sync(v1.SyncRequest(
        connector_business_id="c", incremental=False, last_sync_at=None, auth_config=auth_for(server),
        config=config_for(server)))
    assert not response.success and "redirects are not followed" in (response.error or "")

    server.faults.fail_next(3, 404, "/v2/Groups")
    _, everything = sync_all(server, config_for(server))
    assert len(everything.accounts) == 230 and everything.entitlements == [] and everything.grants == []


SECRET = "s3cr3t-value-never-echoed"


@pytest.mark.parametrize(("config", "auth", "message"), [
    ({}, {"token": SECRET}, "base_url is required"),
    ({"base_url": "http://scim.example/v2"}, {"token": SECRET}, "must use https"),
    ({"base_url": "ftp://scim.example/v2"}, {"token": SECRET}, "https://host"),
    ({"base_url": f"https://admin:{SECRET}@scim.example/v2"}, {"token": SECRET}, "must not carry credentials"),
    ({"base_url": "https://scim.example/v2?x=1"}, {"token": SECRET}, "query"),
    ({"base_url": "https://scim.example:99999/v2"}, {"token": SECRET}, "not a valid URL"),
    ({"base_url": "https://scim.example/v2", "allow_http": "yes"}, {"token": SECRET}, "allow_http"),
    ({"base_url": "https://scim.example/v2", "page_size": 0}, {"token": SECRET}, "page_size"),
    ({"base_url": "https://scim.example/v2", "page_size": "50"}, {"token": SECRET}, "page_size"),
    ({"base_url": "https://scim.example/v2", "timeout": 0}, {"token": SECRET}, "timeout"),
    ({"base_url": "https://scim.example/v2", "pagesize": 10}, {"token": SECRET}, "unknown keys"),
    ({"base_url": "https://scim.example/v2", "user_filter": ""}, {"token": SECRET}, "user_filter"),
    ({"base_url": "https://scim.example/v2", "mapping": {"email": "emails[type eq work]"}}, {"token": SECRET},
     "mapping.email"),
    ({"base_url": "https://scim.example/v2", "mapping": {"shoe_size": "x"}}, {"token": SECRET}, "unknown fields"),
    ({"base_url": "https://scim.example/v2", "mapping": {"external_id": []}}, {"token": SECRET}, "external_id"),
    ({"base_url": "https://scim.example/v2"}, {}, "needs token"),
    ({"base_url": "https://scim.example/v2"}, {"token": ""}, "token"),
    ({"base_url": "https://scim.example/v2"}, {"token": SECRET, "username": "u", "password": SECRET}, "not both"),
    ({"base_url": "https://scim.example/v2"}, {"username": "svc"}, "password is required"),
    ({"base_url": "https://scim.example/v2"}, {"username": "svc", "passwd": SECRET}, "unknown keys"),
])
def test_bad_config_is_refused_with_a_clear_message_and_no_secret(config, auth, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        ConnectorDispatcher("scim").validate(config, auth)
    assert SECRET not in str(caught.value)


def test_good_configs_are_accepted():
    ScimConnector.validate_config({"base_url": "https://scim.example/v2"}, {"token": SECRET})
    ScimConnector.validate_config({"base_url": "http://10.0.0.5:8080/scim", "allow_http": True, "page_size": 500,
                                   "mapping": {"department": "department", "employment_type": "userType"}},
                                  {"username": "svc", "password": SECRET})
    assert SECRET not in repr(ScimSettings.parse({"base_url": "https://scim.example/v2"}, {"token": SECRET}))
    assert SECRET not in repr(ScimSettings.parse({"base_url": "https://scim.example/v2"},
                                                 {"username": "svc", "password": SECRET}))


# --- provisioning ------------------------------------------------------------------------------------


def test_provisioning_round_trips_through_the_server(fresh):
    server, directory = fresh(users=10, groups=2)
    group = directory.groups[0]
    newcomer = v1.RemoteIdentity(external_id="emp-new-1", email="new.person@corp.example", first_name="New",
                                 last_name="Person", title="Analyst", department="Finance")
    (created,) = provision(server, op("c1", OperationKind.CREATE_ACCOUNT, username="new.person",
                                      identity=newcomer, attributes={"active": True, "userType": "Employee"}))
    assert created.success, created.error
    account_id = created.account_native_id
    with server.client() as client:
        def read(path):
            return client.get(path)

        user = read(f"/Users/{account_id}").json()
        assert user["userName"] == "new.person" and user["externalId"] == "emp-new-1" and user["active"] is True
        assert user["name"] == {"givenName": "New", "familyName": "Person"}
        assert user["emails"] == [{"value": "new.person@corp.example", "type": "work", "primary": True}]
        assert user[ENTERPRISE]["department"] == "Finance" and user["userType"] == "Employee"

        def members() -> list[str]:
            return [m["value"] for m in read(f"/Groups/{group.id}").json().get("members", [])]

        results = provision(
            server,
            op("d1", OperationKind.DISABLE_ACCOUNT, account_native_id=account_id),
            op("g1", OperationKind.ADD_GRANT, account_native_id=account_id, entitlement_value=group.id),
            op("g2", OperationKind.ADD_GRANT, account_native_id=account_id, entitlement_value=group.id),
        )
        assert all(r.success for r in results), results
        assert read(f"/Users/{account_id}").json()["active"] is False
        assert members().count(account_id) == 1  # adding twice is one membership

        # The sync sees what was written.
        _, everything = sync_all(server, config_for(server))
        account = next(a for a in everything.accounts if a.native_id == account_id)
        assert account.status == "disabled" and account.identity_external_id == "emp-new-1"
        assert (group.id, account_id) in {(g.entitlement_value, g.account_native_id) for g in everything.grants}

        results = provision(
            server,
            op("e1", OperationKind.ENABLE_ACCOUNT, account_native_id=account_id),
            op("r1", OperationKind.REMOVE_GRANT, account_native_id=account_id, entitlement_value=group.id),
            op("r2", OperationKind.REMOVE_GRANT, account_native_id=account_id, entitlement_value=group.id),
        )
        assert all(r.success for r in results), results
        assert read(f"/Users/{account_id}").json()["active"] is True
        assert account_id not in members() and set(members()) == set(group.member_ids)

        results = provision(server, op("x1", OperationKind.DELETE_ACCOUNT, account_native_id=account_id),
                            op("x2", OperationKind.DELETE_ACCOUNT, account_native_id=account_id))
        assert all(r.success for r in results), results
        assert read(f"/Users/{account_id}").status_code == 404


def test_provisioning_failures_are_per_operation(fresh):
    server, directory = fresh(users=5, groups=1)
    someone = directory.users[2]
    twin = v1.RemoteIdentity(external_id="emp-twin", email="twin@corp.example")
    results = provision(
        server,
        op("ok", OperationKind.CREATE_ACCOUNT, username="twin", identity=twin),
        op("again", OperationKind.CREATE_ACCOUNT, username="twin", identity=twin),  # our own retried create
        op("taken", OperationKind.CREATE_ACCOUNT, username=someone.user_name,
           identity=v1.RemoteIdentity(external_id="emp-other")),
        op("no-group", OperationKind.ADD_GRANT, account_native_id=someone.id, entitlement_value="no-such-group"),
        op("traversal", OperationKind.DISABLE_ACCOUNT, account_native_id=f"../Groups/{directory.groups[0].id}"),
        op("missing", OperationKind.ENABLE_ACCOUNT),
        op("after", OperationKind.DISABLE_ACCOUNT, account_native_id=someone.id),
    )
    by_id = {r.operation_id: r for r in results}
    assert by_id["ok"].success and by_id["again"].success
    assert by_id["again"].account_native_id == by_id["ok"].account_native_id
    assert not by_id["taken"].success and "already taken" in (by_id["taken"].error or "")
    assert not by_id["no-group"].success and "404" in (by_id["no-group"].error or "")
    assert not by_id["traversal"].success and "404" in (by_id["traversal"].error or "")
    assert not by_id["missing"].success and "account_native_id" in (by_id["missing"].error or "")
    assert by_id["after"].success  # earlier failures did not stop it
    assert not any(r.retryable for r in results)

    server.faults.fail_next(5, 503, "/v2/Users", method="PATCH")
    (flaky,) = provision(server, op("flaky", OperationKind.ENABLE_ACCOUNT, account_native_id=someone.id),
                         max_retries=1)
    assert not flaky.success and flaky.retryable and "503" in (flaky.error or "")

    (refused,) = ConnectorDispatcher("scim").provision(v1.ProvisioningRequest(
        connector_business_id="c", auth_config={"token": "wrong"}, config=config_for(server),
        operations=[op("denied", OperationKind.DELETE_ACCOUNT, account_native_id=someone.id)])).results
    assert not refused.success and not refused.retryable and "401" in (refused.error or "")
    with server.client() as client:
        assert client.get(f"/Users/{someone.id}").status_code == 200


def test_a_sync_run_writes_the_directory_through_the_engine(scim, api, world, settings):
    """The connector through the real pipeline: API-created instance, sync run, engine merge, stored rows."""
    from django_tenants.utils import tenant_context

    from access.models import Account, Entitlement, Grant
    from connectors import services
    from connectors.models import ConnectorInstance
    from connectors.sync import runner
    from identities.models import Identity

    settings.ALLOW_PRIVATE_TARGETS = True  # the SCIM server listens on loopback
    server, directory = scim
    created = api("acme", "admin").post("/api/v1/connectors", {
        "name": "Corp SCIM", "type": "scim", "config": config_for(server, page_size=50),
        "auth_config": auth_for(server)})
    assert created.status_code == 201, created.body
    with tenant_context(world.acme.tenant):
        connector = ConnectorInstance.objects.get(pk=created.body["id"])
        run, _ = services.start_sync(connector, chunk_size=100)
        assert runner.execute(run.pk) == "succeeded"
        run.refresh_from_db()
        application = connector.application
        accounts = dict(Account.objects.filter(application=application).values_list("native_id", "username"))
        assert accounts == {u.id: u.user_name for u in directory.users}
        assert set(Entitlement.objects.filter(application=application).values_list("value", flat=True)) == {
            g.id for g in directory.groups}
        stored = set(Grant.objects.filter(entitlement__application=application, state="active")
                     .values_list("entitlement__value", "account__native_id"))
        assert stored == {(g.id, m) for g in directory.groups for m in g.member_ids}
        # Not authoritative: accounts are correlated to identities, no identity is created from SCIM.
        assert not Identity.objects.filter(source=f"connector:{connector.pk}").exists()
        assert run.counts["accounts_created"] == len(directory.users)
        assert run.counts.get("errors", 0) == 0
