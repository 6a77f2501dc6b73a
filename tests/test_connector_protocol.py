"""Connector protocol v1, the dispatcher and the file-based built-in connectors (pure Python)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.base import ConfigurationError, connector_types
from connectors.dispatcher import ConnectorDispatcher
from connectors.protocol import v1

REPO = Path(__file__).resolve().parent.parent


def sync_request(config, cursor=None, chunk_size=1000, **extra):
    return v1.SyncRequest(connector_business_id="c-1", incremental=False, last_sync_at=None, auth_config={},
                          config=config, cursor=cursor, chunk_size=chunk_size, **extra)


def test_protocol_imports_no_django_and_exports_a_json_schema():
    code = ("import sys, json; import connectors.protocol.v1 as v; import connectors.dispatcher;"
            "import connectors.builtin; assert not [m for m in sys.modules if m.startswith('django')];"
            "print(json.dumps(sorted(v.json_schema()['$defs'])))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    names = json.loads(out.stdout)
    assert {"SyncRequest", "SyncResponse", "RemoteIdentity", "RemoteAccount", "RemoteEntitlement", "RemoteGrant",
            "ProvisioningRequest", "Capabilities", "TestConnectionResponse"} <= set(names)


def test_contract_fields_are_all_there():
    assert {"connector_business_id", "incremental", "last_sync_at", "auth_config"} <= set(v1.SyncRequest.model_fields)
    assert {"success", "identities", "accounts", "entitlements", "grants", "error"} <= set(
        v1.SyncResponse.model_fields)
    # A bare-contract response (no paging fields) is still valid v1.
    bare = v1.SyncResponse.model_validate({"success": True, "identities": [], "accounts": [], "entitlements": [],
                                           "grants": [], "error": None})
    assert bare.has_more is False and bare.next_cursor is None


def test_builtin_connectors_are_registered():
    assert {"csv", "synthetic"} <= set(connector_types())
    with pytest.raises(ConfigurationError):
        ConnectorDispatcher("nope")
    with pytest.raises(ConfigurationError):
        ConnectorDispatcher("csv", mode="agent")  # no agent: refused before anything runs


class TestSynthetic:
    def test_same_seed_same_org_in_bounded_chunks(self):
        dispatcher = ConnectorDispatcher("synthetic")
        config = {"people": 250, "seed": 7, "groups": 20}
        cursor, identities, grants, chunks = None, [], 0, 0
        while True:
            response = dispatcher.sync(sync_request(config, cursor=cursor, chunk_size=100))
            chunks += 1
            assert len(response.identities) <= 100
            identities += response.identities
            grants += len(response.grants)
            if not response.has_more:
                break
            cursor = response.next_cursor
        assert chunks == 3 and len(identities) == 250 and grants == 250 * 10
        again = dispatcher.sync(sync_request(config, chunk_size=250))
        assert [i.model_dump() for i in again.identities] == [i.model_dump() for i in identities]
        ids = {i.external_id for i in identities}
        assert all(i.manager_external_id in ids for i in identities if i.manager_external_id)
        assert sum(1 for i in identities if i.manager_external_id is None) == 1

    def test_max_records_and_bad_config(self):
        dispatcher = ConnectorDispatcher("synthetic")
        assert len(dispatcher.sync(sync_request({"people": 50}, max_records=5)).identities) == 5
        for config in ({}, {"people": 0}, {"people": "many"}, {"people": 10, "seed": "x"}):
            with pytest.raises(ConfigurationError):
                dispatcher.validate(config, {})
        assert dispatcher.test_connection(v1.TestConnectionRequest(
            connector_business_id="c", auth_config={}, config={"people": -1})).success is False


HR_CSV = """EmployeeID,Mail,First,Last,Dept,ManagerID
e1,ceo@x.example,Ada,Boss,Exec,
e2,eng@x.example,Bob,Eng,Engineering,e1
,nobody@x.example,No,Id,Engineering,e1
e4,sales@x.example,Cy,Sales,Sales,e1
"""


class TestCsv:
    config = {"identities": {"content": HR_CSV, "mapping": {
        "external_id": "EmployeeID", "email": "Mail", "first_name": "First", "last_name": "Last",
        "department": "Dept", "manager_external_id": "ManagerID"}}}

    def test_mapping_manager_references_and_bad_rows_reported_and_skipped(self):
        response = ConnectorDispatcher("csv").sync(sync_request(self.config))
        assert [i.external_id for i in response.identities] == ["e1", "e2", "e4"]
        assert response.identities[1].manager_external_id == "e1" and response.identities[0].manager_external_id is None
        (error,) = response.record_errors
        assert error.kind == "identity" and error.location == "identities line 4" and "external_id" in error.error

    def test_chunks_resume_from_the_cursor(self, tmp_path):
        accounts = tmp_path / "accounts.csv"
        accounts.write_text("native_id,username,identity_external_id\n" + "".join(
            f"a{n},user{n},e{n}\n" for n in range(7)))
        config = {**self.config, "accounts": {"path": str(accounts)}}
        seen, cursor = [], None
        while True:
            response = ConnectorDispatcher("csv").sync(sync_request(config, cursor=cursor, chunk_size=3))
            seen += [i.external_id for i in response.identities] + [a.native_id for a in response.accounts]
            if not response.has_more:
                break
            cursor = response.next_cursor
        assert seen == ["e1", "e2", "e4"] + [f"a{n}" for n in range(7)]

    @pytest.mark.parametrize("config", [
        {}, {"identities": {}}, {"identities": {"path": "/no/such/file.csv"}},
        {"identities": {"content": "a", "path": "/x"}}, {"identities": {"content": "a", "mapping": {"bogus": "x"}}},
    ])
    def test_bad_config_is_refused_before_anything_runs(self, config):
        with pytest.raises(ConfigurationError):
            ConnectorDispatcher("csv").validate(config, {})
