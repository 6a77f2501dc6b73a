"""The visibility matrix: admin, auditor, manager at depth 1 and 5, resource owner, both, none.

Applied to every endpoint that exposes identity data, lists and details alike.
"""

from __future__ import annotations

import pytest

from tests.conftest import Api, assert_error
from tests.org import CHAIN, build_org

ALL = set(CHAIN) | {"vp2", "owner", "holder", "acct", "both", "loner", "both_report"}
EXPECTED = {
    "admin": ALL,
    "auditor": ALL,
    "manager1": set(CHAIN[1:]),
    "manager5": {"d5", "d6", "d7"},
    "owner": {"owner", "holder", "acct"},
    "both": {"both", "both_report", "d3"},
    "loner": {"loner"},
    "nobody": set(),
}


@pytest.fixture
def org(world, db):
    return build_org(world)


def client_for(world, org, who: str) -> Api:
    token = world.acme.tokens[who] if who in ("admin", "auditor") else org.tokens[who]
    return Api(token)


def listed(client: Api, path: str) -> list[dict]:
    response = client.get(path)
    assert response.status_code == 200, response.body
    return response.body["items"]


@pytest.mark.parametrize("who", list(EXPECTED))
def test_identity_list_and_detail(world, org, who):
    client = client_for(world, org, who)
    seen = {i["id"] for i in listed(client, "/api/v1/identities?limit=500")}
    expected = org.ids(*EXPECTED[who])
    if who in ("admin", "auditor"):
        assert expected <= seen
    else:
        assert seen == expected
    for name in ALL:
        response = client.get(f"/api/v1/identities/{org.id(name)}")
        if name in EXPECTED[who]:
            assert response.status_code == 200
        else:
            assert_error(response, 404, "not_found")


@pytest.mark.parametrize("who", list(EXPECTED))
def test_grants_follow_identity_visibility(world, org, who):
    client = client_for(world, org, who)
    holders = {g["identity"] for g in listed(client, "/api/v1/entitlements/grants?limit=500")}
    expected_holders = org.ids(*({"holder", "d3", "d6"} & EXPECTED[who]))
    if who in ("admin", "auditor"):
        assert expected_holders <= holders
    else:
        assert holders == expected_holders


@pytest.mark.parametrize("who", list(EXPECTED))
def test_accounts_follow_identity_visibility_and_orphans_are_admin_only(world, org, who):
    client = client_for(world, org, who)
    accounts = {a["id"] for a in listed(client, "/api/v1/accounts?limit=500")}
    account, orphan = str(org.objects["account"].pk), str(org.objects["orphan"].pk)
    assert (account in accounts) == ("acct" in EXPECTED[who])
    assert (orphan in accounts) == (who in ("admin", "auditor"))
    detail = client.get(f"/api/v1/accounts/{orphan}")
    assert detail.status_code == (200 if who in ("admin", "auditor") else 404)


@pytest.mark.parametrize("who", ["manager1", "manager5", "owner", "both", "loner"])
def test_reports_and_access_of_invisible_identities_are_404(world, org, who):
    client = client_for(world, org, who)
    hidden = sorted(ALL - EXPECTED[who])[0]
    assert_error(client.get(f"/api/v1/identities/{org.id(hidden)}/reports"), 404)
    assert_error(client.get(f"/api/v1/identities/{org.id(hidden)}/access"), 404)
    visible = sorted(EXPECTED[who])[0]
    assert client.get(f"/api/v1/identities/{org.id(visible)}/access").status_code == 200


def test_manager_reports_are_scoped_too(world, org):
    client = client_for(world, org, "manager5")
    names = {i["id"] for i in listed(client, f"/api/v1/identities/{org.id('d5')}/reports?indirect=true")}
    assert names == org.ids("d6", "d7")


def test_catalog_is_visible_to_everyone_but_writable_by_admins_only(world, org):
    for who in ("manager1", "nobody", "owner"):
        client = client_for(world, org, who)
        assert {a["name"] for a in listed(client, "/api/v1/entitlements/applications")} >= {"Payroll", "CRM"}
        assert listed(client, "/api/v1/entitlements/roles")
        assert_error(client.post("/api/v1/entitlements/applications", {"name": "Shadow IT"}), 403)
        assert_error(client.post("/api/v1/identities", {"external_id": "x"}), 403)


def test_scoped_users_cannot_write_identity_data(world, org):
    client = client_for(world, org, "manager1")
    assert_error(client.patch(f"/api/v1/identities/{org.id('d2')}", {"title": "Boss"}), 403)
    assert_error(client.post(f"/api/v1/identities/{org.id('d2')}/deactivate"), 403)
    assert_error(client.post(f"/api/v1/accounts/{org.objects['account'].pk}/disable"), 403)


def test_other_tenant_sees_none_of_it(world, org):
    client = Api(world.globex.tokens["admin"])
    assert listed(client, "/api/v1/identities") == []
    assert listed(client, "/api/v1/entitlements/grants") == []
    assert listed(client, "/api/v1/accounts") == []
    assert_error(client.get(f"/api/v1/identities/{org.id('ceo')}"), 404)
    assert_error(client.get(f"/api/v1/accounts/{org.objects['account'].pk}"), 404)


@pytest.mark.parametrize("path", ["/api/v1/identities", "/api/v1/accounts", "/api/v1/entitlements/grants"])
def test_scoped_lists_cost_the_same_queries_for_1_or_500_rows(world, org, path, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(world, org, "owner")
    with CaptureQueriesContext(connection) as one:
        client.get(f"{path}?limit=1")
    with CaptureQueriesContext(connection) as many:
        client.get(f"{path}?limit=500")
    assert len(one) == len(many)
    # host, tenant, user, scope facts (own path and ownership), count, page (+ 2 search_path switches):
    # no per-row query.
    with django_assert_max_num_queries(8):
        client.get(f"{path}?limit=500")


@pytest.mark.parametrize("who", ["manager1", "owner", "loner"])
def test_grant_detail_outside_scope_is_404(world, org, who):
    from django_tenants.utils import tenant_context

    from access.models import Grant

    with tenant_context(world.acme.tenant):
        grants = {g.identity_id.hex: str(g.pk) for g in Grant.objects.filter(identity__isnull=False)}
    client = client_for(world, org, who)
    for name in ("holder", "d3", "d6"):
        grant_id = grants[org.people[name].pk.hex]
        response = client.get(f"/api/v1/entitlements/grants/{grant_id}")
        if name in EXPECTED[who]:
            assert response.status_code == 200
        else:
            assert_error(response, 404, "not_found")


GRANTS_SEEN = {
    "owner": {"holder_payroll", "holder_payroll_ended", "acct_account_payroll"},
    "both": {"d3_auditors", "both_report_crm"},
    "manager1": {"d3_auditors", "d3_crm", "d6_crm"},
    "manager5": {"d6_crm"},
    "loner": set(),
    "nobody": set(),
}


@pytest.mark.parametrize("who", list(GRANTS_SEEN))
def test_resource_owners_see_only_the_grants_on_what_they_own(world, org, who):
    """A manager sees every grant of their reports; a resource owner only the grants on what they
    own (not the other access of the holders this makes visible); someone who is both, the union."""
    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from access.models import Grant

    people, objects = org.people, org.objects
    with tenant_context(world.acme.tenant):
        grants = {
            "holder_payroll": Grant.objects.get(identity=people["holder"], entitlement=objects["pay_admin"]),
            "d3_auditors": Grant.objects.get(identity=people["d3"], role=objects["auditors"]),
            "d6_crm": Grant.objects.get(identity=people["d6"], entitlement=objects["crm_user"]),
            # Not on Payroll: the owner of Payroll sees holder and acct, not this access of theirs.
            "holder_crm": Grant.objects.create(identity=people["holder"], entitlement=objects["crm_user"]),
            "acct_crm": Grant.objects.create(identity=people["acct"], entitlement=objects["crm_user"]),
            # On Payroll: an ended grant of a visible holder, a grant held through a Payroll account.
            "holder_payroll_ended": Grant.objects.create(identity=people["holder"], entitlement=objects["pay_admin"],
                                                         state="ended", ended_at=timezone.now()),
            "acct_account_payroll": Grant.objects.create(account=objects["account"], entitlement=objects["pay_admin"],
                                                         source="sync"),
            # "both" owns the role Auditors (held by d3) and manages both_report.
            "d3_crm": Grant.objects.create(identity=people["d3"], entitlement=objects["crm_user"]),
            "both_report_crm": Grant.objects.create(identity=people["both_report"], entitlement=objects["crm_user"]),
        }
    names = {str(grant.pk): name for name, grant in grants.items()}
    client = client_for(world, org, who)
    seen = {names.get(g["id"], g["id"]) for g in listed(client, "/api/v1/entitlements/grants?limit=500")}
    assert seen == GRANTS_SEEN[who]
    for name, grant in grants.items():
        response = client.get(f"/api/v1/entitlements/grants/{grant.pk}")
        assert response.status_code == (200 if name in GRANTS_SEEN[who] else 404), name
    admin = {g["id"] for g in listed(client_for(world, org, "admin"), "/api/v1/entitlements/grants?limit=500")}
    assert set(names) <= admin
