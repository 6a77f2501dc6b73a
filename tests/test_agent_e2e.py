"""The agent spine end to end, with real processes only.

- the server: gunicorn (gthread, so long polls do not starve other requests) on a loopback port;
- a real Celery worker process runs the sync runs (and so the AgentProxyConnector);
- the agent: the ``rapidvalue-agent`` entry point of the agent package, built from ``agent/`` into a
  directory of its own and started from an empty working directory, so it runs with what the
  package ships (``agent`` + the Django-free part of ``connectors``), nothing else of the repo;
- the directory: a real OpenLDAP ``slapd`` on loopback (``tests/ldap_server.py``).

Each test module run provisions its own tenants (deleted at the end): ``e2ehost`` syncs the
directory in hosted mode, ``e2eagent`` through its agent; the two results must be equal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django_tenants.utils import tenant_context

from agentspine.models import AgentJob, AgentJobChunk
from connectors.models import ConnectorInstance
from rapidvalue.audit.models import AuditEvent
from rapidvalue.authn.services import create_api_token
from rapidvalue.celery import app
from rapidvalue.tenancy.services import provision_tenant
from tests import ldap_server
from tests.servers import Server
from tests.test_celery_tasks import _database_url_of_test_db, _point_app_at
from tests.test_webhook_worker import start_worker, stop

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
slapd = ldap_server.slapd
SERVER_ENV = {
    "RAPIDVALUE_AGENT_LEASE_SECONDS": "4",
    "RAPIDVALUE_AGENT_HEARTBEAT_SECONDS": "1",
    "RAPIDVALUE_AGENT_OFFLINE_AFTER_SECONDS": "5",
    "RAPIDVALUE_AGENT_JOB_TIMEOUT_SECONDS": "120",
    "RAPIDVALUE_ALLOW_PRIVATE_TARGETS": "1",  # the hosted comparison run reaches slapd on loopback
    "RAPIDVALUE_SYNC_AGENT_RECHECK_SECONDS": "1",  # a run deferred for an offline agent looks again soon
    # The hosted comparison run is a first load (one transaction, upkeep set aside); the agent's must
    # not be, else its later pages' jobs stay uncommitted and the agent never sees them.
    "RAPIDVALUE_SYNC_FIRST_LOAD_MIN_RECORDS": "1",
}


@pytest.fixture(scope="session")
def agent_dist(tmp_path_factory) -> Path:
    """The agent package, built and installed from a copy of the sources into a directory of its own."""
    root = tmp_path_factory.mktemp("agent-build")
    src = root / "src"
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copytree(REPO / "connectors", src / "connectors", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "--target", str(target), str(src / "agent")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    shipped = {p.relative_to(target).as_posix() for p in target.rglob("*.py")}
    assert "connectors/protocol/v1.py" in shipped and "agent/cli.py" in shipped
    assert not {"connectors/models.py", "connectors/services.py"} & shipped, "Django code shipped with the agent"
    return target


class AgentProcess:
    """A ``rapidvalue-agent run`` process with its config; its structured log is kept for assertions."""

    def __init__(self, dist: Path, workdir: Path, config_text: str, env: dict[str, str]):
        self.dist = dist
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "agent.toml"
        self.config.write_text(config_text)
        self.env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(dist), "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen | None = None
        self.runs = 0

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.dist / "bin" / "rapidvalue-agent"), *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def start(self) -> AgentProcess:
        self.runs += 1
        log = (self.workdir / f"agent-{self.runs}.log").open("wb")
        self.process = subprocess.Popen([str(self.dist / "bin" / "rapidvalue-agent"), "run", "--config",
                                         str(self.config)], cwd=self.workdir, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        return self

    def lines(self) -> list[dict]:
        out = []
        for path in sorted(self.workdir.glob("agent-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "raw", "text": line})
        return out

    def events(self) -> list[str]:
        return [line.get("event") for line in self.lines()]

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"agent never logged {event}; log:\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.workdir.glob("agent-*.log")))

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def _env(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Stack:
    def __init__(self, server: Server, tenants: dict, tokens: dict[str, str], database_url: str, logs: Path):
        self.server = server
        self.tenants = tenants
        self.tokens = tokens
        self.database_url = database_url
        self.logs = logs

    def api(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=60,
                            headers={"Authorization": f"Bearer {self.tokens[tenant]}"})


@pytest.fixture(scope="module")
def stack(world, django_db_blocker, tmp_path_factory):
    """Server + Celery worker + two fresh tenants (hosted and agent); all torn down afterwards."""
    logs = tmp_path_factory.mktemp("e2e-logs")
    saved = (app.conf.broker_url, app.conf.result_backend)
    _point_app_at(settings.REDIS_URL, settings.REDIS_URL)
    worker = server = None
    tenants: dict = {}
    with django_db_blocker.unblock():
        try:
            database_url = _database_url_of_test_db()
            tokens = {}
            for slug in ("e2ehost", "e2eagent"):
                from rapidvalue.tenancy.models import Tenant

                existing = Tenant.objects.filter(slug=slug).first()
                if existing is not None:
                    existing.delete(force_drop=True)
                tenant = provision_tenant(slug, name=slug, admin_email=f"admin@{slug}.test",
                                          admin_password="x-Secret-1234").tenant
                with tenant_context(tenant):
                    tokens[slug] = create_api_token(tenant=tenant, name=f"{slug}-admin", role="admin").raw
                connection.set_schema_to_public()
                tenants[slug] = tenant
            with _env(SERVER_ENV):
                worker, _ = start_worker(database_url, logs / "worker.log")
            server = Server(database_url, logs, SERVER_ENV).start()
            yield Stack(server, tenants, tokens, database_url, logs)
        finally:
            if server is not None:
                server.kill()
            if worker is not None:
                stop(worker)
            _point_app_at(*saved)
            connection.set_schema_to_public()
            for tenant in tenants.values():
                tenant.delete(force_drop=True)


def _wait_run(client: httpx.Client, connector_id: str, run_id: str, timeout: float = 120,
              until=("succeeded", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    run = {}
    while time.monotonic() < deadline:
        run = client.get(f"/api/v1/connectors/{connector_id}/sync-runs/{run_id}").json()
        if run["status"] in until:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run still {run.get('status')} after {timeout} s: {run}")


def _sync(client: httpx.Client, connector_id: str, chunk_size: int = 500) -> dict:
    started = client.post(f"/api/v1/connectors/{connector_id}/sync",
                          json={"incremental": False, "max_records": None, "chunk_size": chunk_size,
                                "callback_url": None})
    assert started.status_code == 202, started.text
    return started.json()


def _picture(tenant) -> dict:
    """Everything a sync wrote, keyed by natural keys (ids differ between tenants)."""
    from access.models import Account, Entitlement, Grant
    from identities.models import Identity

    with tenant_context(tenant):
        identities = sorted(Identity.objects.values_list("external_id", "email", "display_name", "department",
                                                         "title", "status", "manager__external_id"))
        accounts = sorted(Account.objects.values_list("native_id", "username", "status", "identity__external_id"))
        entitlements = sorted(Entitlement.objects.values_list("value", "display_name", "type"))
        grants = sorted(Grant.objects.filter(state="active").values_list(
            "account__native_id", "identity__external_id", "entitlement__value", "source"))
    connection.set_schema_to_public()
    return {"identities": identities, "accounts": accounts, "entitlements": entitlements, "grants": grants}


def _agent_config(connectors: dict[str, dict], **options) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    for connector_id, spec in connectors.items():
        lines.append(f'[connectors."{connector_id}"]')
        lines.append(f'type = "{spec["type"]}"')
        for table in ("config", "auth_config", "auth_config_env"):
            if spec.get(table):
                lines.append(f'[connectors."{connector_id}".{table}]')
                lines += [f"{k} = {json.dumps(v)}" for k, v in spec[table].items()]
    return "\n".join(lines) + "\n"


def _create_agent(stack: Stack, tenant: str, name: str, connector_ids: list[str]) -> dict:
    created = stack.api(tenant).post("/api/v1/agents", json={"name": name, "connector_ids": connector_ids})
    assert created.status_code == 201, created.text
    return created.json()


def _enroll(stack: Stack, agent_dist: Path, workdir: Path, tenant: str, name: str | dict,
            connectors: dict[str, dict], env: dict[str, str] | None = None, **options) -> tuple[dict, AgentProcess]:
    agent = name if isinstance(name, dict) else _create_agent(stack, tenant, name, list(connectors))
    proc = AgentProcess(agent_dist, workdir, _agent_config(connectors, **options), env or {})
    enrolled = proc.command("enroll", "--url", stack.server.url, "--code", agent["enrollment_code"],
                            "--config", str(proc.config))
    assert enrolled.returncode == 0, enrolled.stderr
    assert agent["enrollment_code"] not in enrolled.stderr  # the code is never logged
    state = json.loads((workdir / "state.json").read_text())
    assert state["agent_id"] == agent["id"] and oct((workdir / "state.json").stat().st_mode & 0o777) == "0o600"
    return agent, proc


def test_an_ldap_sync_through_the_agent_equals_the_hosted_sync(stack, agent_dist, slapd, tmp_path):
    hosted_api, agent_api = stack.api("e2ehost"), stack.api("e2eagent")
    hosted = hosted_api.post("/api/v1/connectors", json={"name": "Corp LDAP", "type": "ldap",
                                                         "config": slapd.config(), "auth_config": slapd.auth()})
    assert hosted.status_code == 201, hosted.text
    hosted_run = _sync(hosted_api, hosted.json()["id"])
    expected = _wait_run(hosted_api, hosted.json()["id"], hosted_run["id"])
    assert expected["status"] == "succeeded", expected
    # On the agent side the server knows only non-secret settings: no URL, no bind DN, no password.
    server_side = {k: v for k, v in slapd.config().items() if k != "url"}
    agent = _create_agent(stack, "e2eagent", "dc1-agent", [])
    remote = agent_api.post("/api/v1/connectors", json={"name": "Corp LDAP", "type": "ldap", "mode": "agent",
                                                        "agent_id": agent["id"], "config": server_side})
    assert remote.status_code == 201, remote.text
    remote = remote.json()
    local = {remote["id"]: {"type": "ldap", "config": {"url": slapd.url},
                            "auth_config_env": {"bind_dn": "RV_LDAP_BIND_DN", "password": "RV_LDAP_PASSWORD"}}}
    agent, proc = _enroll(stack, agent_dist, tmp_path / "agent", "e2eagent", agent, local,
                          env={"RV_LDAP_BIND_DN": ldap_server.SERVICE_DN, "RV_LDAP_PASSWORD": ldap_server.SERVICE_PW},
                          long_poll_seconds=10)
    # Started before the agent runs: the run waits, and says for what.
    agent_run = _sync(agent_api, remote["id"])
    deadline = time.monotonic() + 30
    detail = ""
    while time.monotonic() < deadline and "offline" not in detail:
        detail = agent_api.get(f"/api/v1/connectors/{remote['id']}/sync-runs/{agent_run['id']}").json()[
            "status_detail"]
        time.sleep(0.2)
    assert "waiting for agent 'dc1-agent': offline" in detail
    try:
        proc.start()
        proc.wait_for("agent.start")
        done = _wait_run(agent_api, remote["id"], agent_run["id"])
        assert done["status"] == "succeeded", (done, proc.log_text())
        assert done["status_detail"] == ""
        assert done["counts"] == expected["counts"]
        assert done["counts"]["accounts_created"] >= ldap_server.USERS

        hosted_picture, agent_picture = _picture(stack.tenants["e2ehost"]), _picture(stack.tenants["e2eagent"])
        assert len(agent_picture["accounts"]) >= ldap_server.USERS and agent_picture["grants"]
        assert agent_picture == hosted_picture

        # Test connection waits for the agent's answer inside the request: the job must be visible to it.
        tested = agent_api.post(f"/api/v1/connectors/{remote['id']}/test")
        assert tested.status_code == 200 and tested.json()["success"] is True, (tested.text, proc.log_text())

        # Online, seen by the admin; the credentials never reached the server, its logs or its audit.
        shown = agent_api.get(f"/api/v1/agents/{agent['id']}").json()
        assert shown["state"] == "online" and shown["version"] == "0.1.0"
        with tenant_context(stack.tenants["e2eagent"]):
            jobs = list(AgentJob.objects.filter(agent_id=agent["id"]))
            assert jobs and all(j.status == "succeeded" for j in jobs)
            stored = json.dumps([j.request for j in jobs] + [j.result for j in jobs]) + json.dumps(
                list(AuditEvent.objects.values("before", "after")), default=str)
            assert ConnectorInstance.objects.get(pk=remote["id"]).auth_config_encrypted == ""
            assert not AgentJobChunk.objects.exists()  # assembled, then dropped
        connection.set_schema_to_public()
        for secret in (ldap_server.SERVICE_PW, ldap_server.SERVICE_DN):
            assert secret not in stored
            assert secret not in stack.server.log()
            assert secret not in proc.log_text()
        status = proc.command("status", "--config", str(proc.config))
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["token"] == "accepted" and report["server_agent_id"] == agent["id"]
        assert ldap_server.SERVICE_PW not in status.stdout

        # SIGTERM while idle: a clean, quick exit.
        started = time.monotonic()
        assert proc.signal(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        assert "agent.stopped" in proc.events()
    finally:
        proc.kill()


def test_an_agent_killed_mid_job_is_replaced_and_nothing_is_duplicated(stack, agent_dist, tmp_path):
    client = stack.api("e2eagent")
    people = 1500
    connector = client.post("/api/v1/connectors", json={"name": "HR feed", "type": "synthetic", "authoritative": True,
                                                        "config": {"people": people, "seed": 11}}).json()
    local = {connector["id"]: {"type": "synthetic"}}
    _, first = _enroll(stack, agent_dist, tmp_path / "a1", "e2eagent", "hr-agent", local,
                           upload_chunk_records=10, long_poll_seconds=5)
    run = _sync(client, connector["id"], chunk_size=people)  # one page: one long job
    first.start()
    with tenant_context(stack.tenants["e2eagent"]):
        deadline = time.monotonic() + 60
        while not AgentJobChunk.objects.filter(job__connector_id=connector["id"]).count() >= 5:
            assert time.monotonic() < deadline, first.log_text()
            time.sleep(0.05)
    connection.set_schema_to_public()
    first.kill()  # SIGKILL mid-upload: no release, the lease must expire

    # The same agent restarted (same state file and config), now with bigger chunks.
    second = AgentProcess(agent_dist, tmp_path / "a1", _agent_config(local, upload_chunk_records=1000,
                                                                      long_poll_seconds=5), {})
    second.runs = first.runs
    try:
        second.start()
        done = _wait_run(client, connector["id"], run["id"])
        assert done["status"] == "succeeded", (done, second.log_text())
        assert done["counts"]["identities_created"] == people
        with tenant_context(stack.tenants["e2eagent"]):
            job = AgentJob.objects.get(connector_id=connector["id"])
            assert job.status == "succeeded" and job.attempt == 2
            from identities.models import Identity

            assert Identity.objects.filter(source=f"connector:{connector['id']}").count() == people
            assert not AgentJobChunk.objects.filter(job=job).exists()
            leases = AuditEvent.objects.filter(action="agent_job.lease", object_id=str(job.pk)).order_by("id")
            assert [e.after["requeued_after_expiry"] for e in leases] == [False, True]
        connection.set_schema_to_public()
    finally:
        second.kill()


def test_the_agent_rides_out_a_server_restart_and_a_token_rotation_and_revocation_stops_it(stack, agent_dist, tmp_path):
    client = stack.api("e2eagent")
    connector = client.post("/api/v1/connectors", json={"name": "Small HR", "type": "synthetic",
                                                        "config": {"people": 20, "seed": 3}}).json()
    agent, proc = _enroll(stack, agent_dist, tmp_path / "r", "e2eagent", "restart-agent",
                          {connector["id"]: {"type": "synthetic"}}, long_poll_seconds=20, max_backoff_seconds=1)
    try:
        proc.start()
        proc.wait_for("agent.start")
        time.sleep(1.5)  # the agent is now inside a long poll
        stack.server.kill()
        proc.wait_for("server.unreachable", timeout=30)
        stack.server.start()
        client = stack.api("e2eagent")
        run = _sync(client, connector["id"])
        assert _wait_run(client, connector["id"], run["id"])["status"] == "succeeded", proc.log_text()
        assert proc.process.poll() is None

        # rotate-token beside the running agent: the old token dies at once, the agent picks up the new one.
        old_token = json.loads((tmp_path / "r" / "state.json").read_text())["token"]
        rotated = proc.command("rotate-token", "--config", str(proc.config))
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads((tmp_path / "r" / "state.json").read_text())["token"] != old_token
        assert old_token not in rotated.stderr
        proc.wait_for("token.reloaded", timeout=20)

        # A long poll answers as soon as a job arrives, not at the end of its wait.
        poller_started = time.monotonic()
        run = _sync(client, connector["id"])
        assert _wait_run(client, connector["id"], run["id"])["status"] == "succeeded"
        assert time.monotonic() - poller_started < 15  # the agent's wait is 20 s

        revoked = client.post(f"/api/v1/agents/{agent['id']}/revoke")
        assert revoked.status_code == 200
        assert proc.process.wait(timeout=40) == 1  # refused at once: the agent stops with an error
        assert "agent.fatal" in proc.events()
        assert proc.command("status", "--config", str(proc.config)).returncode == 1
    finally:
        proc.kill()


def test_sigterm_mid_job_hands_the_job_back(stack, agent_dist, tmp_path):
    client = stack.api("e2eagent")
    people = 1500
    connector = client.post("/api/v1/connectors", json={"name": "Slow HR", "type": "synthetic", "authoritative": False,
                                                        "config": {"people": people, "seed": 5}}).json()
    local = {connector["id"]: {"type": "synthetic"}}
    _, proc = _enroll(stack, agent_dist, tmp_path / "t", "e2eagent", "term-agent", local,
                          upload_chunk_records=5, long_poll_seconds=5, shutdown_grace_seconds=0.5)
    run = _sync(client, connector["id"], chunk_size=people)
    try:
        proc.start()
        with tenant_context(stack.tenants["e2eagent"]):
            deadline = time.monotonic() + 60
            while not AgentJobChunk.objects.filter(job__connector_id=connector["id"]).exists():
                assert time.monotonic() < deadline, proc.log_text()
                time.sleep(0.05)
        connection.set_schema_to_public()
        assert proc.signal(signal.SIGTERM) == 0
        assert "job.released" in proc.events(), proc.log_text()
        with tenant_context(stack.tenants["e2eagent"]):
            job = AgentJob.objects.get(connector_id=connector["id"])
            assert job.status == "queued" and not AgentJobChunk.objects.filter(job=job).exists()
        connection.set_schema_to_public()
        proc.start()  # the handed-back job is picked up at once and finished
        assert _wait_run(client, connector["id"], run["id"])["status"] == "succeeded", proc.log_text()
    finally:
        proc.kill()


def test_jobs_an_agent_cannot_finish_fail_at_once_with_the_reason(stack, agent_dist, tmp_path):
    """A job the agent refuses (the cloud names a connection target) or whose result the server refuses
    (oversized chunks) fails on its first attempt with the reason: it is not leased again and again."""
    client = stack.api("e2eagent")
    agent = _create_agent(stack, "e2eagent", "strict-agent", [])
    steered = client.post("/api/v1/connectors", json={
        "name": "Steered LDAP", "type": "ldap", "mode": "agent", "agent_id": agent["id"],
        "config": {"base_dn": "dc=corp,dc=test"}}).json()
    bulky = client.post("/api/v1/connectors", json={"name": "Bulky HR", "type": "synthetic", "mode": "agent",
                                                    "agent_id": agent["id"], "config": {"people": 20}}).json()
    local = {steered["id"]: {"type": "ldap", "auth_config": {"bind_dn": "cn=svc", "password": "on-prem-only"}},
             bulky["id"]: {"type": "synthetic"}}
    # A server that takes at most 3 records per chunk, for an agent that sends 10.
    strict = Server(stack.database_url, stack.logs / "strict",
                    {**SERVER_ENV, "RAPIDVALUE_AGENT_CHUNK_MAX_RECORDS": "3"})
    strict.log_dir.mkdir()
    proc = AgentProcess(agent_dist, tmp_path / "s", _agent_config(local, upload_chunk_records=10,
                                                                   long_poll_seconds=5), {})
    try:
        strict.start()
        assert proc.command("enroll", "--url", strict.url, "--code", agent["enrollment_code"],
                            "--config", str(proc.config)).returncode == 0
        # The API refuses a target in an agent-mode config (400, also when a sync starts); a compromised
        # or mistaken server could still send one, so the agent checks too: while the run waits for the
        # agent, put one straight into the row.
        steered_run = _sync(client, steered["id"])
        with tenant_context(stack.tenants["e2eagent"]):
            ConnectorInstance.objects.filter(pk=steered["id"]).update(
                config={"url": "ldap://attacker.example:389", "base_dn": "dc=corp,dc=test"})
        connection.set_schema_to_public()
        proc.start()
        steered_run = _wait_run(client, steered["id"], steered_run["id"])
        assert steered_run["status"] == "failed", (steered_run, proc.log_text())
        assert "sets url, which the agent takes only from its local config" in steered_run["error"]
        bulky_run = _wait_run(client, bulky["id"], _sync(client, bulky["id"])["id"])
        assert bulky_run["status"] == "failed", (bulky_run, proc.log_text())
        assert "the server refused the result" in bulky_run["error"]
        assert "At most 3 records per chunk" in bulky_run["error"]
        with tenant_context(stack.tenants["e2eagent"]):
            for connector in (steered, bulky):
                job = AgentJob.objects.get(connector_id=connector["id"])
                assert (job.status, job.attempt) == ("failed", 1)
        connection.set_schema_to_public()
        assert proc.process.poll() is None  # the agent carries on with its next job
        assert "on-prem-only" not in strict.log() + proc.log_text()
    finally:
        proc.kill()
        strict.kill()
