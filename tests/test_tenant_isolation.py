"""Two tenants with data, and zero leakage through any endpoint.

Both tenants get the same kinds of data (users, service tokens, audit events from the session's
``world``; identities, accounts, applications, entitlements, roles and grants from the demo
organisation of ``access.demo``; connectors, sync runs, webhooks and deliveries, see
``_seed_domain_data``), plus
globex-only probe objects. Then, data-driven from the OpenAPI document, so that every endpoint
added later is covered without being named here:

* every GET without path parameters, called by acme (admin, auditor, admin service token), shows
  nothing of globex: not the word ``globex`` (emails ``@globex.test``, token names ``globex-...``,
  the slug) and none of the ids of globex's objects; the same calls by globex do show its data;
* every operation on ``/<resource>/{id}[/...]`` answers 404, in the one error shape, for the ids of
  globex's objects (taken from globex's own list of that resource), and writes change nothing;
  operations under nested parameters (``/connectors/{connector_pk}/sync-runs/{id}``) filled with
  globex's ids answer 404 or an empty list, never globex's data;
* a token is good in its own tenant only: on another tenant's domain it is 401 ``wrong_tenant``.

A new resource needs data in both tenants (``_seed_domain_data``): the tests say so when it has none.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from rapidvalue import crypto
from rapidvalue.audit.models import AuditEvent
from rapidvalue.authn.models import ApiToken
from rapidvalue.context import Actor, acting_as
from rapidvalue.users.models import User
from rapidvalue.webhooks.models import WebhookDelivery, WebhookEvent, WebhookSubscription
from tests.conftest import PASSWORD, Api, assert_error

ROLES = ["admin", "auditor", "service_admin"]
PROBE_EMAIL = "isolation-probe@globex.test"
PROBE_NAME = "Globex Isolation Probe"
# /api/v1/<resource>/{id} and its sub-resources and actions, /api/v1/<resource>/{id}/<more>
ID_PATH = re.compile(r"^(?P<parent>/api/v1/[^{}]+)/\{id\}(?:/[^{}]+)?$")
PARAM = re.compile(r"\{[^}]+\}")
PAGE = 500
SAMPLE = 5  # foreign ids tried per operation


@pytest.fixture
def document(world, db) -> dict:
    return Client().get("/openapi.json").json()


def _seed_domain_data(tenant_world, seed_value: int) -> None:
    """Data for every domain resource, the same kinds in each tenant: extend it with each new resource."""
    from access import demo
    from connectors.models import SyncRun

    with tenant_context(tenant_world.tenant), acting_as(Actor(type="system", id="test", label="isolation")):
        demo.seed(people=15, seed_value=seed_value)
    created = Api(tenant_world.tokens["admin"]).post(
        "/api/v1/connectors", {"name": f"{tenant_world.slug} HR feed", "type": "synthetic", "config": {"people": 3}}
    )
    assert created.status_code == 201, created.content
    with tenant_context(tenant_world.tenant):
        SyncRun.objects.create(connector_id=created.body["id"], status=SyncRun.Status.SUCCEEDED, requested_by="test")
        # Straight into the tables: the API would resolve the URL's host (outbound SSRF check).
        subscription = WebhookSubscription.objects.create(
            url=f"https://hooks.{tenant_world.slug}.example/rapidvalue", event_types=["identity.created"],
            description=f"{tenant_world.slug} SIEM", secret_encrypted=crypto.encrypt("test-secret"),
        )
        event = WebhookEvent.objects.create(type="identity.created", payload={"tenant": tenant_world.slug})
        WebhookDelivery.objects.create(subscription=subscription, event=event, event_time=event.occurred_at)
    agent = Api(tenant_world.tokens["admin"]).post(
        "/api/v1/agents", {"name": f"{tenant_world.slug}-dc-agent", "connector_ids": [created.body["id"]]})
    assert agent.status_code == 201, agent.content
    with tenant_context(tenant_world.tenant):
        from agentspine.models import AgentJob

        AgentJob.objects.create(agent_id=agent.body["id"], connector_id=created.body["id"], kind="sync",
                                request={"connector_business_id": created.body["id"]})


@pytest.fixture
def tenants(world, db):
    """Both tenants filled alike, plus globex objects whose ids acme does not have (rolled back per test)."""
    _seed_domain_data(world.acme, 1)
    _seed_domain_data(world.globex, 2)
    # User and audit event ids are per-schema sequences and overlap between tenants: give globex
    # one of each above anything acme has, so that "globex's id" is never also "acme's id".
    with tenant_context(world.acme.tenant):
        acme_max_user = User.objects.order_by("-id").values_list("id", flat=True).first() or 0
        acme_max_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with tenant_context(world.globex.tenant):
        globex_max_user = User.objects.order_by("-id").values_list("id", flat=True).first() or 0
        globex_max_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        user = User.objects.create_user(
            PROBE_EMAIL, PASSWORD, id=max(acme_max_user, globex_max_user) + 1000, full_name=PROBE_NAME
        )
        AuditEvent.objects.create(
            id=max(acme_max_event, globex_max_event) + 1000, tenant="globex", actor_type="system",
            actor_label=PROBE_EMAIL, action="isolation.probe", object_type="user", object_id=str(user.pk),
        )
    return world


def _list_paths(document: dict) -> list[str]:
    return [path for path, item in document["paths"].items()
            if "{" not in path and item.get("get", {}).get("operationId", "").endswith("_list")]


def _get_paths(document: dict) -> list[str]:
    """Every GET under /api/v1/ without path parameters (lists and singletons)."""
    return [path for path, item in document["paths"].items()
            if "get" in item and "{" not in path and path.startswith("/api/v1/")]


def _url(document: dict, path: str) -> str:
    return f"{path}?limit={PAGE}" if path in _list_paths(document) else path


def _id_operations(document: dict, methods: set[str]) -> list[tuple[str, str, str]]:
    """(method, path, parent list) for every operation addressed by one object ``{id}``."""
    found = []
    for path, item in document["paths"].items():
        match = ID_PATH.match(path)
        if match:
            found += [(method, path, match["parent"]) for method in item if method in methods]
    return found


def _nested_operations(document: dict, methods: set[str]) -> list[tuple[str, str]]:
    """(method, path) for every operation under nested parameters, or under a parameter not named ``id``.

    The agent spine's job operations (``/api/v1/agent/jobs/{job_id}/...``) take agent tokens only and
    have no list to take globex's ids from: test_agentspine shows another tenant's agent gets a 404.
    """
    found = []
    for path, item in document["paths"].items():
        if path.startswith("/api/v1/agent/"):
            continue
        if path.startswith("/api/v1/") and PARAM.search(path) and not ID_PATH.match(path):
            found += [(method, path) for method in item if method in methods]
    return found


def _globex_url(globex: Api, path: str) -> tuple[str, str]:
    """``path`` with each parameter filled with the first of globex's objects at that level, and the URL of
    the innermost object (the path cut after its last parameter)."""
    url, rest = "", path
    while match := PARAM.search(rest):
        prefix = url + rest[: match.start()]
        ids = _all_ids(globex, prefix.rstrip("/"))
        assert ids, f"globex has no object at {prefix}: seed one in _seed_domain_data"
        url, rest = prefix + ids[0], rest[match.end():]
    return url + rest, url


def _all_ids(client: Api, list_path: str) -> list[str]:
    ids, offset = [], 0
    while True:
        response = client.get(f"{list_path}?limit={PAGE}&offset={offset}")
        assert response.status_code == 200, (list_path, response.status_code, response.content[:300])
        items = response.body["items"]
        ids += [str(item["id"]) for item in items]
        offset += len(items)
        if not items or offset >= response.body["total"]:
            return ids


def _foreign_ids(globex: Api, acme_admin: Api, parent: str) -> list[str]:
    """Ids of globex's objects behind ``parent`` that no acme object has."""
    acme_ids = set(_all_ids(acme_admin, parent))
    foreign = [i for i in _all_ids(globex, parent) if i not in acme_ids]
    assert foreign, f"globex has no object behind {parent} whose id acme lacks: seed one in `tenants`"
    return foreign[:SAMPLE]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@pytest.fixture
def globex_markers(tenants, document, api) -> list[str]:
    """What may never appear in an answer to acme: globex's name, the probe, the ids of all its objects."""
    globex = api("globex", "admin")
    ids = {i for path in _list_paths(document) for i in _all_ids(globex, path) if _is_uuid(i)}
    assert len(ids) > 50, "globex should have data behind its lists"
    return ["globex", PROBE_NAME.lower(), *sorted(ids)]


def _leaks(text: str, markers: list[str]) -> list[str]:
    lowered = text.lower()
    return [marker for marker in markers if marker in lowered]


class TestReads:
    @pytest.mark.parametrize("role", ROLES)
    def test_no_get_endpoint_shows_globex_data_to_acme(self, api, document, globex_markers, role):
        client = api("acme", role)
        paths = _get_paths(document)
        assert len(paths) >= 8, paths
        for path in paths:
            response = client.get(_url(document, path))
            assert not _leaks(response.content.decode(), globex_markers), (role, path, response.content[:500])
            if not path.startswith("/api/v1/agent/"):
                assert response.status_code == 200, (role, path, response.status_code, response.content[:300])

    def test_both_tenants_have_data_and_each_sees_its_own(self, api, document, globex_markers):
        """Positive control: the leak detector finds globex's data in globex's answers, and acme's lists are not
        empty where globex's are (so an empty acme answer cannot pass for an isolated one)."""
        globex, acme = api("globex", "admin"), api("acme", "admin")
        lists = _list_paths(document)
        expected = {"/api/v1/users", "/api/v1/auth/service-tokens", "/api/v1/audit-events", "/api/v1/identities",
                    "/api/v1/accounts", "/api/v1/entitlements", "/api/v1/entitlements/grants"}
        assert expected <= set(lists), sorted(lists)
        for path in lists:
            theirs, ours = globex.get(f"{path}?limit={PAGE}"), acme.get(f"{path}?limit={PAGE}")
            assert theirs.status_code == ours.status_code == 200, path
            assert theirs.body["items"], f"{path}: globex has no data there; seed both tenants in `tenants`"
            assert ours.body["items"], f"{path}: globex has data, acme none; seed both tenants alike"
            assert _leaks(theirs.content.decode(), globex_markers), path
        emails = {u["email"] for u in acme.get(f"/api/v1/users?limit={PAGE}").body["items"]}
        assert {"admin@acme.test", "auditor@acme.test", "member@acme.test"} <= emails
        assert PROBE_EMAIL in {u["email"] for u in globex.get(f"/api/v1/users?limit={PAGE}").body["items"]}
        names = {t["name"] for t in acme.get("/api/v1/auth/service-tokens").body["items"]}
        assert {"acme-hr-sync", "acme-siem-reader"} <= names
        assert {e["tenant"] for e in acme.get(f"/api/v1/audit-events?limit={PAGE}").body["items"]} == {"acme"}

    def test_filters_naming_globex_objects_find_nothing(self, api, tenants):
        client = api("acme", "admin")
        with tenant_context(tenants.globex.tenant):
            token_id = str(ApiToken.objects.get(name="globex-hr-sync").pk)
        for query in (f"actor={PROBE_EMAIL}", "actor=admin@globex.test", "action=isolation.probe",
                      f"object_id={token_id}"):
            body = client.get(f"/api/v1/audit-events?{query}").body
            assert body["total"] == 0 and body["items"] == [], query

    @pytest.mark.parametrize("role", ROLES)
    def test_globex_objects_are_404_for_acme(self, api, document, tenants, role):
        globex, acme, acme_admin = api("globex", "admin"), api("acme", role), api("acme", "admin")
        operations = _id_operations(document, {"get"})
        parents = {parent for _, _, parent in operations}
        assert {"/api/v1/users", "/api/v1/auth/service-tokens", "/api/v1/audit-events",
                "/api/v1/identities"} <= parents, sorted(parents)
        for _, path, parent in operations:
            assert parent in document["paths"], f"{path}: no list at {parent} to find globex's objects"
            for object_id in _foreign_ids(globex, acme_admin, parent):
                url = path.replace("{id}", object_id)
                assert globex.get(url).status_code == 200, url  # it exists, in globex
                assert_error(acme.get(url), 404, "not_found")


    @pytest.mark.parametrize("role", ROLES)
    def test_nested_globex_objects_stay_invisible(self, api, document, globex_markers, role):
        """Under a parent of globex's: a 404, or an empty list (the parent is not acme's), never globex's data."""
        globex, acme = api("globex", "admin"), api("acme", role)
        operations = _nested_operations(document, {"get"})
        assert ("get", "/api/v1/connectors/{connector_pk}/sync-runs/{id}") in operations, operations
        for _, path in operations:
            url, _ = _globex_url(globex, path)
            assert globex.get(url).status_code == 200, url  # globex sees it
            response = acme.get(url)
            assert not _leaks(response.content.decode(), globex_markers), (url, response.content[:300])
            if response.status_code == 200:
                assert response.body["items"] == [], (url, response.body)
            else:
                assert_error(response, 404, "not_found")


class TestWrites:
    def test_writes_to_globex_objects_are_404_and_change_nothing(self, api, document, tenants):
        globex, acme = api("globex", "admin"), api("acme", "admin")
        operations = _id_operations(document, {"post", "put", "patch", "delete"})
        assert {(m, p) for m, p, _ in operations} >= {
            ("patch", "/api/v1/users/{id}"), ("put", "/api/v1/users/{id}"), ("delete", "/api/v1/users/{id}"),
            ("delete", "/api/v1/auth/service-tokens/{id}"),
        }
        # A body that validates where bodies are checked before the object is looked up (account link):
        # the answer must then still be the 404 of an object acme does not have.
        acme_identity = acme.get("/api/v1/identities?limit=1").body["items"][0]["id"]
        body = {"full_name": "pwned by acme", "is_active": False, "is_admin": False, "name": "pwned",
                "identity_id": acme_identity}
        for method, path, parent in operations:
            for object_id in _foreign_ids(globex, acme, parent):
                detail = f"{parent}/{object_id}"
                before = globex.get(detail).body
                url = path.replace("{id}", object_id)
                response = acme.delete(url) if method == "delete" else acme.request(method.upper(), url, body)
                assert_error(response, 404, "not_found")
                assert globex.get(detail).body == before, (method, url)
        for method, path in _nested_operations(document, {"post", "put", "patch", "delete"}):
            url, detail = _globex_url(globex, path)
            before = globex.get(detail).body
            response = acme.delete(url) if method == "delete" else acme.request(method.upper(), url, body)
            assert_error(response, 404, "not_found")
            assert globex.get(detail).body == before, (method, url)

    def test_globex_schema_is_untouched_by_acme_writes(self, api, tenants):
        acme = api("acme", "admin")
        with tenant_context(tenants.globex.tenant):
            user = User.objects.get(email=PROBE_EMAIL)
            token = ApiToken.objects.get(name="globex-hr-sync")
            events_before = AuditEvent.objects.count()
        assert_error(acme.patch(f"/api/v1/users/{user.pk}", {"full_name": "pwned", "is_active": False}), 404)
        assert_error(acme.delete(f"/api/v1/users/{user.pk}"), 404)
        assert_error(acme.delete(f"/api/v1/auth/service-tokens/{token.pk}"), 404)
        with tenant_context(tenants.globex.tenant):
            user.refresh_from_db()
            assert (user.full_name, user.is_active) == (PROBE_NAME, True)
            assert ApiToken.objects.get(pk=token.pk).revoked_at is None
            assert AuditEvent.objects.count() == events_before

    def test_same_email_in_another_tenant_is_no_conflict(self, api, world):
        """Users are per tenant: acme may have member@globex.test; a 409 would reveal globex's users."""
        response = api("acme", "admin").post(
            "/api/v1/users", {"email": "member@globex.test", "password": PASSWORD, "full_name": "Acme's own"}
        )
        assert response.status_code == 201, response.content
        with tenant_context(world.globex.tenant):
            assert User.objects.get(email="member@globex.test").full_name == ""
        with tenant_context(world.acme.tenant):
            assert User.objects.get(email="member@globex.test").full_name == "Acme's own"


class TestDomains:
    @pytest.mark.parametrize("role", ["admin", "service_admin", "agent"])
    def test_globex_token_on_acme_domain_is_401_everywhere(self, api, world, document, role):
        client = api("globex", role, host=world.acme.domain)
        for path in _get_paths(document):
            error = assert_error(client.get(path), 401, "wrong_tenant")
            assert "globex" not in json.dumps(error).lower()

    def test_globex_token_cannot_write_on_acme_domain(self, api, world):
        client = api("globex", "admin", host=world.acme.domain)
        assert_error(client.post("/api/v1/users", {"email": "x@acme.test", "password": PASSWORD}), 401, "wrong_tenant")
        with tenant_context(world.acme.tenant):
            assert not User.objects.filter(email="x@acme.test").exists()

    @pytest.mark.parametrize("role", ["admin", "service_admin"])
    def test_acme_token_on_acme_domain_works(self, api, world, role):
        client = api("acme", role, host=world.acme.domain)
        me = client.get("/api/v1/auth/me")
        assert me.status_code == 200 and me.body["tenant"] == "acme"
        users = client.get("/api/v1/users")
        assert users.status_code == 200
        assert "admin@acme.test" in {u["email"] for u in users.body["items"]}
        assert "globex" not in users.content.decode().lower()

    def test_x_tenant_id_is_no_way_into_another_tenant(self, api):
        response = api("acme", "admin").get("/api/v1/users", headers={"X-Tenant-Id": "globex"})
        error = assert_error(response, 403, "x_tenant_forbidden")
        assert "globex" not in json.dumps(error).lower()

    def test_login_tenant_comes_from_host_and_body_not_from_a_bearer_token(self, api, world):
        """On the base domain the body names the tenant; an acme token sent along does not bind the login to acme."""
        response = api("acme", "admin").post(
            "/api/v1/auth/login", {"email": "admin@globex.test", "password": PASSWORD, "tenant": "globex"}
        )
        assert response.status_code == 200, response.content
        assert response.body["tenant"] == "globex"
        me = Api(response.body["access"]).get("/api/v1/auth/me")
        assert me.body["tenant"] == "globex" and me.body["email"] == "admin@globex.test"
