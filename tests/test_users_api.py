"""``/api/v1/users``: admin-managed tenant users."""

from __future__ import annotations

import pytest
from django_tenants.utils import tenant_context

from rapidvalue.users.models import User
from tests.conftest import PASSWORD, assert_error


def count(world) -> int:
    with tenant_context(world.acme.tenant):
        return User.objects.count()


def test_admin_creates_a_user_who_can_then_sign_in(api, world):
    identity = api("acme", "admin").post("/api/v1/identities", {"external_id": "hr-new-person"}).body["id"]
    response = api("acme", "admin").post("/api/v1/users", {
        "email": "New.Person@Acme.test", "password": PASSWORD, "is_auditor": True, "identity_id": identity,
    })
    assert response.status_code == 201, response.body
    assert response.body["email"] == "new.person@acme.test"
    assert response.body["is_auditor"] is True and response.body["identity_id"] == identity
    assert "password" not in response.body
    login = api().post("/api/v1/auth/login", {"email": "new.person@acme.test", "password": PASSWORD, "tenant": "acme"})
    assert login.status_code == 200


def test_service_admin_token_manages_users(api):
    response = api("acme", "service_admin").post("/api/v1/users", {"email": "svc@acme.test", "password": PASSWORD})
    assert response.status_code == 201


@pytest.mark.parametrize("body,field", [
    ({"password": PASSWORD}, "email"),
    ({"email": "no-password@acme.test"}, "password"),
    ({"email": "x@acme.test", "password": "short"}, "password"),
    ({"email": "x@acme.test", "password": "1234567890123"}, "password"),
    ({"email": "not-an-email", "password": PASSWORD}, "email"),
    ({"email": "x@acme.test", "password": PASSWORD, "is_admin": True, "is_auditor": True}, "is_auditor"),
    ({"email": "x@acme.test", "password": PASSWORD, "identity_id": "hr-12345"}, "identity_id"),
    ({"email": "x@acme.test", "password": PASSWORD, "is_admin": "maybe"}, "is_admin"),
])
def test_bad_input_is_400_naming_the_field_and_creates_nothing(api, world, body, field):
    before = count(world)
    error = assert_error(api("acme", "admin").post("/api/v1/users", body), 400, "invalid")
    assert field in error["details"]["fields"], error
    assert count(world) == before


def test_duplicate_email_is_409(api, world):
    before = count(world)
    assert_error(api("acme", "admin").post("/api/v1/users", {"email": "MEMBER@acme.test", "password": PASSWORD}),
                 409, "duplicate_email")
    assert count(world) == before


def test_same_email_may_exist_in_two_tenants(api):
    response = api("acme", "admin").post("/api/v1/users", {"email": "admin@globex.test", "password": PASSWORD})
    assert response.status_code == 201


def test_update_and_filters(api, world):
    client = api("acme", "admin")
    member = world.acme.member.pk
    response = client.patch(f"/api/v1/users/{member}", {"full_name": "Mem Ber", "is_active": False})
    assert response.status_code == 200 and response.body["is_active"] is False
    inactive = client.get("/api/v1/users?is_active=false").body["items"]
    assert [u["id"] for u in inactive] == [member]
    auditors = client.get("/api/v1/users?is_auditor=true").body["items"]
    assert {u["email"] for u in auditors} == {"auditor@acme.test"}


def test_admin_cannot_lock_themselves_out(api, world):
    client = api("acme", "admin")
    me = world.acme.admin.pk
    assert_error(client.delete(f"/api/v1/users/{me}"), 409, "self_lockout")
    assert_error(client.patch(f"/api/v1/users/{me}", {"is_admin": False}), 409, "self_lockout")
    assert_error(client.patch(f"/api/v1/users/{me}", {"is_active": False}), 409, "self_lockout")
    with tenant_context(world.acme.tenant):
        assert User.objects.get(pk=me).is_admin


def test_deleting_a_user_ends_their_tokens(api, world):
    client = api("acme", "admin")
    assert client.delete(f"/api/v1/users/{world.acme.member.pk}").status_code == 204
    assert_error(api("acme", "member").get("/api/v1/auth/me"), 401, "user_inactive")


def test_members_without_a_role_cannot_read_or_write_users(api, world):
    client = api("acme", "member")
    assert_error(client.get("/api/v1/users"), 403)
    assert_error(client.get(f"/api/v1/users/{world.acme.member.pk}"), 403)
    assert_error(client.post("/api/v1/users", {"email": "x@acme.test", "password": PASSWORD}), 403)


def test_auditor_reads_users(api):
    body = api("acme", "auditor").get("/api/v1/users").body
    assert {"admin@acme.test", "auditor@acme.test", "member@acme.test"} <= {u["email"] for u in body["items"]}
