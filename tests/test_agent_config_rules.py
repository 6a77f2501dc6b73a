"""The agent's own rules, without a server: which config wins, and what the server may not choose.

Pure Python like the agent itself (no database). The end-to-end behaviour of the same rules
(a job refused by a real agent, the sync run failing with the reason) is in ``test_agent_e2e.py``.
"""

from __future__ import annotations

import pytest

from agent.jobs import chunks_of, effective_config
from connectors.base import ConnectorError, connector_class

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
