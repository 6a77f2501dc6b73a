"""Applications, accounts, the entitlement catalog, roles and grants; effective access."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import tenant_context

from access.effective import effective_access
from access.models import Account, Grant
from rapidvalue.audit.models import AuditEvent
from tests.conftest import assert_error


@pytest.fixture
def catalog(api, world):
    client = api("acme", "admin")
    person = client.post("/api/v1/identities", {"external_id": "acc-1", "first_name": "Ann"}).body
    other = client.post("/api/v1/identities", {"external_id": "acc-2", "first_name": "Ben"}).body
    app = client.post("/api/v1/entitlements/applications", {"name": "ERP", "owners": [other["id"]]}).body
    ents = {
        v: client.post("/api/v1/entitlements", {"application": app["id"], "value": v, "risk_level": "high"}).body
        for v in ("erp-read", "erp-write", "erp-approve", "erp-admin")
    }
    return client, person, other, app, ents


def test_catalog_crud_is_audited(catalog, world):
    client, _, _, app, ents = catalog
    assert app["owners"] and ents["erp-read"]["application"] == app["id"]
    updated = client.patch(f"/api/v1/entitlements/{ents['erp-read']['id']}", {"requestable": False})
    assert updated.status_code == 200 and updated.body["requestable"] is False
    assert client.delete(f"/api/v1/entitlements/{ents['erp-admin']['id']}").status_code == 204
    with tenant_context(world.acme.tenant):
        actions = list(AuditEvent.objects.filter(object_type__in=["application", "entitlement"])
                       .values_list("action", flat=True))
    assert "application.create" in actions and actions.count("entitlement.create") == 4
    assert "entitlement.update" in actions and "entitlement.delete" in actions


def test_entitlement_filters_and_bad_input(catalog):
    client, _, _, app, _ = catalog
    assert client.get("/api/v1/entitlements?q=approve").body["total"] == 1
    assert client.get(f"/api/v1/entitlements?application={app['id']}&risk_level=high").body["total"] == 4
    assert_error(client.get("/api/v1/entitlements?risk_level=extreme"), 400, "invalid")
    assert_error(client.post("/api/v1/entitlements", {"application": app["id"], "value": "erp-read"}), 400, "invalid")
    assert_error(client.post("/api/v1/entitlements", {"application": "nope", "value": "v"}), 400, "invalid")
    assert_error(client.post("/api/v1/entitlements/applications", {"name": "ERP"}), 400, "invalid")


def test_effective_access_expands_nested_roles_with_paths_in_one_query(catalog, world):
    client, person, _, _, ents = catalog
    base = client.post("/api/v1/entitlements/roles",
                       {"name": "ERP base", "entitlements": [ents["erp-read"]["id"]]}).body
    power = client.post("/api/v1/entitlements/roles", {"name": "ERP power", "entitlements": [ents["erp-write"]["id"]],
                                                       "includes": [base["id"]]}).body
    top = client.post("/api/v1/entitlements/roles", {"name": "ERP lead", "includes": [power["id"]]}).body
    for body in ({"role": top["id"], "source": "request"},
                 {"entitlement": ents["erp-approve"]["id"], "source": "birthright"},
                 {"entitlement": ents["erp-read"]["id"], "source": "direct"}):
        response = client.post("/api/v1/entitlements/grants", {"identity": person["id"], **body})
        assert response.status_code == 201, response.body

    items = client.get(f"/api/v1/identities/{person['id']}/access").body["items"]
    roles = {i["role"]["name"]: i for i in items if i["kind"] == "role"}
    assert set(roles) == {"ERP lead", "ERP power", "ERP base"}
    assert roles["ERP lead"]["path"] == "request" and roles["ERP lead"]["via_roles"] == []
    assert [r["name"] for r in roles["ERP base"]["via_roles"]] == ["ERP lead", "ERP power"]
    ents_seen = {(i["entitlement"]["value"], i["path"]) for i in items if i["kind"] == "entitlement"}
    assert ents_seen == {("erp-read", "role"), ("erp-write", "role"), ("erp-approve", "birthright"),
                         ("erp-read", "direct")}
    read_via_role = next(i for i in items if i["kind"] == "entitlement" and i["path"] == "role"
                         and i["entitlement"]["value"] == "erp-read")
    assert [r["name"] for r in read_via_role["via_roles"]] == ["ERP lead", "ERP power", "ERP base"]
    with tenant_context(world.acme.tenant), CaptureQueriesContext(connection) as queries:
        effective_access(person["id"])
    assert len([q for q in queries if not q["sql"].startswith("SET search_path")]) == 1


def test_ended_grants_are_not_effective(catalog, world):
    client, person, _, _, ents = catalog
    grant = client.post("/api/v1/entitlements/grants", {"identity": person["id"],
                                                         "entitlement": ents["erp-read"]["id"]}).body
    assert client.get(f"/api/v1/identities/{person['id']}/access").body["total"] == 1
    assert client.post(f"/api/v1/entitlements/grants/{grant['id']}/end").body["state"] == "ended"
    assert client.get(f"/api/v1/identities/{person['id']}/access").body["total"] == 0
    assert_error(client.post(f"/api/v1/entitlements/grants/{grant['id']}/end"), 409, "already_ended")


def test_role_cycles_are_refused(catalog):
    client = catalog[0]
    a = client.post("/api/v1/entitlements/roles", {"name": "A"}).body
    b = client.post("/api/v1/entitlements/roles", {"name": "B", "includes": [a["id"]]}).body
    c = client.post("/api/v1/entitlements/roles", {"name": "C", "includes": [b["id"]]}).body
    assert_error(client.patch(f"/api/v1/entitlements/roles/{a['id']}", {"includes": [c["id"]]}), 409, "role_cycle")
    assert_error(client.patch(f"/api/v1/entitlements/roles/{a['id']}", {"includes": [a["id"]]}), 409, "role_cycle")
    assert client.get(f"/api/v1/entitlements/roles/{a['id']}").body["includes"] == []


@pytest.mark.parametrize("make_body", [
    lambda p, e, r: {"identity": p, "entitlement": e, "role": r},
    lambda p, e, r: {"identity": p},
    lambda p, e, r: {"entitlement": e},
    lambda p, e, r: {"identity": p, "entitlement": e, "source": "magic"},
    lambda p, e, r: {"identity": p, "entitlement": e, "valid_from": "2026-02-01T00:00:00Z",
                     "valid_until": "2026-01-01T00:00:00Z"},
    lambda p, e, r: {"identity": "00000000-0000-0000-0000-000000000000", "entitlement": e},
])
def test_bad_grants_are_400_and_create_nothing(catalog, world, make_body):
    client, person, _, _, ents = catalog
    role = client.post("/api/v1/entitlements/roles", {"name": "R"}).body
    with tenant_context(world.acme.tenant):
        before = Grant.objects.count()
    body = make_body(person["id"], ents["erp-read"]["id"], role["id"])
    assert_error(client.post("/api/v1/entitlements/grants", body), 400, "invalid")
    with tenant_context(world.acme.tenant):
        assert Grant.objects.count() == before


def test_grants_walk_with_cursor(catalog, world):
    client, person, other, _, ents = catalog
    for who in (person, other):
        for ent in ents.values():
            client.post("/api/v1/entitlements/grants", {"identity": who["id"], "entitlement": ent["id"]})
    page = client.get("/api/v1/entitlements/grants?limit=3").body
    seen = [g["id"] for g in page["items"]]
    while page["next_cursor"]:
        page = client.get(f"/api/v1/entitlements/grants?limit=3&cursor={page['next_cursor']}").body
        seen += [g["id"] for g in page["items"]]
    assert len(seen) == len(set(seen)) == 8 and seen == sorted(seen)
    filtered = client.get(f"/api/v1/entitlements/grants?identity={person['id']}").body
    assert filtered["total"] == 4


def test_account_lifecycle_actions(catalog, world):
    client, person, _, app, ents = catalog
    account = client.post("/api/v1/accounts", {"application": app["id"], "native_id": "u1", "username": "ann"}).body
    assert account["is_orphan"] is True and account["status"] == "active"
    path = f"/api/v1/accounts/{account['id']}"
    assert client.post(f"{path}/link", {"identity_id": person["id"]}).body["identity"] == person["id"]
    assert client.post(f"{path}/disable").body["status"] == "disabled"
    assert client.post(f"{path}/enable").body["status"] == "active"
    assert client.post(f"{path}/unlink").body["identity"] is None
    assert_error(client.post(f"{path}/unlink"), 409, "not_linked")
    assert_error(client.post(f"{path}/link", {"identity_id": "nope"}), 400, "invalid")
    client.post("/api/v1/entitlements/grants", {"account": account["id"], "entitlement": ents["erp-read"]["id"]})
    assert client.post(f"{path}/delete").body["status"] == "deleted"
    assert_error(client.post(f"{path}/enable"), 409, "account_deleted")
    with tenant_context(world.acme.tenant):
        assert set(Grant.objects.filter(account_id=account["id"]).values_list("state", flat=True)) == {"ended"}
        trail = AuditEvent.objects.filter(object_id=account["id"]).order_by("id")
        actions = list(trail.values_list("action", flat=True))
    assert actions == ["account.create", "account.link", "account.disable", "account.enable", "account.unlink",
                       "account.delete"]


def test_orphan_and_dormant_filters(catalog, world):
    client, person, _, app, _ = catalog
    with tenant_context(world.acme.tenant):
        Account.objects.create(application_id=app["id"], native_id="o1")
        Account.objects.create(application_id=app["id"], native_id="fresh", identity_id=person["id"],
                               last_login_at=timezone.now())
        Account.objects.create(application_id=app["id"], native_id="stale", identity_id=person["id"],
                               last_login_at=timezone.now() - timedelta(days=200))

    def natives(query):
        return {a["native_id"] for a in client.get(f"/api/v1/accounts?{query}").body["items"]}

    assert natives("orphan=true") == {"o1"}
    assert natives("orphan=false") == {"fresh", "stale"}
    assert natives("dormant_days=90") == {"o1", "stale"}
    assert_error(client.get("/api/v1/accounts?dormant_days=-1"), 400, "invalid")
    assert_error(client.get("/api/v1/accounts?status=gone"), 400, "invalid")


def test_demo_seed_builds_a_realistic_org_once(world, db):
    from access import demo
    from identities.models import Identity

    with tenant_context(world.acme.tenant):
        first = demo.seed(people=40)
        again = demo.seed(people=40)
        assert first.identities == 40 and first == again
        assert Identity.objects.filter(manager__isnull=True).count() == 1  # one CEO at the top
        assert Identity.objects.filter(depth__gte=2).exists()
        assert Account.objects.filter(identity__isnull=True).count() == 6
        assert effective_access(Identity.objects.filter(department="Engineering").first().pk)


def test_grant_of_someone_elses_account_is_400(catalog, world):
    client, person, other, app, ents = catalog
    account = client.post("/api/v1/accounts",
                          {"application": app["id"], "native_id": "o", "identity": other["id"]}).body
    response = client.post("/api/v1/entitlements/grants", {"identity": person["id"], "account": account["id"],
                                                           "entitlement": ents["erp-read"]["id"]})
    assert_error(response, 400, "invalid")


def test_expired_and_future_grants_are_not_effective(catalog, world):
    client, person, _, _, ents = catalog
    past = (timezone.now() - timedelta(days=2)).isoformat()
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    client.post("/api/v1/entitlements/grants", {"identity": person["id"], "entitlement": ents["erp-read"]["id"],
                                                 "valid_from": past, "valid_until": yesterday})
    client.post("/api/v1/entitlements/grants", {"identity": person["id"], "entitlement": ents["erp-write"]["id"],
                                                 "valid_from": tomorrow})
    client.post("/api/v1/entitlements/grants", {"identity": person["id"], "entitlement": ents["erp-approve"]["id"],
                                                 "valid_until": tomorrow})
    items = client.get(f"/api/v1/identities/{person['id']}/access").body["items"]
    assert [i["entitlement"]["value"] for i in items] == ["erp-approve"]


def test_effective_access_pages_are_slices_of_the_whole_list(catalog, world):
    """The access endpoint pages in SQL: same items, same order and total as the full computation."""
    client, person, _, app, ents = catalog
    more = [client.post("/api/v1/entitlements", {"application": app["id"], "value": f"erp-x{n}"}).body
            for n in range(3)]
    base = client.post("/api/v1/entitlements/roles",
                       {"name": "Base", "entitlements": [ents["erp-read"]["id"], more[0]["id"]]}).body
    lead = client.post("/api/v1/entitlements/roles", {"name": "Lead", "entitlements": [ents["erp-write"]["id"]],
                                                      "includes": [base["id"]]}).body
    account = client.post("/api/v1/accounts", {"application": app["id"], "native_id": "pg-1",
                                               "identity": person["id"]}).body
    grants = [{"role": lead["id"]}, {"role": base["id"], "source": "request"},
              {"entitlement": ents["erp-read"]["id"]}, {"entitlement": ents["erp-read"]["id"], "source": "birthright"},
              {"entitlement": more[1]["id"], "account": account["id"]}, {"entitlement": more[2]["id"]}]
    for body in grants:
        response = client.post("/api/v1/entitlements/grants", {"identity": person["id"], **body})
        assert response.status_code == 201, response.body

    with tenant_context(world.acme.tenant):
        everything = json.loads(json.dumps(effective_access(person["id"])))
    assert len(everything) == 12  # 4 direct + 3 roles (Base twice: direct and via Lead) + 5 through roles
    url = f"/api/v1/identities/{person['id']}/access"
    whole = client.get(f"{url}?limit=500").body
    assert whole["items"] == everything and whole["total"] == 12
    from rest_framework import serializers

    from identities.api.serializers import AccessItemSerializer

    assert [serializers.Serializer.to_representation(AccessItemSerializer(), item) for item in everything] == everything
    pages = [client.get(f"{url}?limit=4&offset={offset}").body for offset in range(0, 16, 4)]
    assert [item for page in pages for item in page["items"]] == everything
    assert [len(page["items"]) for page in pages] == [4, 4, 4, 0]
    assert {page["total"] for page in pages} == {12} and pages[1]["offset"] == 4 and pages[1]["limit"] == 4
    assert client.get(f"{url}?limit=0").body == {"items": [], "total": 12, "limit": 0, "offset": 0}
    assert client.get(f"{url}?offset=99").body == {"items": [], "total": 12, "limit": 50, "offset": 99}
    assert_error(client.get(f"{url}?offset=-1"), 400, "invalid")
