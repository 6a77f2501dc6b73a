"""Control-plane staff: login on the base domain, X-Tenant-Id, both audit logs, the consoles."""

from __future__ import annotations

import re

from django.test import Client
from django_tenants.utils import tenant_context

from rapidvalue.audit.models import AuditEvent
from rapidvalue.tenancy.models import ControlPlaneAuditEvent
from tests.conftest import PASSWORD, assert_error


def staff_api(api, world, **headers):
    client = api(**headers)
    client.token = world.staff_token
    return client


def test_staff_login_on_the_base_domain_gives_a_control_token(api):
    response = api(host="localhost").post("/api/v1/auth/login", {"email": "staff@control.test", "password": PASSWORD})
    assert response.status_code == 200, response.body
    assert response.body["tenant"] is None
    client = api()
    client.token = response.body["access"]
    me = client.get("/api/v1/auth/me").body
    assert me["kind"] == "control" and me["tenant"] is None


def test_tenant_users_are_not_control_plane_staff(api):
    response = api(host="localhost").post("/api/v1/auth/login", {"email": "admin@acme.test", "password": PASSWORD})
    assert_error(response, 401, "invalid_credentials")


def test_x_tenant_id_acts_inside_that_tenant_by_slug_or_id(api, world):
    by_slug = staff_api(api, world, HTTP_X_TENANT_ID="acme").get("/api/v1/users")
    assert by_slug.status_code == 200, by_slug.body
    emails = {u["email"] for u in by_slug.body["items"]}
    assert "admin@acme.test" in emails and not any(e.endswith("@globex.test") for e in emails)
    by_id = staff_api(api, world, HTTP_X_TENANT_ID=str(world.globex.tenant.pk)).get("/api/v1/users")
    assert {u["email"] for u in by_id.body["items"]} >= {"admin@globex.test"}


def test_cross_tenant_requests_are_written_to_both_audit_logs(api, world):
    response = staff_api(api, world, HTTP_X_TENANT_ID="acme").get("/api/v1/users?limit=1")
    request_id = response["X-Request-Id"]
    control = ControlPlaneAuditEvent.objects.get(request_id=request_id)
    assert control.action == "control_plane.cross_tenant_request"
    assert control.tenant_slug == "acme" and control.actor_label == "staff@control.test"
    assert control.details == {"method": "GET", "path": "/api/v1/users", "status": 200}
    with tenant_context(world.acme.tenant):
        tenant_event = AuditEvent.objects.get(request_id=request_id)
        assert tenant_event.actor_type == "control" and tenant_event.actor_label == "staff@control.test"
    with tenant_context(world.globex.tenant):
        assert not AuditEvent.objects.filter(request_id=request_id).exists()


def test_writes_through_x_tenant_id_are_audited_as_the_staff_member(api, world):
    response = staff_api(api, world, HTTP_X_TENANT_ID="acme").post(
        "/api/v1/users", {"email": "helpdesk@acme.test", "password": PASSWORD}
    )
    assert response.status_code == 201, response.body
    with tenant_context(world.acme.tenant):
        event = AuditEvent.objects.get(action="user.create", object_id=str(response.body["id"]))
        assert event.actor_type == "control" and event.actor_label == "staff@control.test"


def test_x_tenant_id_from_anyone_else_is_403(api, world):
    for role in ("admin", "service_admin", "auditor"):
        response = api("acme", role, HTTP_X_TENANT_ID="globex").get("/api/v1/users")
        assert_error(response, 403, "x_tenant_forbidden")
    # Even naming its own tenant: the header is reserved for the control plane.
    assert_error(api("acme", "admin", HTTP_X_TENANT_ID="acme").get("/api/v1/users"), 403, "x_tenant_forbidden")


def test_x_tenant_id_without_a_token_is_401(api):
    assert_error(api(HTTP_X_TENANT_ID="acme").get("/api/v1/users"), 401)


def test_unknown_tenant_in_x_tenant_id_is_404(api, world):
    assert_error(staff_api(api, world, HTTP_X_TENANT_ID="nope").get("/api/v1/users"), 404, "tenant_not_found")


def test_control_token_without_x_tenant_id_cannot_reach_tenant_data(api, world):
    assert_error(staff_api(api, world).get("/api/v1/users"), 403, "tenant_required")


def test_control_token_on_a_tenant_domain_is_401(api, world):
    client = staff_api(api, world, host=world.acme.domain)
    assert_error(client.get("/api/v1/users"), 401, "wrong_tenant")


def _console_login(host: str, email: str) -> tuple[Client, int]:
    client = Client(HTTP_HOST=host)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    response = client.post("/admin/login/?next=/admin/", {"username": email, "password": PASSWORD,
                                                         "csrfmiddlewaretoken": token, "next": "/admin/"})
    return client, response.status_code


def test_staff_sign_in_to_the_control_plane_console_and_see_tenants(world, db):
    client, status = _console_login("localhost", "staff@control.test")
    assert status == 302
    page = client.get("/admin/tenancy/tenant/")
    assert page.status_code == 200
    assert b"acme" in page.content and b"globex" in page.content


def test_tenant_admin_signs_in_to_the_tenant_console_only(world, db):
    client, status = _console_login(world.acme.domain, "admin@acme.test")
    assert status == 302
    users = client.get("/admin/users/user/")
    assert users.status_code == 200 and b"admin@acme.test" in users.content
    assert b"admin@globex.test" not in users.content
    # A tenant admin is not control-plane staff.
    _, status = _console_login("localhost", "admin@acme.test")
    assert status == 200  # the login form again, with an error


def test_console_changes_are_audited(world, db):
    client, _ = _console_login(world.acme.domain, "admin@acme.test")
    page = client.get(f"/admin/users/user/{world.acme.member.pk}/change/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    response = client.post(f"/admin/users/user/{world.acme.member.pk}/change/", {
        "csrfmiddlewaretoken": token, "email": "member@acme.test", "full_name": "Renamed Member",
        "is_active": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
    })
    assert response.status_code == 302, response.content[:2000]
    with tenant_context(world.acme.tenant):
        event = AuditEvent.objects.filter(action="user.update", object_id=str(world.acme.member.pk)).latest("id")
        assert event.changes["full_name"] == ["", "Renamed Member"]
        assert event.token_kind == "session" and event.actor_label == "admin@acme.test"


def test_auditor_console_is_read_only(world, db):
    client, status = _console_login(world.acme.domain, "auditor@acme.test")
    assert status == 302
    assert client.get("/admin/users/user/").status_code == 200
    assert client.get("/admin/users/user/add/").status_code == 403


def test_control_plane_audit_log_is_append_only_in_the_database(world, db):
    import pytest
    from django.db import connection, transaction
    from django.db.utils import ProgrammingError

    assert ControlPlaneAuditEvent.objects.exists()
    for statement in ("UPDATE tenancy_controlplaneauditevent SET action = 'x'",
                      "DELETE FROM tenancy_controlplaneauditevent"):
        with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), \
                connection.cursor() as cursor:
            cursor.execute(statement)
    assert ControlPlaneAuditEvent.objects.filter(action="tenant.provision").exists()


def test_tenant_console_shows_identities_with_search_filters_and_org_chain(world, db):
    from tests.org import build_org

    org = build_org(world)
    client, _ = _console_login(world.acme.domain, "admin@acme.test")
    listing = client.get("/admin/identities/identity/?q=D5&status__exact=active")
    assert listing.status_code == 200 and b"hr-d5" in listing.content and b"hr-d4" not in listing.content
    page = client.get(f"/admin/identities/identity/{org.id('d5')}/change/")
    chain = page.content.decode()
    assert page.status_code == 200
    assert "Ceo Test → Vp Test → D2 Test → D3 Test → D4 Test" in chain
