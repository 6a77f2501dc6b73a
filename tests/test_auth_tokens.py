"""Each token kind is accepted where it belongs and refused everywhere else."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.utils import timezone
from django_tenants.utils import tenant_context

from rapidvalue.authn.models import ApiToken
from tests.conftest import PASSWORD, assert_error


def login(api, tenant="acme", email=None, password=PASSWORD, host="testserver", **extra):
    body = {"email": email or f"admin@{tenant}.test", "password": password}
    if tenant is not None and host == "testserver":
        body["tenant"] = tenant
    body.update(extra)
    return api(host=host).post("/api/v1/auth/login", body)


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


class TestLogin:
    def test_login_with_tenant_in_body_returns_token_pair(self, api):
        response = login(api)
        assert response.status_code == 200, response.body
        assert response.body["tenant"] == "acme"
        assert response.body["token_type"] == "Bearer"
        access = claims_of(response.body["access"])
        assert access["kind"] == "user" and access["token_type"] == "access"
        me = api(host="testserver", HTTP_AUTHORIZATION="").get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {response.body['access']}"}
        )
        assert me.status_code == 200 and me.body["email"] == "admin@acme.test"

    def test_login_on_tenant_domain_needs_no_tenant_field(self, api, world):
        response = login(api, host=world.acme.domain)
        assert response.status_code == 200, response.body
        assert claims_of(response.body["access"])["tid"] == world.acme.tenant.pk

    def test_body_tenant_must_match_the_domain(self, api, world):
        response = api(host=world.acme.domain).post(
            "/api/v1/auth/login", {"email": "admin@acme.test", "password": PASSWORD, "tenant": "globex"}
        )
        assert_error(response, 400, "tenant_mismatch")

    def test_wrong_password_and_unknown_tenant_are_the_same_401(self, api):
        wrong = login(api, password="not-the-password")
        unknown = login(api, tenant="nosuchtenant")
        assert_error(wrong, 401, "invalid_credentials")
        assert_error(unknown, 401, "invalid_credentials")
        assert wrong.body["error"]["message"] == unknown.body["error"]["message"]

    def test_users_of_one_tenant_cannot_sign_in_to_another(self, api):
        assert_error(login(api, tenant="globex", email="admin@acme.test"), 401, "invalid_credentials")

    def test_malformed_login_body_is_400(self, api):
        assert_error(api().post("/api/v1/auth/login", {"email": "not-an-email"}), 400, "invalid")
        assert_error(api().post("/api/v1/auth/login", raw="{nope"), 400, "parse_error")

    def test_failures_are_throttled_per_account(self, api, settings):
        settings.LOGIN_FAILURES_PER_ACCOUNT = 3
        for _ in range(3):
            assert login(api, email="member@acme.test", password="wrong-password").status_code == 401
        throttled = login(api, email="member@acme.test", password=PASSWORD)
        error = assert_error(throttled, 429, "too_many_login_attempts")
        assert int(throttled["Retry-After"]) > 0
        assert error["details"]["retry_after"] > 0
        # Another account from the same address is not locked by this one's failures.
        assert login(api, email="auditor@acme.test").status_code == 200

    def test_failures_are_throttled_per_ip(self, api, settings):
        settings.LOGIN_FAILURES_PER_IP = 4
        for i in range(4):
            assert login(api, email=f"nobody{i}@acme.test", password="wrong-password").status_code == 401
        assert_error(login(api, email="admin@acme.test"), 429, "too_many_login_attempts")

    def test_failed_logins_are_audited_without_the_password(self, api, world):
        login(api, email="member@acme.test", password="Secret-Guess-123")
        from rapidvalue.audit.models import AuditEvent

        with tenant_context(world.acme.tenant):
            event = AuditEvent.objects.filter(action="auth.login_failed").latest("id")
            assert event.after == {"email": "member@acme.test"}
            assert "Secret-Guess-123" not in str(AuditEvent.objects.values_list("before", "after"))


class TestRefreshAndLogout:
    def test_refresh_rotates_and_the_old_refresh_token_dies(self, api):
        pair = login(api).body
        rotated = api().post("/api/v1/auth/refresh", {"refresh": pair["refresh"]})
        assert rotated.status_code == 200, rotated.body
        assert rotated.body["refresh"] != pair["refresh"]
        assert claims_of(rotated.body["access"])["tid"] == claims_of(pair["access"])["tid"]
        again = api().post("/api/v1/auth/refresh", {"refresh": pair["refresh"]})
        assert_error(again, 401)

    def test_logout_revokes_the_refresh_token_and_the_session_access_tokens(self, api):
        pair = login(api).body
        client = api()
        client.token = pair["access"]
        assert client.get("/api/v1/auth/me").status_code == 200
        assert api().post("/api/v1/auth/logout", {"refresh": pair["refresh"]}).status_code == 204
        assert_error(api().post("/api/v1/auth/refresh", {"refresh": pair["refresh"]}), 401)
        assert_error(client.get("/api/v1/auth/me"), 401, "token_revoked")

    def test_access_token_is_not_a_refresh_token(self, api):
        pair = login(api).body
        assert_error(api().post("/api/v1/auth/refresh", {"refresh": pair["access"]}), 401)

    def test_refresh_token_is_not_a_bearer_token(self, api):
        pair = login(api).body
        client = api()
        client.token = pair["refresh"]
        assert_error(client.get("/api/v1/auth/me"), 401)

    def test_refresh_token_on_another_tenants_domain_is_401(self, api, world):
        pair = login(api).body
        response = api(host=world.globex.domain).post("/api/v1/auth/refresh", {"refresh": pair["refresh"]})
        assert_error(response, 401, "wrong_tenant")

    def test_garbage_refresh_is_401(self, api):
        assert_error(api().post("/api/v1/auth/refresh", {"refresh": "abc.def.ghi"}), 401)
        assert_error(api().post("/api/v1/auth/refresh", {}), 400, "invalid")


def forge(claims: dict, key: str | None = None, algorithm: str = "HS256") -> str:
    base = {"iss": "rapidvalue", "jti": "x", "token_type": "access"}
    base.update(claims)
    if algorithm == "none":
        return jwt.encode(base, None, algorithm="none")
    return jwt.encode(base, key or settings.JWT_SIGNING_KEY, algorithm=algorithm)


class TestBearerTokenValidation:
    def test_expired_token_is_401(self, api, world):
        token = forge({"kind": "user", "tid": world.acme.tenant.pk, "user_id": str(world.acme.admin.pk),
                       "exp": int(time.time()) - 10})
        client = api()
        client.token = token
        assert "expired" in assert_error(client.get("/api/v1/users"), 401, "token_invalid")["message"]

    def test_wrong_signature_is_401(self, api, world):
        client = api()
        client.token = forge({"kind": "user", "tid": world.acme.tenant.pk, "user_id": str(world.acme.admin.pk),
                              "exp": int(time.time()) + 60}, key="not-our-key-" * 4)
        assert_error(client.get("/api/v1/users"), 401, "token_invalid")

    def test_alg_none_is_401(self, api, world):
        client = api()
        client.token = forge({"kind": "user", "tid": world.acme.tenant.pk, "user_id": str(world.acme.admin.pk),
                              "exp": int(time.time()) + 60}, algorithm="none")
        assert_error(client.get("/api/v1/users"), 401, "token_invalid")

    def test_token_claiming_another_tenant_with_a_valid_user_id_is_refused(self, api, world):
        # A correctly signed service token whose jti is not a row of the named tenant.
        client = api()
        client.token = forge({"kind": "service", "tid": world.globex.tenant.pk,
                              "jti": "00000000-0000-0000-0000-000000000000"})
        assert_error(client.get("/api/v1/users"), 401)

    def test_no_token_is_401_with_bearer_challenge(self, api):
        response = api().get("/api/v1/users")
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_token_on_its_own_domain_works_and_on_another_tenants_domain_is_401(self, api, world):
        assert api("acme", "admin", host=world.acme.domain).get("/api/v1/users").status_code == 200
        assert_error(api("acme", "admin", host=world.globex.domain).get("/api/v1/users"), 401, "wrong_tenant")
        assert_error(api("acme", "service_admin", host=world.globex.domain).get("/api/v1/users"), 401,
                     "wrong_tenant")

    def test_deactivated_user_token_is_401(self, api, world):
        with tenant_context(world.acme.tenant):
            type(world.acme.member).objects.filter(pk=world.acme.member.pk).update(is_active=False)
        assert_error(api("acme", "member").get("/api/v1/auth/me"), 401, "user_inactive")


class TestServiceTokens:
    def test_created_token_is_shown_once_stored_hashed_and_works(self, api, world):
        admin = api("acme", "admin")
        created = admin.post("/api/v1/auth/service-tokens", {"name": "itsm-bridge", "role": "admin"})
        assert created.status_code == 201, created.body
        raw = created.body["token"]
        with tenant_context(world.acme.tenant):
            row = ApiToken.objects.get(pk=created.body["id"])
            assert raw not in row.token_hash and len(row.token_hash) == 64
        listed = admin.get("/api/v1/auth/service-tokens").body
        assert raw not in str(listed) and "token_hash" not in str(listed)
        detail = admin.get(f"/api/v1/auth/service-tokens/{created.body['id']}").body
        assert "token" not in detail
        client = api()
        client.token = raw
        me = client.get("/api/v1/auth/me")
        assert me.status_code == 200 and me.body["kind"] == "service" and me.body["is_admin"] is True

    def test_last_used_time_is_recorded(self, api, world):
        admin = api("acme", "admin")
        created = admin.post("/api/v1/auth/service-tokens", {"name": "usage-probe", "role": "auditor"}).body
        assert created["last_used_at"] is None
        client = api()
        client.token = created["token"]
        client.get("/api/v1/auth/me")
        after = admin.get(f"/api/v1/auth/service-tokens/{created['id']}").body
        assert after["last_used_at"] is not None

    def test_revoked_token_is_401_at_once(self, api):
        admin = api("acme", "admin")
        created = admin.post("/api/v1/auth/service-tokens", {"name": "to-revoke", "role": "admin"}).body
        client = api()
        client.token = created["token"]
        assert client.get("/api/v1/users").status_code == 200
        assert admin.delete(f"/api/v1/auth/service-tokens/{created['id']}").status_code == 204
        assert_error(client.get("/api/v1/users"), 401, "token_revoked")
        assert_error(admin.delete(f"/api/v1/auth/service-tokens/{created['id']}"), 409, "already_revoked")

    def test_expired_service_token_is_401(self, api, world):
        admin = api("acme", "admin")
        expires = (timezone.now() + timedelta(hours=1)).isoformat()
        created = admin.post("/api/v1/auth/service-tokens",
                             {"name": "short-lived", "role": "admin", "expires_at": expires}).body
        with tenant_context(world.acme.tenant):
            ApiToken.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
        client = api()
        client.token = created["token"]
        assert_error(client.get("/api/v1/users"), 401, "token_expired")

    def test_auditor_role_service_token_cannot_write(self, api):
        response = api("acme", "service_auditor").post("/api/v1/users", {"email": "x@acme.test", "password": PASSWORD})
        assert_error(response, 403, "read_only_role")

    @pytest.mark.parametrize("body", [
        {"role": "admin"}, {"name": "   ", "role": "admin"}, {"name": "x", "role": "superuser"},
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, {"name": "x", "rate_limit_per_second": 0},
        {"name": "x" * 101},
    ])
    def test_bad_token_requests_are_400_and_create_nothing(self, api, world, body):
        with tenant_context(world.acme.tenant):
            before = ApiToken.objects.count()
        assert_error(api("acme", "admin").post("/api/v1/auth/service-tokens", body), 400, "invalid")
        with tenant_context(world.acme.tenant):
            assert ApiToken.objects.count() == before

    def test_only_admins_manage_service_tokens(self, api):
        assert_error(api("acme", "member").get("/api/v1/auth/service-tokens"), 403)
        assert_error(api("acme", "member").post("/api/v1/auth/service-tokens", {"name": "x"}), 403)
        assert api("acme", "auditor").get("/api/v1/auth/service-tokens").status_code == 200


class TestAgentTokens:
    def test_agent_token_is_refused_outside_the_agent_spine(self, api):
        for path in ("/api/v1/users", "/api/v1/auth/me", "/api/v1/audit-events", "/api/v1/auth/service-tokens"):
            assert_error(api("acme", "agent").get(path), 401, "token_kind")

    def test_agent_token_is_accepted_on_the_agent_spine(self, api):
        response = api("acme", "agent").get("/api/v1/agent/whoami")
        assert response.status_code == 200, response.body
        assert response.body["tenant"] == "acme" and response.body["name"] == "acme-agent"

    @pytest.mark.parametrize("role", ["admin", "service_admin", "auditor"])
    def test_user_and_service_tokens_are_refused_on_the_agent_spine(self, api, role):
        assert_error(api("acme", role).get("/api/v1/agent/whoami"), 401, "token_kind")

    def test_revoked_agent_token_is_refused_at_once(self, api, world):
        with tenant_context(world.acme.tenant):
            ApiToken.objects.filter(kind="agent").update(revoked_at=timezone.now())
        assert_error(api("acme", "agent").get("/api/v1/agent/whoami"), 401, "token_revoked")


def test_suspended_tenants_tokens_get_403(api, world):
    from rapidvalue.tenancy.services import set_tenant_status

    set_tenant_status(world.globex.tenant, "suspended")
    try:
        assert_error(api("globex", "admin").get("/api/v1/auth/me"), 403, "tenant_suspended")
        assert_error(api("globex", "service_admin").get("/api/v1/users"), 403, "tenant_suspended")
        assert_error(login(api, tenant="globex"), 403, "tenant_suspended")
        assert api("acme", "admin").get("/api/v1/auth/me").status_code == 200
    finally:
        set_tenant_status(world.globex.tenant, "active")
