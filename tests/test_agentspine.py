"""The agent spine over the API: enrollment, tokens, presence, the job queue and its leases.

In-process (Django test client, one transaction per test). The real agent program, a real server
process and real Celery workers are in ``test_agent_e2e.py``.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import tenant_context

from agentspine.models import Agent, AgentJob, AgentJobChunk, EnrollmentCode
from agentspine.services import jobs, presence
from connectors.models import ConnectorInstance
from rapidvalue.audit.models import AuditEvent
from rapidvalue.webhooks.models import WebhookEvent
from tests.conftest import Api, assert_error

WORLD_AGENT = "acme-world-agent"  # conftest's world: the agent behind the "agent" token
IDENTITY = {"external_id": "E1", "email": "ann@example.test", "first_name": "Ann"}


def _connector(api, name: str = "Corp LDAP", **fields) -> dict:
    body = {"name": name, "type": "synthetic", "config": {"people": 5}, **fields}
    created = api.post("/api/v1/connectors", body)
    assert created.status_code == 201, created.body
    return created.body


def _agent(api, name: str = "dc1-agent", connector_ids: list | None = None) -> dict:
    created = api.post("/api/v1/agents", {"name": name, "connector_ids": connector_ids or []})
    assert created.status_code == 201, created.body
    return created.body


def _register(code: str, host: str = "testserver"):
    return Api(host=host).post("/api/v1/agent/register", {"code": code, "version": "0.1.0", "hostname": "dc1"})


def _enrolled(api, name: str = "dc1-agent", connector_ids: list | None = None) -> tuple[dict, Api]:
    agent = _agent(api, name, connector_ids)
    registered = _register(agent["enrollment_code"])
    assert registered.status_code == 201, registered.body
    return agent, Api(registered.body["token"])


def _job(tenant, agent_id, connector_id, kind: str = "sync") -> AgentJob:
    with tenant_context(tenant):
        job = AgentJob.objects.create(agent_id=agent_id, connector_id=connector_id, kind=kind,
                                      request={"connector_business_id": str(connector_id), "incremental": False})
    connection.set_schema_to_public()
    return job


def _lease(agent_api, wait: int = 0):
    return agent_api.get(f"/api/v1/agent/jobs/next?wait={wait}")


# -- enrollment ----------------------------------------------------------------------------

def test_admin_creates_an_agent_and_its_code_works_once(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent = _agent(admin, connector_ids=[connector["id"]])
    assert agent["state"] == "pending_enrollment" and agent["connector_ids"] == [connector["id"]]
    assert agent["enrollment_code"].startswith("acme.") and agent["enrollment_code_expires_at"]
    # The connector now runs on the agent, and holds no credentials of its own.
    shown = admin.get(f"/api/v1/connectors/{connector['id']}").body
    assert shown["mode"] == "agent" and shown["agent_id"] == agent["id"]
    # The code is shown once: reading the agent back never shows it.
    listed = api("acme", "auditor").get("/api/v1/agents").body
    assert [a["id"] for a in listed["items"] if a["name"] != WORLD_AGENT] == [agent["id"]]
    assert "enrollment_code" not in json.dumps(listed)

    registered = _register(agent["enrollment_code"])
    assert registered.status_code == 201, registered.body
    assert registered.body["agent_id"] == agent["id"] and registered.body["tenant"] == "acme"
    token = registered.body["token"]
    assert Api(token).get("/api/v1/agent/whoami").body["agent_id"] == agent["id"]
    assert admin.get(f"/api/v1/agents/{agent['id']}").body["state"] == "offline"  # enrolled, no heartbeat yet

    assert_error(_register(agent["enrollment_code"]), 401, "enrollment_code_used")
    with tenant_context(world.acme.tenant):
        assert EnrollmentCode.objects.filter(agent_id=agent["id"], used_at__isnull=False).count() == 1
        assert not EnrollmentCode.objects.filter(code_hash__contains=agent["enrollment_code"]).exists()
        actions = set(AuditEvent.objects.filter(object_id=agent["id"]).values_list("action", flat=True))
        assert {"agent.create", "agent.enrollment_code", "agent.register"} <= actions
        assert agent["enrollment_code"] not in json.dumps(list(AuditEvent.objects.values("before", "after")),
                                                          default=str)


def test_expired_unknown_and_foreign_codes_are_refused(api, world):
    agent = _agent(api("acme", "admin"))
    with tenant_context(world.acme.tenant):
        EnrollmentCode.objects.filter(agent_id=agent["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    connection.set_schema_to_public()
    assert_error(_register(agent["enrollment_code"]), 401, "enrollment_code_expired")
    assert_error(_register("acme.not-a-real-code"), 401, "enrollment_code_invalid")
    assert_error(_register("no-dot-at-all"), 401, "enrollment_code_invalid")
    # A code of acme sent to globex's own domain is not valid there.
    fresh = api("acme", "admin").post(f"/api/v1/agents/{agent['id']}/enrollment-code").body["enrollment_code"]
    assert_error(_register(fresh, host=world.globex.domain), 401, "enrollment_code_invalid")
    assert_error(Api().post("/api/v1/agent/register", {"code": 42}), 400)
    with tenant_context(world.acme.tenant):
        assert Agent.objects.get(pk=agent["id"]).enrolled_at is None
    assert _register(fresh).status_code == 201


def test_a_new_code_replaces_the_old_one_and_re_enrollment_revokes_old_tokens(api):
    admin = api("acme", "admin")
    agent, first = _enrolled(admin)
    code = admin.post(f"/api/v1/agents/{agent['id']}/enrollment-code").body["enrollment_code"]
    newer = admin.post(f"/api/v1/agents/{agent['id']}/enrollment-code").body["enrollment_code"]
    assert_error(_register(code), 401, "enrollment_code_expired")
    assert first.post("/api/v1/agent/heartbeat", {}).status_code == 200
    second = _register(newer)
    assert second.status_code == 201
    assert_error(first.post("/api/v1/agent/heartbeat", {}), 401, "token_revoked")
    assert Api(second.body["token"]).post("/api/v1/agent/heartbeat", {}).status_code == 200


@pytest.mark.parametrize("role", ["auditor", "member", "service_auditor"])
def test_only_admins_manage_agents(api, role):
    refused = api("acme", role).post("/api/v1/agents", {"name": "rogue"})
    assert_error(refused, 403)
    assert [a["name"] for a in api("acme", "admin").get("/api/v1/agents").body["items"]] == [WORLD_AGENT]


def test_bad_agent_input_changes_nothing(api, world):
    admin = api("acme", "admin")
    assert_error(admin.post("/api/v1/agents", {"name": "x", "connector_ids": [str(uuid.uuid4())]}), 400)
    assert_error(admin.post("/api/v1/agents", {"name": "x", "connector_ids": ["nope"]}), 400)
    assert_error(admin.post("/api/v1/agents", {"connector_ids": []}), 400)
    _agent(admin, "dc1-agent")
    assert_error(admin.post("/api/v1/agents", {"name": "dc1-agent"}), 409, "duplicate_name")
    with tenant_context(world.acme.tenant):
        assert list(Agent.objects.exclude(name=WORLD_AGENT).values_list("name", flat=True)) == ["dc1-agent"]


def test_agent_mode_connectors_keep_no_credentials_and_need_a_real_agent(api, world):
    admin = api("acme", "admin")
    assert_error(admin.post("/api/v1/connectors", {"name": "AD", "type": "synthetic", "mode": "agent",
                                                   "agent_id": str(uuid.uuid4())}), 400)
    agent = _agent(admin)
    refused = admin.post("/api/v1/connectors", {"name": "AD", "type": "synthetic", "mode": "agent",
                                                "agent_id": agent["id"], "auth_config": {"password": "s3cret"}})
    assert_error(refused, 400, "invalid_connector_config")
    hosted = _connector(admin, "HR", auth_config={"token": "hosted-secret"})
    moved = admin.patch(f"/api/v1/connectors/{hosted['id']}", {"mode": "agent", "agent_id": agent["id"]})
    assert moved.status_code == 200, moved.body
    with tenant_context(world.acme.tenant):
        assert ConnectorInstance.objects.get(pk=hosted["id"]).auth_config_encrypted == ""


def test_agent_mode_connectors_hold_no_connection_targets(api, world, settings):
    """Where credentials go (URLs, TLS settings, files) is decided by the agent's local config alone."""
    settings.ALLOW_PRIVATE_TARGETS = True
    admin = api("acme", "admin")
    agent = _agent(admin)
    ldap = {"url": "ldaps://dc1.corp.test:636", "base_dn": "dc=corp,dc=test", "tls_verify": False}
    refused = admin.post("/api/v1/connectors", {"name": "AD", "type": "ldap", "mode": "agent",
                                                "agent_id": agent["id"], "config": ldap})
    assert_error(refused, 400, "invalid_connector_config")
    assert "url, tls_verify only from the agent's local config" in refused.body["error"]["message"]
    # Moving a hosted connector to an agent drops its targets, like its credentials.
    auth = {"bind_dn": "cn=svc", "password": "pw"}
    for how in ("patch", "assign"):
        hosted = admin.post("/api/v1/connectors", {"name": f"AD {how}", "type": "ldap", "config": ldap,
                                                   "auth_config": auth})
        assert hosted.status_code == 201, hosted.body
        if how == "patch":
            moved = admin.patch(f"/api/v1/connectors/{hosted.body['id']}", {"mode": "agent", "agent_id": agent["id"]})
        else:
            moved = admin.patch(f"/api/v1/agents/{agent['id']}", {"connector_ids": [hosted.body["id"]]})
        assert moved.status_code == 200, moved.body
        shown = admin.get(f"/api/v1/connectors/{hosted.body['id']}").body
        assert shown["mode"] == "agent" and shown["config"] == {"base_dn": "dc=corp,dc=test"}
    # Sending them back in an update is refused too.
    assert_error(admin.patch(f"/api/v1/connectors/{hosted.body['id']}", {"config": ldap}), 400,
                 "invalid_connector_config")


# -- tokens --------------------------------------------------------------------------------

def test_agent_tokens_work_only_on_the_agent_spine_and_user_tokens_never_there(api, world):
    _, agent = _enrolled(api("acme", "admin"))
    assert_error(agent.get("/api/v1/identities"), 401, "token_kind")
    assert_error(agent.post("/api/v1/identities", IDENTITY), 401, "token_kind")
    for role in ("admin", "service_admin"):
        assert_error(api("acme", role).get("/api/v1/agent/jobs/next?wait=0"), 401, "token_kind")
        assert_error(api("acme", role).post("/api/v1/agent/heartbeat", {}), 401, "token_kind")
    assert_error(Api().get("/api/v1/agent/jobs/next?wait=0"), 401)
    # On another tenant's domain the agent token is refused.
    assert_error(Api(agent.token, host=world.globex.domain).post("/api/v1/agent/heartbeat", {}), 401, "wrong_tenant")


def test_rotation_replaces_the_token_at_once(api, world):
    agent, client = _enrolled(api("acme", "admin"))
    rotated = client.post("/api/v1/agent/token/rotate")
    assert rotated.status_code == 201
    assert_error(client.post("/api/v1/agent/heartbeat", {}), 401, "token_revoked")
    assert Api(rotated.body["token"]).post("/api/v1/agent/heartbeat", {}).status_code == 200
    with tenant_context(world.acme.tenant):
        assert AuditEvent.objects.filter(action="agent.token_rotate", object_id=agent["id"]).exists()


def test_revoking_an_agent_refuses_its_token_at_once_and_fails_its_open_jobs(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    assert client.post("/api/v1/agent/heartbeat", {}).status_code == 200
    revoked = admin.post(f"/api/v1/agents/{agent['id']}/revoke")
    assert revoked.status_code == 200 and revoked.body["state"] == "revoked"
    assert_error(client.post("/api/v1/agent/heartbeat", {}), 401, "token_revoked")
    assert_error(_lease(client), 401, "token_revoked")
    with tenant_context(world.acme.tenant):
        job.refresh_from_db()
        assert job.status == AgentJob.Status.FAILED and "revoked" in job.error
        assert AuditEvent.objects.filter(action="agent.revoke", object_id=agent["id"]).exists()
    assert_error(admin.post(f"/api/v1/agents/{agent['id']}/enrollment-code"), 409, "agent_revoked")


# -- presence ------------------------------------------------------------------------------

def test_heartbeats_bring_an_agent_online_and_silence_takes_it_offline(api, world, settings):
    admin = api("acme", "admin")
    agent, client = _enrolled(admin)
    beat = client.post("/api/v1/agent/heartbeat", {"version": "1.2.3", "hostname": "dc1.corp",
                                                  "capabilities": {"connector_types": ["ldap"]}})
    assert beat.status_code == 200 and beat.body["state"] == "online"
    assert beat.body["heartbeat_seconds"] == settings.AGENT_HEARTBEAT_SECONDS
    shown = admin.get(f"/api/v1/agents/{agent['id']}").body
    assert (shown["state"], shown["version"], shown["hostname"]) == ("online", "1.2.3", "dc1.corp")
    client.post("/api/v1/agent/heartbeat", {"version": "1.2.3"})  # still online: no second event
    with tenant_context(world.acme.tenant):
        assert WebhookEvent.objects.filter(type="agent.online").count() == 1
        assert presence.mark_silent_agents_offline() == 0  # heard from just now
        Agent.objects.filter(pk=agent["id"]).update(
            last_heartbeat_at=timezone.now() - timedelta(seconds=settings.AGENT_OFFLINE_AFTER_SECONDS + 1))
        assert presence.mark_silent_agents_offline() == 1
        assert presence.mark_silent_agents_offline() == 0
        offline = WebhookEvent.objects.get(type="agent.offline")
        assert offline.payload["agent"]["id"] == agent["id"] and offline.payload["agent"]["name"] == "dc1-agent"
        actions = list(AuditEvent.objects.filter(object_id=agent["id"], action__in=["agent.online", "agent.offline"])
                       .order_by("id").values_list("action", flat=True))
        assert actions == ["agent.online", "agent.offline"]
    connection.set_schema_to_public()
    assert admin.get(f"/api/v1/agents/{agent['id']}").body["state"] == "offline"
    client.post("/api/v1/agent/heartbeat", {})
    with tenant_context(world.acme.tenant):
        assert WebhookEvent.objects.filter(type="agent.online").count() == 2


def test_the_heartbeat_answer_names_jobs_the_agent_no_longer_holds(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    held = _job(world.acme.tenant, agent["id"], connector["id"])
    dropped = _job(world.acme.tenant, agent["id"], connector["id"])
    _lease(client), _lease(client)
    with tenant_context(world.acme.tenant):
        jobs.cancel(dropped, "the sync run was cancelled")  # the caller gave up while the agent hangs
    connection.set_schema_to_public()
    ack = client.post("/api/v1/agent/heartbeat", {"running_jobs": [str(held.pk), str(dropped.pk)]})
    assert ack.status_code == 200 and ack.body["released_jobs"] == [str(dropped.pk)]


def test_heartbeat_input_is_checked(api):
    _, client = _enrolled(api("acme", "admin"))
    assert_error(client.post("/api/v1/agent/heartbeat", {"running_jobs": ["not-a-uuid"]}), 400)
    assert_error(client.post("/api/v1/agent/heartbeat", {"capabilities": "lots"}), 400)


# -- the job queue -------------------------------------------------------------------------

def test_a_job_is_leased_to_its_agent_only_and_never_twice(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    _, other = _enrolled(admin, "dc2-agent")
    _, foreign = _enrolled(api("globex", "admin"), "globex-agent")
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    assert _lease(other).status_code == 204
    assert _lease(foreign).status_code == 204  # another tenant's agent never sees it
    leased = _lease(client)
    assert leased.status_code == 200, leased.body
    assert leased.body["id"] == str(job.pk) and leased.body["attempt"] == 1
    assert leased.body["connector"] == {"id": connector["id"], "name": "Corp LDAP", "type": "synthetic"}
    assert "auth_config" not in leased.body["request"]
    assert _lease(client).status_code == 204  # leased: not handed out again while the lease runs
    assert_error(client.get("/api/v1/agent/jobs/next?wait=abc"), 400)
    assert_error(client.get("/api/v1/agent/jobs/next?wait=26"), 400)
    assert_error(client.get("/api/v1/agent/jobs/next?wait=%C2%B2"), 400)  # a superscript digit
    assert_error(client.get("/api/v1/agent/jobs/next?wait=" + "9" * 5000), 400)


def test_chunks_are_idempotent_by_sequence_and_completion_needs_them_all(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    lease = _lease(client).body["lease"]["id"]
    url = f"/api/v1/agent/jobs/{job.pk}"
    first = client.post(f"{url}/chunks", {"lease_id": lease, "sequence": 0, "payload": {"identities": [IDENTITY]}})
    assert first.status_code == 200 and first.body["stored"] is True
    again = client.post(f"{url}/chunks", {"lease_id": lease, "sequence": 0,
                                          "payload": {"identities": [{**IDENTITY, "external_id": "E-other"}]}})
    assert again.status_code == 200 and again.body["stored"] is False
    bad = client.post(f"{url}/chunks", {"lease_id": lease, "sequence": 1, "payload": {"identities": [{"email": "x"}]}})
    assert_error(bad, 400)
    assert_error(client.post(f"{url}/chunks", {"lease_id": str(uuid.uuid4()), "sequence": 1, "payload": {}}),
                 409, "lease_lost")
    assert_error(client.post(f"{url}/complete", {"lease_id": lease, "chunk_count": 2, "result": {"success": True}}),
                 409, "chunks_missing")
    client.post(f"{url}/chunks", {"lease_id": lease, "sequence": 1,
                                  "payload": {"grants": [{"entitlement_value": "g1", "identity_external_id": "E1"}]}})
    assert_error(client.post(f"{url}/complete", {"lease_id": lease, "chunk_count": 2, "result": {"has_more": "x"}}),
                 400)  # not a SyncResponse (success missing): refused, the job stays leased
    assert_error(client.post(f"{url}/complete", {"lease_id": lease, "chunk_count": 2,
                                                 "result": {"success": True, "identities": [IDENTITY]}}), 400)
    done = client.post(f"{url}/complete", {"lease_id": lease, "chunk_count": 2,
                                           "result": {"success": True, "has_more": False}})
    assert done.status_code == 200 and done.body["status"] == "succeeded"
    with tenant_context(world.acme.tenant):
        job.refresh_from_db()
        result = jobs.assemble(job)
    assert [i["external_id"] for i in result["identities"]] == ["E1"]  # the first chunk 0 won
    assert result["grants"] == [{"entitlement_value": "g1", "identity_external_id": "E1"}]
    assert result["success"] is True
    assert_error(client.post(f"{url}/chunks", {"lease_id": lease, "sequence": 2, "payload": {}}), 409, "lease_lost")


def test_an_expired_lease_requeues_the_job_and_the_old_holder_is_refused(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    url = f"/api/v1/agent/jobs/{job.pk}"
    old = _lease(client).body["lease"]["id"]
    client.post(f"{url}/chunks", {"lease_id": old, "sequence": 0, "payload": {"identities": [IDENTITY]}})
    with tenant_context(world.acme.tenant):
        AgentJob.objects.filter(pk=job.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
    connection.set_schema_to_public()
    again = _lease(client)
    assert again.status_code == 200 and again.body["attempt"] == 2
    assert_error(client.post(f"{url}/chunks", {"lease_id": old, "sequence": 1, "payload": {}}), 409, "lease_lost")
    with tenant_context(world.acme.tenant):
        assert not AgentJobChunk.objects.filter(job=job).exists()  # attempt 1's chunks are gone
        assert AuditEvent.objects.filter(action="agent_job.lease", object_id=str(job.pk)).count() == 2


def test_release_hands_the_job_back_at_once_and_fail_records_why(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    lease = _lease(client).body["lease"]["id"]
    released = client.post(f"/api/v1/agent/jobs/{job.pk}/release", {"lease_id": lease})
    assert released.status_code == 200 and released.body["status"] == "queued"
    lease = _lease(client).body["lease"]["id"]
    extended = client.post(f"/api/v1/agent/jobs/{job.pk}/lease", {"lease_id": lease})
    assert extended.status_code == 200 and extended.body["status"] == "leased"
    failed = client.post(f"/api/v1/agent/jobs/{job.pk}/fail", {"lease_id": lease, "error": "LDAP bind refused"})
    assert failed.status_code == 200 and failed.body["status"] == "failed"
    with tenant_context(world.acme.tenant):
        job.refresh_from_db()
        assert job.error == "LDAP bind refused" and job.attempt == 2
    assert_error(client.post(f"/api/v1/agent/jobs/{uuid.uuid4()}/fail", {"lease_id": lease, "error": "x"}), 404)
    # Another tenant's agent cannot touch it: the job does not exist in its schema.
    _, foreign = _enrolled(api("globex", "admin"), "globex-agent")
    assert_error(foreign.post(f"/api/v1/agent/jobs/{job.pk}/release", {"lease_id": lease}), 404)


def test_admins_see_an_agents_jobs(api, world):
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, _ = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    listed = api("acme", "auditor").get(f"/api/v1/agents/{agent['id']}/jobs")
    assert listed.status_code == 200 and [j["id"] for j in listed.body["items"]] == [str(job.pk)]
    assert "request" not in listed.body["items"][0]


def test_test_connection_through_an_online_agent_that_never_answers_says_why(api, world, settings):
    settings.AGENT_TEST_CONNECTION_TIMEOUT_SECONDS = 1
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    assert client.post("/api/v1/agent/heartbeat", {}).status_code == 200
    tested = admin.post(f"/api/v1/connectors/{connector['id']}/test")
    assert tested.status_code == 200
    assert tested.body["success"] is False
    assert tested.body["message"] == "no result within 1 s; queued for agent 'dc1-agent' (online)"
    with tenant_context(world.acme.tenant):
        job = AgentJob.objects.get(agent_id=agent["id"])
        assert job.kind == "test_connection" and job.status == AgentJob.Status.CANCELLED


@pytest.mark.parametrize("enrolled", [False, True])
def test_test_connection_through_an_absent_agent_answers_at_once(api, world, enrolled):
    admin = api("acme", "admin")
    connector = _connector(admin)
    if enrolled:
        agent, _ = _enrolled(admin, connector_ids=[connector["id"]])  # enrolled, but no heartbeat: offline
    else:
        agent = _agent(admin, connector_ids=[connector["id"]])
    tested = admin.post(f"/api/v1/connectors/{connector['id']}/test")
    assert tested.status_code == 200 and tested.body["success"] is False
    expected = "offline" if enrolled else "has not enrolled yet"
    assert tested.body["message"].startswith("waiting for agent 'dc1-agent'") and expected in tested.body["message"]
    with tenant_context(world.acme.tenant):
        assert not AgentJob.objects.filter(agent_id=agent["id"]).exists()  # nothing queued for nobody


# -- revocation, attempts, offline agents and sync runs ------------------------------------

def test_a_revoked_agents_connectors_start_no_sync_and_get_no_job(api, world):
    from agentspine.proxy import AgentProxyConnector
    from agentspine.services.jobs import AgentUnavailable
    from connectors.models import SyncRun

    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, _ = _enrolled(admin, connector_ids=[connector["id"]])
    assert admin.post(f"/api/v1/agents/{agent['id']}/revoke").status_code == 200
    assert_error(admin.post(f"/api/v1/connectors/{connector['id']}/sync", {}), 409, "agent_unavailable")
    tested = admin.post(f"/api/v1/connectors/{connector['id']}/test")
    assert tested.body["success"] is False and "revoked" in tested.body["message"]
    with tenant_context(world.acme.tenant):
        instance = ConnectorInstance.objects.get(pk=connector["id"])
        assert not SyncRun.objects.filter(connector=instance).exists()
        with pytest.raises(AgentUnavailable, match="revoked"):
            jobs.enqueue(agent_id=agent["id"], connector=instance, kind="sync", request={})
        # A job that slipped in anyway (a long poll in flight when the agent was revoked) is never leased.
        AgentJob.objects.create(agent_id=agent["id"], connector=instance, kind="sync", request={})
        assert jobs.claim_next(Agent.objects.get(pk=agent["id"])) is None
        # A dispatcher call already waiting gives up at once rather than after its timeout.
        job = AgentJob.objects.create(agent_id=agent["id"], connector=instance, kind="sync", request={})
        started = timezone.now()
        assert AgentProxyConnector(instance)._await(job, timeout=60) is None
        assert (timezone.now() - started).total_seconds() < 5
        assert job.error == "agent 'dc1-agent' has been revoked"
        job.refresh_from_db()
        assert job.status == AgentJob.Status.CANCELLED


def test_a_revoked_agents_connector_can_be_disabled_and_does_not_block_other_hr_sources(api, world):
    admin = api("acme", "admin")
    hosted = _connector(admin, "HR hosted", authoritative=True)
    remote = _connector(admin, "HR remote", authoritative=True)
    agent, _ = _enrolled(admin, connector_ids=[remote["id"]])
    admin.post(f"/api/v1/agents/{agent['id']}/revoke")
    started = admin.post("/api/v1/identities/sync", {})
    assert started.status_code == 202 and [r["connector"] for r in started.body] == [hosted["id"]]
    assert started.headers["X-RapidValue-Skipped"] == f"{remote['id']}=agent_unavailable"
    # Editing the connector does not require moving it first; choosing the revoked agent anew does.
    disabled = admin.patch(f"/api/v1/connectors/{remote['id']}", {"enabled": False})
    assert disabled.status_code == 200 and disabled.body["enabled"] is False
    other = _connector(admin, "Other")
    assert_error(admin.patch(f"/api/v1/connectors/{other['id']}", {"mode": "agent", "agent_id": agent["id"]}), 400)
    # Nothing can start at all: the refusal itself is the answer.
    admin.post(f"/api/v1/connectors/{hosted['id']}/sync-runs/{started.body[0]['id']}/cancel")
    admin.patch(f"/api/v1/connectors/{remote['id']}", {"enabled": True})
    admin.patch(f"/api/v1/connectors/{hosted['id']}", {"enabled": False})
    assert_error(admin.post("/api/v1/identities/sync", {}), 409, "agent_unavailable")


def test_a_page_for_an_agent_that_went_offline_mid_run_frees_its_worker(api, world, settings):
    from agentspine.proxy import AgentProxyConnector

    settings.SYNC_AGENT_OFFLINE_GRACE_SECONDS = 600
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, _ = _enrolled(admin, connector_ids=[connector["id"]])  # enrolled, now offline
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    with tenant_context(world.acme.tenant):
        instance = ConnectorInstance.objects.get(pk=connector["id"])
        AgentJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=601))
        started = timezone.now()
        assert AgentProxyConnector(instance)._await(job, timeout=3600) is None
        assert (timezone.now() - started).total_seconds() < 5
        assert job.error == "gave up after 600 s: waiting for agent 'dc1-agent': offline"
        job.refresh_from_db()
        assert job.status == AgentJob.Status.CANCELLED


def test_a_job_whose_lease_keeps_expiring_fails_after_max_attempts(api, world, settings):
    settings.AGENT_MAX_ATTEMPTS = 3
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    job = _job(world.acme.tenant, agent["id"], connector["id"])
    second = _job(world.acme.tenant, agent["id"], connector["id"])
    # A clean hand-back (SIGTERM, a rolling restart) does not count against the job.
    lease = _lease(client).body["lease"]["id"]
    assert client.post(f"/api/v1/agent/jobs/{job.pk}/release", {"lease_id": lease}).status_code == 200
    for attempt in (2, 3, 4):
        leased = _lease(client)
        assert leased.status_code == 200 and leased.body["id"] == str(job.pk) and leased.body["attempt"] == attempt
        with tenant_context(world.acme.tenant):  # the agent dies on it: the lease runs out
            AgentJob.objects.filter(pk=job.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
        connection.set_schema_to_public()
    # The third expiry gives up on it, and the next job is handed out instead.
    leased = _lease(client)
    assert leased.status_code == 200 and leased.body["id"] == str(second.pk)
    with tenant_context(world.acme.tenant):
        job.refresh_from_db()
        assert (job.status, job.attempt, job.expired_leases) == (AgentJob.Status.FAILED, 4, 3)
        assert job.error == "the agent did not finish this job: its lease expired 3 times; see the agent's log"
        assert AuditEvent.objects.filter(action="agent_job.fail", object_id=str(job.pk)).exists()


def _queued_run(tenant, connector_id, age_seconds: int = 0):
    from connectors.models import SyncRun

    with tenant_context(tenant):
        run = SyncRun.objects.create(connector_id=connector_id)
        SyncRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=age_seconds))
    connection.set_schema_to_public()
    return run


@pytest.mark.parametrize("case", ["offline", "online", "waited_too_long", "revoked"])
def test_a_sync_run_for_an_absent_agent_waits_without_a_worker(api, world, settings, case):
    from connectors.models import SyncRun
    from connectors.sync import runner

    settings.SYNC_AGENT_MAX_WAIT_SECONDS = 600
    admin = api("acme", "admin")
    connector = _connector(admin)
    agent, client = _enrolled(admin, connector_ids=[connector["id"]])
    if case == "online":
        client.post("/api/v1/agent/heartbeat", {})
        settings.AGENT_JOB_TIMEOUT_SECONDS = 1  # nobody answers the job: the run fails, but it ran
    if case == "revoked":
        admin.post(f"/api/v1/agents/{agent['id']}/revoke")
    run = _queued_run(world.acme.tenant, connector["id"], age_seconds=601 if case == "waited_too_long" else 0)
    with tenant_context(world.acme.tenant):
        outcome = runner.execute(run.pk)
        run.refresh_from_db()
        started_jobs = AgentJob.objects.filter(sync_run=run).count()
    connection.set_schema_to_public()
    if case == "offline":
        assert outcome == runner.DEFERRED and run.status == SyncRun.Status.QUEUED and started_jobs == 0
        assert run.status_detail == "waiting for agent 'dc1-agent': offline"
    elif case == "online":
        assert run.status == SyncRun.Status.FAILED and started_jobs == 1
        assert "no result within 1 s" in run.error
    elif case == "waited_too_long":
        assert run.status == SyncRun.Status.FAILED and started_jobs == 0
        assert run.error == "gave up after 600 s: waiting for agent 'dc1-agent': offline"
    else:
        assert run.status == SyncRun.Status.FAILED and started_jobs == 0
        assert "'dc1-agent' has been revoked or removed" in run.error


def test_agent_mode_sync_runs_go_to_their_own_queue(api, world, settings, django_capture_on_commit_callbacks):
    import redis as redis_lib

    from rapidvalue.celery import app

    admin = api("acme", "admin")
    hosted = _connector(admin, "Hosted HR")
    remote = _connector(admin, "Remote HR")
    _enrolled(admin, connector_ids=[remote["id"]])
    redis = redis_lib.Redis.from_url(app.conf.broker_url)  # the broker this process sends to
    before = {q: redis.llen(q) for q in ("celery", settings.SYNC_AGENT_QUEUE)}
    sent = {}
    for name, connector in (("hosted", hosted), ("remote", remote)):
        with django_capture_on_commit_callbacks(execute=True):
            sent[name] = admin.post(f"/api/v1/connectors/{connector['id']}/sync", {}).body["id"]
    bodies = {q: [json.loads(m) for m in redis.lrange(q, before[q], -1)] for q in before}
    for q, messages in bodies.items():  # leave the broker as we found it
        for message in messages:
            redis.lrem(q, 1, json.dumps(message))
    args = {q: [m["headers"]["argsrepr"] for m in messages] for q, messages in bodies.items()}
    assert args[settings.SYNC_AGENT_QUEUE] == [f"('{sent['remote']}',)"]
    assert f"('{sent['hosted']}',)" in args["celery"] and f"('{sent['remote']}',)" not in args["celery"]


def test_registration_reveals_a_suspended_tenant_only_to_a_valid_code(api, world):
    agent = _agent(api("acme", "admin"))
    world.acme.tenant.status = "suspended"
    world.acme.tenant.save(update_fields=["status"])
    try:
        assert_error(_register("acme.guessed-code"), 401, "enrollment_code_invalid")
        assert_error(_register(agent["enrollment_code"]), 403, "tenant_suspended")
    finally:
        world.acme.tenant.status = "active"
        world.acme.tenant.save(update_fields=["status"])
    # Refused while suspended, the code was not used up.
    assert _register(agent["enrollment_code"]).status_code == 201
