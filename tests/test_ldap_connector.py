"""The LDAP connector against a real OpenLDAP slapd (see tests/ldap_server.py), and AD flavour on ldap3's mock.

Plain pytest: no database. The directory has 1,200 users (a manager tree with some forward
references), two bad user entries, 30 groups (some groupOfUniqueNames, one spelling member
DNs in another case) and two groups reserved for provisioning. Tests that change the directory
use their own entries and put them back, so they hold in any order.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime

import ldap3
import pytest

from connectors.base import ConfigurationError, connector_types
from connectors.builtin import ldap as ldap_module
from connectors.builtin.ldap import LdapConnector, PagedReader, canonical_dn
from connectors.dispatcher import ConnectorDispatcher
from connectors.protocol import v1
from tests import ldap_server
from tests.ldap_server import (
    GROUPS,
    PEOPLE,
    READER_DN,
    READER_PW,
    SERVICE_DN,
    SERVICE_PW,
    SUFFIX,
    USER_PW,
    USERS,
    Directory,
    free_port,
    group_dn,
    manager_index,
    user_dn,
)

# The session fixture (one slapd per test process), made visible to pytest in this module.
slapd = ldap_server.slapd

DIRECTORY = Directory()
TOTAL_USER_ENTRIES = USERS + len(DIRECTORY.bad_users)
TOTAL_GROUPS = len(DIRECTORY.groups) + len(DIRECTORY.provisioning_groups)


def sync_request(server, *, config=None, auth=None, cursor=None, chunk_size=250, business_id="ldap-1", **extra):
    return v1.SyncRequest(connector_business_id=business_id, incremental=extra.pop("incremental", False),
                          last_sync_at=extra.pop("last_sync_at", None), auth_config=auth or server.auth(),
                          config=config if config is not None else server.config(page_size=100), cursor=cursor,
                          chunk_size=chunk_size, **extra)


def run_sync(connector, server, chunk_size=250, **kwargs):
    """All chunks of one sync; returns (chunks, merged response)."""
    chunks, merged, cursor = [], v1.SyncResponse(success=True), None
    while True:
        response = connector.sync(sync_request(server, cursor=cursor, chunk_size=chunk_size, **kwargs))
        assert response.success, response.error
        chunks.append(response)
        for name in ("identities", "accounts", "entitlements", "grants", "record_errors"):
            getattr(merged, name).extend(getattr(response, name))
        if not response.has_more:
            return chunks, merged
        assert response.next_cursor
        cursor = response.next_cursor
        assert len(chunks) < 100, "sync does not end"


def provision(server, *operations, auth=None, **config):
    request = v1.ProvisioningRequest(
        connector_business_id="ldap-1", auth_config=auth or server.auth(), config=server.config(**config),
        operations=[v1.ProvisioningOperation(operation_id=f"op-{n}", **op) for n, op in enumerate(operations)])
    return ConnectorDispatcher("ldap").provision(request).results


def members(server, group: str) -> set[str]:
    with server.admin() as conn:
        conn.search(group, "(objectClass=*)", ldap3.BASE, attributes=["member", "uniqueMember"])
        values = conn.response[0]["raw_attributes"]
        return {canonical_dn(v.decode()) for v in values.get("member", []) + values.get("uniqueMember", [])}


def can_bind(server, dn: str, password: str) -> bool:
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE), dn, password)
    try:
        return conn.bind()
    finally:
        conn.unbind()


def one_user(server, index: int, **config):
    """Sync just one user (filter on uid) and return (identity, account)."""
    _, merged = run_sync(LdapConnector(), server, config=server.config(
        user_filter=f"(uid=u{index:05d})", group_filter="(cn=none-such)", **config))
    (account,) = merged.accounts
    return (merged.identities or [None])[0], account


@pytest.fixture(autouse=True)
def _no_leftover_sessions():
    yield
    ldap_module.close_all_sessions()


def test_registered_with_the_declared_capabilities():
    assert "ldap" in connector_types()
    caps = ConnectorDispatcher("ldap").capabilities
    assert caps.sync_identities and caps.sync_accounts and caps.sync_entitlements and caps.sync_grants
    assert caps.incremental and caps.paging and not caps.authoritative
    assert set(caps.operations) == {v1.OperationKind.ADD_GRANT, v1.OperationKind.REMOVE_GRANT,
                                    v1.OperationKind.DISABLE_ACCOUNT, v1.OperationKind.ENABLE_ACCOUNT}


class TestFullSync:
    def test_chunks_reproduce_every_user_group_and_membership_through_paged_searches(self, slapd, monkeypatch):
        pages = []
        original = PagedReader._fetch

        def counting_fetch(reader):
            pages.append((reader.base, reader.page_size))
            original(reader)
            assert len(reader.buffer) <= reader.page_size

        monkeypatch.setattr(PagedReader, "_fetch", counting_fetch)
        chunks, merged = run_sync(ConnectorDispatcher("ldap"), slapd, chunk_size=250)

        # Every chunk holds at most chunk_size directory entries.
        assert all(len(c.accounts) + len(c.entitlements) <= 250 for c in chunks)
        assert len(chunks) == math.ceil((TOTAL_USER_ENTRIES + TOTAL_GROUPS) / 250)
        # Paged: 100 entries a page, many pages (more than the 500-entry size limit the service account has).
        assert all(size == 100 for _, size in pages)
        assert sum(1 for base, _ in pages if base == PEOPLE) >= 2 * math.ceil(TOTAL_USER_ENTRIES / 100)  # count + read

        assert len(merged.identities) == USERS
        assert {i.external_id for i in merged.identities} == {f"E{n:05d}" for n in range(USERS)}
        assert len(merged.accounts) == TOTAL_USER_ENTRIES
        assert {a.native_id for a in merged.accounts} >= {user_dn(n) for n in range(USERS)}
        first = next(i for i in merged.identities if i.external_id == "E00003")
        assert (first.email, first.first_name, first.last_name, first.display_name, first.department, first.title,
                first.location, first.status) == ("u00003@example.test", "First3", "Last3", "First3 Last3", "HR",
                                                  "Manager", "Brussels", "active")
        account = next(a for a in merged.accounts if a.native_id == user_dn(3))
        assert account.username == "u00003" and account.identity_external_id == "E00003"
        assert account.status == "active" and uuid.UUID(account.attributes["uuid"])

        assert {e.value for e in merged.entitlements} == set(DIRECTORY.groups) | set(DIRECTORY.provisioning_groups)
        grp = next(e for e in merged.entitlements if e.value == group_dn(7))
        assert (grp.display_name, grp.type, grp.description) == ("grp-07", "group", "Group 7")
        grants = {(g.entitlement_value, g.account_native_id) for g in merged.grants
                  if g.entitlement_value in DIRECTORY.groups}
        assert grants == DIRECTORY.memberships  # member and uniqueMember, and grp-01's shouted DNs, all join
        assert {g.account_native_id for g in merged.grants} <= {a.native_id for a in merged.accounts}
        assert chunks[-1].total_estimate == 2 * TOTAL_USER_ENTRIES + TOTAL_GROUPS + len(merged.grants)

    def test_manager_dns_resolve_to_the_managers_external_ids(self, slapd):
        _, merged = run_sync(LdapConnector(), slapd, chunk_size=250)
        by_id = {i.external_id: i for i in merged.identities}
        for n in range(USERS):
            manager = manager_index(n)
            assert by_id[f"E{n:05d}"].manager_external_id == (None if manager is None else f"E{manager:05d}")
        # Forward references (the manager comes in a later chunk) resolved too.
        assert by_id["E00107"].manager_external_id == "E01198"

    def test_bad_entries_are_reported_and_skipped_while_the_rest_goes_on(self, slapd):
        _, merged = run_sync(LdapConnector(), slapd, chunk_size=500)
        errors = {e.location: e for e in merged.record_errors}
        assert set(errors) == set(DIRECTORY.bad_users)
        no_id, too_long = (errors[dn] for dn in DIRECTORY.bad_users)
        assert no_id.kind == "identity" and "employeeNumber, uid" in no_id.error
        assert too_long.kind == "identity" and "external_id" in too_long.error
        # Their accounts are still there, owned by nobody: what orphan detection is for.
        orphans = {a.native_id: a for a in merged.accounts if a.identity_external_id is None}
        assert set(orphans) == {canonical_dn(dn) for dn in DIRECTORY.bad_users}

    def test_a_lost_session_or_a_replayed_cursor_resumes_without_losing_records(self, slapd):
        connector = LdapConnector()
        _, reference = run_sync(connector, slapd, chunk_size=300)
        seen_accounts, seen_grants, cursor, calls = set(), set(), None, 0
        replayed = None
        while True:
            response = connector.sync(sync_request(slapd, cursor=cursor, chunk_size=300))
            assert response.success, response.error
            calls += 1
            if calls == 2 and replayed is None:
                # The same cursor again (a retried chunk): the same records, from a re-positioned search.
                replayed = connector.sync(sync_request(slapd, cursor=cursor, chunk_size=300))
                assert [a.native_id for a in replayed.accounts] == [a.native_id for a in response.accounts]
            seen_accounts |= {a.native_id for a in response.accounts}
            seen_grants |= {(g.entitlement_value, g.account_native_id) for g in response.grants}
            if not response.has_more:
                break
            cursor = response.next_cursor
            ldap_module.close_all_sessions()  # as if every chunk ran in a fresh worker process
        assert seen_accounts == {a.native_id for a in reference.accounts}
        assert seen_grants == {(g.entitlement_value, g.account_native_id) for g in reference.grants}

    def test_max_records_stops_early(self, slapd):
        chunks, merged = run_sync(LdapConnector(), slapd, chunk_size=100, max_records=150)
        assert len(merged.accounts) == 150 and len(chunks) == 2 and not chunks[-1].has_more

    def test_a_non_paged_search_would_hit_the_size_limit(self, slapd):
        """The fixture is realistic: the service account cannot read 1,200 entries without paging."""
        conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE), SERVICE_DN,
                                SERVICE_PW, auto_bind=True)
        conn.search(PEOPLE, "(objectClass=inetOrgPerson)", attributes=["uid"])
        assert conn.result["description"] == "sizeLimitExceeded" and len(conn.response) == 500
        conn.unbind()


class TestIncremental:
    def test_only_entries_changed_since_last_sync_come_back(self, slapd):
        time.sleep(1.1)  # modifyTimestamp has one-second resolution: leave the second of earlier changes
        since = datetime.now(UTC)
        changed = (21, 522, 1023)
        with slapd.admin() as conn:
            for n in changed:
                conn.modify(user_dn(n), {"title": [(ldap3.MODIFY_REPLACE, [f"Changed {since:%H%M%S}"])]})
        config = slapd.config(page_size=100, incremental_overlap_seconds=0)
        chunks, merged = run_sync(LdapConnector(), slapd, config=config, incremental=True, last_sync_at=since)
        assert sorted(i.external_id for i in merged.identities) == [f"E{n:05d}" for n in changed]
        assert {i.title for i in merged.identities} == {f"Changed {since:%H%M%S}"}
        assert merged.entitlements == [] and merged.grants == []
        assert chunks[-1].total_estimate == 6

        # A full sync ignores last_sync_at; incremental without a last sync is a full sync.
        _, full = run_sync(LdapConnector(), slapd, config=config, incremental=True, last_sync_at=None)
        assert len(full.identities) == USERS

    def test_a_group_whose_membership_changed_comes_back_with_all_its_members(self, slapd):
        time.sleep(1.1)
        since = datetime.now(UTC)
        group = DIRECTORY.provisioning_groups[0]
        (added,) = provision(slapd, {"kind": "add_grant", "account_native_id": user_dn(50), "entitlement_value": group})
        try:
            assert added.success, added.error
            _, merged = run_sync(LdapConnector(), slapd, config=slapd.config(incremental_overlap_seconds=0),
                                 incremental=True, last_sync_at=since)
            assert [e.value for e in merged.entitlements] == [group] and merged.identities == []
            assert {g.account_native_id for g in merged.grants} == {user_dn(1), user_dn(50)}
        finally:
            provision(slapd, {"kind": "remove_grant", "account_native_id": user_dn(50), "entitlement_value": group})


class TestConnection:
    def request(self, server, **overrides):
        auth = overrides.pop("auth", server.auth())
        return v1.TestConnectionRequest(connector_business_id="ldap-1", auth_config=auth,
                                        config=server.config(**overrides))

    def test_good_credentials(self, slapd):
        response = ConnectorDispatcher("ldap").test_connection(self.request(slapd))
        assert response.success, response.message
        assert response.details["paged_results"] is True and response.details["base_dn"] == SUFFIX
        # The bind DN belongs to the write-only credentials: the answer never echoes it.
        assert slapd.auth()["bind_dn"] not in response.model_dump_json()

    def test_wrong_password_fails_without_showing_any_password(self, slapd):
        wrong = "Wr0ng-Pa55word-xyz"
        response = ConnectorDispatcher("ldap").test_connection(
            self.request(slapd, auth=slapd.auth(password=wrong)))
        assert not response.success and "invalid credentials" in response.message
        assert wrong not in response.message and SERVICE_PW not in response.message
        sync = LdapConnector().sync(sync_request(slapd, auth=slapd.auth(password=wrong)))
        assert not sync.success and "invalid credentials" in sync.error and wrong not in sync.error

    def test_unreachable_server(self, slapd):
        response = ConnectorDispatcher("ldap").test_connection(
            self.request(slapd, url=f"ldap://127.0.0.1:{free_port()}", timeout=3))
        assert not response.success and "cannot connect" in response.message
        assert SERVICE_PW not in response.message

    def test_missing_base_dn(self, slapd):
        response = ConnectorDispatcher("ldap").test_connection(self.request(slapd, base_dn="dc=nowhere,dc=test"))
        assert not response.success and "does not exist" in response.message


class TestMembershipWriteBack:
    @pytest.mark.parametrize("group", DIRECTORY.provisioning_groups)
    def test_add_and_remove_are_visible_and_idempotent(self, slapd, group):
        account = user_dn(77)
        add = {"kind": "add_grant", "account_native_id": account, "entitlement_value": group}
        remove = {**add, "kind": "remove_grant"}
        try:
            assert [r.success for r in provision(slapd, add)] == [True]
            assert account in members(slapd, group)
            again = provision(slapd, add)  # already a member: success, nothing changes
            assert again[0].success, again[0].error
            assert members(slapd, group) == {user_dn(1), account}
            _, merged = run_sync(LdapConnector(), slapd, config=slapd.config(user_filter="(uid=nobody)"))
            assert (group, account) in {(g.entitlement_value, g.account_native_id) for g in merged.grants}

            assert [r.success for r in provision(slapd, remove, remove)] == [True, True]
            assert members(slapd, group) == {user_dn(1)}
        finally:
            provision(slapd, remove)

    def test_one_failed_operation_does_not_stop_the_others(self, slapd):
        group = DIRECTORY.provisioning_groups[0]
        results = provision(
            slapd,
            {"kind": "add_grant", "account_native_id": user_dn(78), "entitlement_value": f"cn=nope,{GROUPS}"},
            {"kind": "create_account", "username": "new"},
            {"kind": "add_grant", "account_native_id": f"uid=ghost,{PEOPLE}", "entitlement_value": group},
            {"kind": "remove_grant", "account_native_id": user_dn(1), "entitlement_value": group},  # the last one
            {"kind": "add_grant", "account_native_id": user_dn(78), "entitlement_value": group},
            {"kind": "add_grant", "entitlement_value": group},
        )
        try:
            assert [r.operation_id for r in results] == [f"op-{n}" for n in range(6)]
            assert [r.success for r in results] == [False, False, False, False, True, False]
            assert "does not exist" in results[0].error and "create_account" in results[1].error
            assert "does not exist" in results[2].error and "last member" in results[3].error
            assert "account_native_id" in results[5].error
            assert members(slapd, group) == {user_dn(1), user_dn(78)}
        finally:
            provision(slapd, {"kind": "remove_grant", "account_native_id": user_dn(78), "entitlement_value": group})

    def test_without_write_access_each_operation_fails_cleanly(self, slapd):
        group = DIRECTORY.provisioning_groups[0]
        results = provision(slapd, {"kind": "add_grant", "account_native_id": user_dn(79), "entitlement_value": group},
                            {"kind": "disable_account", "account_native_id": user_dn(79)},
                            auth=slapd.auth(READER_DN, READER_PW))
        assert [r.success for r in results] == [False, False]
        assert all("insufficientAccessRights" in r.error and not r.retryable for r in results)
        assert READER_PW not in str(results)
        bad = provision(slapd, {"kind": "disable_account", "account_native_id": user_dn(79)},
                        auth=slapd.auth(password="nope-nope"))
        assert not bad[0].success and "invalid credentials" in bad[0].error


class TestDisable:
    def test_ppolicy_lock_round_trip(self, slapd):
        index = DIRECTORY.with_password[0]
        account = user_dn(index)
        assert can_bind(slapd, account, USER_PW)
        try:
            results = provision(slapd, {"kind": "disable_account", "account_native_id": account},
                                {"kind": "disable_account", "account_native_id": account})
            assert [r.success for r in results] == [True, True] and results[0].account_native_id == account
            assert not can_bind(slapd, account, USER_PW)  # ppolicy enforces the lock
            identity, synced = one_user(slapd, index)
            assert synced.status == "disabled" and identity.status == "suspended"
        finally:
            results = provision(slapd, {"kind": "enable_account", "account_native_id": account},
                                {"kind": "enable_account", "account_native_id": account})
        assert [r.success for r in results] == [True, True]
        assert can_bind(slapd, account, USER_PW)
        identity, synced = one_user(slapd, index)
        assert synced.status == "active" and identity.status == "active"

    def test_marker_attribute_round_trip_keeps_other_values(self, slapd):
        index = DIRECTORY.with_password[1]
        account = user_dn(index)
        marker = {"disabled_attribute": "employeeType", "disabled_value": "disabled"}
        with slapd.admin() as conn:
            conn.modify(account, {"employeeType": [(ldap3.MODIFY_REPLACE, ["contractor"])]})
        try:
            disable = {"kind": "disable_account", "account_native_id": account}
            assert [r.success for r in provision(slapd, disable, disable, **marker)] == [True, True]
            assert one_user(slapd, index, **marker)[1].status == "disabled"
            assert one_user(slapd, index)[1].status == "active"  # the default (ppolicy) setting sees no lock
            enable = {"kind": "enable_account", "account_native_id": account}
            assert [r.success for r in provision(slapd, enable, enable, **marker)] == [True, True]
            assert one_user(slapd, index, **marker)[1].status == "active"
            with slapd.admin() as conn:
                conn.search(account, "(objectClass=*)", ldap3.BASE, attributes=["employeeType"])
                assert conn.response[0]["attributes"]["employeeType"] == ["contractor"]
        finally:
            with slapd.admin() as conn:
                conn.modify(account, {"employeeType": [(ldap3.MODIFY_DELETE, [])]})

    def test_unknown_account(self, slapd):
        (result,) = provision(slapd, {"kind": "disable_account", "account_native_id": f"uid=ghost,{PEOPLE}"})
        assert not result.success and "does not exist" in result.error


GOOD = {"url": "ldap://127.0.0.1:389", "base_dn": SUFFIX}
AUTH = {"bind_dn": SERVICE_DN, "password": "Secr3t-Value"}
BAD_CONFIGS = [
    ({"base_dn": SUFFIX}, AUTH, "config.url is required"),
    ({**GOOD, "url": "http://x"}, AUTH, "config.url must look like"),
    ({**GOOD, "url": "ldap://host:99999"}, AUTH, "invalid port"),
    ({**GOOD, "url": "ldap://svc:Secr3t-Value@host"}, AUTH, "no path, query or user"),
    ({"url": "ldap://h"}, AUTH, "config.base_dn is required"),
    ({**GOOD, "base_dn": "not a dn"}, AUTH, "not a valid DN"),
    ({**GOOD, "user_filter": "(&(uid=x)"}, AUTH, "not a valid LDAP filter"),
    ({**GOOD, "flavor": "novell"}, AUTH, "config.flavor"),
    ({**GOOD, "page_size": 0}, AUTH, "config.page_size"),
    ({**GOOD, "page_size": "100"}, AUTH, "config.page_size"),
    ({**GOOD, "mapping": {"shoe_size": "x"}}, AUTH, "unknown fields"),
    ({**GOOD, "mapping": {"email": "not an attribute!"}}, AUTH, "config.mapping.email"),
    ({**GOOD, "disabled_attribute": "employeeType"}, AUTH, "disabled_value"),
    ({**GOOD, "user_fliter": "(uid=*)"}, AUTH, "unknown keys"),
    ({**GOOD, "url": "ldaps://h", "start_tls": True}, AUTH, "start_tls"),
    (GOOD, {"password": "Secr3t-Value"}, "auth_config.bind_dn is required"),
    (GOOD, {"bind_dn": "garbage", "password": "Secr3t-Value"}, "not a valid DN"),
    (GOOD, {"bind_dn": SERVICE_DN}, "auth_config.password is required"),
    (GOOD, {"bind_dn": SERVICE_DN, "password": ""}, "auth_config.password is required"),
]


class TestConfiguration:
    @pytest.mark.parametrize(("config", "auth", "fragment"), BAD_CONFIGS,
                             ids=[f"{n}-{case[2]}" for n, case in enumerate(BAD_CONFIGS)])
    def test_bad_config_is_refused_with_a_clear_message(self, config, auth, fragment):
        with pytest.raises(ConfigurationError) as caught:
            ConnectorDispatcher("ldap").validate(config, auth)
        assert fragment in str(caught.value) and "Secr3t-Value" not in str(caught.value)

    def test_good_configs_pass(self):
        ConnectorDispatcher("ldap").validate(GOOD, AUTH)
        ConnectorDispatcher("ldap").validate({**GOOD, "flavor": "ad", "authoritative": True, "page_size": 1000,
                                              "mapping": {"external_id": ["employeeID", "sAMAccountName"],
                                                          "location": []}},
                                             {"bind_dn": "svc@corp.example", "password": "x"})

    def test_sync_refuses_bad_config_and_bad_cursors(self, slapd):
        with pytest.raises(ConfigurationError):
            LdapConnector().sync(sync_request(slapd, config={"url": slapd.url}))
        with pytest.raises(ConfigurationError, match="invalid LDAP sync cursor"):
            LdapConnector().sync(sync_request(slapd, cursor="bm90IGpzb24="))
        assert "Secr3t" not in repr(ldap_module.LdapSettings.parse(GOOD, AUTH))


# --- Active Directory flavour, on ldap3's in-memory mock (no AD to test against here) -----------------

AD_BASE = "DC=corp,DC=test"
AD_SERVICE = f"CN=svc,OU=Service,{AD_BASE}"


class MockAdConnector(LdapConnector):
    """The real connector, whose connections go to an ldap3 MOCK_SYNC server with the AD 2012 schema."""

    server: ldap3.Server

    def _connect(self, settings):
        conn = ldap3.Connection(self.server, user=settings.bind_dn, password=settings.password,
                                client_strategy=ldap3.MOCK_SYNC, raise_exceptions=False, auto_range=True)
        if not conn.bind():
            raise ldap_module.LdapFailure(f"bind as {settings.bind_dn} failed: invalid credentials")
        return conn


@pytest.fixture
def ad():
    server = ldap3.Server("dc1.corp.test", get_info=ldap3.OFFLINE_AD_2012_R2)
    seed = ldap3.Connection(server, user=AD_SERVICE, password="pw", client_strategy=ldap3.MOCK_SYNC)
    person = ["top", "person", "organizationalPerson", "user"]
    seed.strategy.add_entry(AD_SERVICE, {"objectClass": person, "sAMAccountName": "svc", "userPassword": "pw"})
    for n in range(25):
        attributes = {"objectClass": person, "objectCategory": "person", "sAMAccountName": f"user{n}",
                      "employeeID": f"A{n:03d}", "mail": f"user{n}@corp.test", "givenName": f"Given{n}",
                      "sn": f"Sur{n}", "department": "Finance", "userAccountControl": 514 if n == 3 else 512,
                      "objectGUID": uuid.UUID(int=n + 1).bytes_le}
        if n:
            attributes["manager"] = f"CN=User 0,OU=Staff,{AD_BASE}"
        seed.strategy.add_entry(f"CN=User {n},OU=Staff,{AD_BASE}", attributes)
    seed.strategy.add_entry(f"CN=Finance,OU=Groups,{AD_BASE}", {
        "objectClass": ["top", "group"], "cn": "Finance",
        "member": [f"CN=User {n},OU=Staff,{AD_BASE}" for n in range(0, 25, 5)]})
    MockAdConnector.server = server
    return {"url": "ldap://dc1.corp.test", "base_dn": AD_BASE, "flavor": "ad", "page_size": 4,
            "count_entries": False}, {"bind_dn": AD_SERVICE, "password": "pw"}


class TestActiveDirectoryFlavour:
    def test_users_groups_disabled_flag_and_guid(self, ad):
        config, auth = ad
        connector, cursor, chunks = MockAdConnector(), None, []
        while True:
            response = connector.sync(v1.SyncRequest(connector_business_id="ad-1", incremental=False,
                                                     last_sync_at=None, auth_config=auth, config=config,
                                                     cursor=cursor, chunk_size=10))
            assert response.success, response.error
            chunks.append(response)
            if not response.has_more:
                break
            cursor = response.next_cursor
        identities = {i.external_id: i for c in chunks for i in c.identities}
        accounts = {a.username: a for c in chunks for a in c.accounts}
        assert set(identities) == {f"A{n:03d}" for n in range(25)}
        assert accounts["user3"].status == "disabled" and accounts["user4"].status == "active"
        assert accounts["user5"].attributes["uuid"] == str(uuid.UUID(int=6))
        assert identities["A007"].manager_external_id == "A000" and identities["A007"].department == "Finance"
        (group,) = [e for c in chunks for e in c.entitlements]
        assert group.value == canonical_dn(f"CN=Finance,OU=Groups,{AD_BASE}") and group.display_name == "Finance"
        grants = {g.account_native_id for c in chunks for g in c.grants}
        assert grants == {accounts[f"user{n}"].native_id for n in range(0, 25, 5)}

    def test_disable_and_enable_flip_bit_2_of_user_account_control(self, ad):
        config, auth = ad
        dn = f"CN=User 4,OU=Staff,{AD_BASE}"

        def uac():
            conn = ldap3.Connection(MockAdConnector.server, AD_SERVICE, "pw", client_strategy=ldap3.MOCK_SYNC)
            conn.bind()
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userAccountControl"])
            return int(conn.response[0]["raw_attributes"]["userAccountControl"][0])

        def run(*ops):
            request = v1.ProvisioningRequest(connector_business_id="ad-1", auth_config=auth, config=config,
                                             operations=[v1.ProvisioningOperation(operation_id=str(n), **op)
                                                         for n, op in enumerate(ops)])
            return [r.success for r in MockAdConnector().provision(request).results]

        assert run({"kind": "disable_account", "account_native_id": dn},
                   {"kind": "disable_account", "account_native_id": dn}) == [True, True]
        assert uac() == 514
        assert run({"kind": "enable_account", "account_native_id": dn}) == [True]
        assert uac() == 512
        group = f"CN=Finance,OU=Groups,{AD_BASE}"
        assert run({"kind": "add_grant", "account_native_id": dn, "entitlement_value": group},
                   {"kind": "add_grant", "account_native_id": dn, "entitlement_value": group},
                   {"kind": "remove_grant", "account_native_id": dn, "entitlement_value": group}) == [True] * 3
