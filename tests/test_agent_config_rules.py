"""The agent's own rules, without a RapidValue server: which config wins, what the server may not
choose, and how its HTTP client treats throttling (against a real loopback HTTP server).

Pure Python like the agent itself (no database). The end-to-end behaviour of the same rules
(a job refused by a real agent, the sync run failing with the reason) is in ``test_agent_e2e.py``.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from agent.client import Client, ServerRefused
from agent.config import AgentConfig, LocalConnector
from agent.jobs import chunks_of, effective_config
from agent.runtime import AgentRuntime
from connectors.base import Connector, ConnectorError, connector_class, register
from connectors.protocol import v1
from tests.http_receiver import Receiver

LDAP = connector_class("ldap")
SCIM = connector_class("scim")
CSV = connector_class("csv")


def test_local_settings_win_and_the_servers_non_target_settings_stay():
    server = {"url": "ldap://cloud-chose-this:389", "base_dn": "dc=corp", "page_size": 200}
    local = {"url": "ldaps://dc1.corp.local:636", "page_size": 500}
    assert effective_config(LDAP, server, local) == {"url": "ldaps://dc1.corp.local:636", "base_dn": "dc=corp",
                                                     "page_size": 500}


@pytest.mark.parametrize(("cls", "server", "local", "key"), [
    (LDAP, {"url": "ldap://attacker.example:389", "base_dn": "dc=corp"}, {}, "url"),
    (LDAP, {"tls_verify": False}, {"url": "ldaps://dc1:636"}, "tls_verify"),
    (LDAP, {"ca_certs_file": "/tmp/attacker-ca.pem"}, {"url": "ldaps://dc1:636"}, "ca_certs_file"),
    (SCIM, {"base_url": "https://attacker.example/scim/v2"}, {}, "base_url"),
    (SCIM, {"allow_http": True}, {"base_url": "https://idp.corp/scim/v2"}, "allow_http"),
    (CSV, {"identities": {"path": "/etc/shadow"}}, {}, "identities.path"),
])
def test_the_server_never_chooses_where_credentials_go_or_which_files_are_read(cls, server, local, key):
    with pytest.raises(ConnectorError, match=rf"sets {key}, which the agent takes only from its local config"):
        effective_config(cls, server, local)


def test_the_server_may_repeat_a_local_target_and_send_inline_content():
    assert effective_config(LDAP, {"url": "ldap://dc1:389"}, {"url": "ldap://dc1:389"})["url"] == "ldap://dc1:389"
    inline = {"identities": {"content": "external_id\nE1\n"}}
    assert effective_config(CSV, inline, {}) == inline
    # A local section replaces the server's whole section, path included.
    merged = effective_config(CSV, {"identities": {"path": "/etc/passwd"}}, {"identities": {"path": "/srv/hr.csv"}})
    assert merged == {"identities": {"path": "/srv/hr.csv"}}


def test_chunks_keep_every_record_once_in_order():
    result = {"identities": [1, 2, 3], "accounts": [4, 5], "grants": [6], "record_errors": [7]}
    chunks = list(chunks_of(result, 3))
    assert chunks == [{"identities": [1, 2, 3]}, {"accounts": [4, 5], "grants": [6]}, {"record_errors": [7]}]


def test_the_client_waits_out_throttling_but_takes_a_refusal_as_final():
    throttled = Receiver(statuses=[429, 429, 200]).start()
    refused = Receiver(statuses=[400]).start()
    try:
        client = Client(throttled.url.rsplit("/", 1)[0], "token", max_backoff=0.1)
        assert client.request("POST", "/hook", json={"sequence": 0}).status_code == 200
        assert len(throttled.received) == 3  # a 429 is "later", not "no"
        client = Client(refused.url.rsplit("/", 1)[0], "token", max_backoff=0.1)
        with pytest.raises(ServerRefused) as caught:
            client.request("POST", "/hook", json={"sequence": 0})
        assert caught.value.status == 400 and len(refused.received) == 1
    finally:
        throttled.stop()
        refused.stop()


@register
class CrashingConnector(Connector):
    """A connector with a bug: not a ConnectorError, an exception nobody expected."""

    type = "test-crashing"
    capabilities: ClassVar[v1.Capabilities] = v1.Capabilities(sync_accounts=True)

    def sync(self, request):
        raise KeyError("surprise")

    def test_connection(self, request):
        raise KeyError("surprise")


def test_a_job_the_agent_crashes_on_is_reported_failed_not_left_to_expire(tmp_path):
    server = Receiver(statuses=[200]).start()
    try:
        config = AgentConfig(path=tmp_path / "agent.toml", state_file=tmp_path / "state.json",
                             connectors={"c1": LocalConnector(id="c1", type="test-crashing")})
        runtime = AgentRuntime(config, server.url.rsplit("/", 1)[0], "token")
        runtime._run_job({"id": "j1", "kind": "sync", "attempt": 1, "lease": {"id": "l1"},
                          "connector": {"id": "c1", "name": "Buggy", "type": "test-crashing"},
                          "request": {"connector_business_id": "c1", "incremental": False, "last_sync_at": None}})
        (report,) = server.wait_for(1)
        assert report.path == "/api/v1/agent/jobs/j1/fail"
        assert report.json() == {"lease_id": "l1", "error": "the agent crashed on this job: KeyError: 'surprise'"}
        assert runtime.current is None
    finally:
        server.stop()
