"""Pagination, the error shape, request ids, idempotency and rate limits: one implementation."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth.hashers import make_password
from django.db import connection
from django_tenants.utils import tenant_context

from rapidvalue.api import ratelimit
from rapidvalue.api.models import IdempotencyRecord
from rapidvalue.audit.models import AuditEvent
from rapidvalue.authn.models import ApiToken
from rapidvalue.users.models import User
from tests.conftest import PASSWORD, Api, assert_error


@pytest.fixture
def many_users(world, db):
    """60 extra acme users (rolled back with the test)."""
    hashed = make_password(PASSWORD)
    with tenant_context(world.acme.tenant):
        User.objects.bulk_create(User(email=f"bulk{i:03d}@acme.test", password=hashed) for i in range(60))
        return User.objects.count()


class TestPagination:
    def test_default_envelope_and_limit(self, api, many_users):
        body = api("acme", "admin").get("/api/v1/users").body
        assert set(body) == {"items", "total", "limit", "offset"}
        assert body["limit"] == 50 and body["offset"] == 0
        assert body["total"] == many_users and len(body["items"]) == 50

    def test_offset_walks_every_row_once(self, api, many_users):
        client = api("acme", "admin")
        seen = []
        for offset in range(0, many_users, 17):
            seen += [u["id"] for u in client.get(f"/api/v1/users?limit=17&offset={offset}").body["items"]]
        assert len(seen) == len(set(seen)) == many_users

    def test_limit_above_500_is_clamped(self, api, many_users):
        body = api("acme", "admin").get("/api/v1/users?limit=100000").body
        assert body["limit"] == 500 and len(body["items"]) == many_users

    def test_offset_past_the_end_is_an_empty_page(self, api, many_users):
        body = api("acme", "admin").get(f"/api/v1/users?offset={many_users + 5}").body
        assert body["items"] == [] and body["total"] == many_users

    def test_limit_zero_counts_without_items(self, api, many_users):
        body = api("acme", "admin").get("/api/v1/users?limit=0").body
        assert body["items"] == [] and body["total"] == many_users

    @pytest.mark.parametrize("query", ["limit=-1", "limit=abc", "limit=1.5", "offset=-3", "offset=x", "limit=%20"])
    def test_bad_values_are_400(self, api, world, query):
        error = assert_error(api("acme", "admin").get(f"/api/v1/users?{query}"), 400, "invalid")
        assert set(error["details"]["fields"]) <= {"limit", "offset"}

    def test_cursor_pages_cover_the_audit_log_exactly(self, api, world):
        with tenant_context(world.acme.tenant):
            AuditEvent.objects.bulk_create(
                AuditEvent(tenant="acme", actor_type="system", action="test.bulk", object_type="probe",
                           object_id=str(i)) for i in range(23)
            )
            expected = list(AuditEvent.objects.filter(action="test.bulk").order_by("-id").values_list("id", flat=True))
        client = api("acme", "auditor")
        page = client.get("/api/v1/audit-events?action=test.bulk&limit=10").body
        assert page["total"] == 23 and page["next_cursor"]
        ids = [e["id"] for e in page["items"]]
        while page["next_cursor"]:
            page = client.get(f"/api/v1/audit-events?action=test.bulk&limit=10&cursor={page['next_cursor']}").body
            assert page["total"] is None and page["offset"] is None
            ids += [e["id"] for e in page["items"]]
        assert ids == expected

    @pytest.mark.parametrize("cursor", ["garbage!", "eyJ2Ijp7fX0", "eyJ2IjogImFiYyJ9", "e30"])
    def test_invalid_cursor_is_400(self, api, world, cursor):
        assert_error(api("acme", "auditor").get(f"/api/v1/audit-events?cursor={cursor}"), 400, "invalid")


class TestErrorsAndRequestIds:
    def test_every_response_has_a_request_id_and_a_good_incoming_one_is_kept(self, api):
        client = api("acme", "admin")
        assert len(client.get("/api/v1/users")["X-Request-Id"]) == 32
        echoed = client.get("/api/v1/users", headers={"X-Request-Id": "caller-req-12345"})
        assert echoed["X-Request-Id"] == "caller-req-12345"
        junk = client.get("/api/v1/users", headers={"X-Request-Id": "bad id with spaces"})
        assert junk["X-Request-Id"] != "bad id with spaces"

    def test_unknown_api_path_is_a_json_404(self, api):
        assert_error(api("acme", "admin").get("/api/v1/no-such-thing"), 404, "not_found")

    def test_unknown_object_is_a_json_404(self, api):
        assert_error(api("acme", "admin").get("/api/v1/users/999999"), 404, "not_found")
        assert_error(api("acme", "admin").get("/api/v1/users/not-a-number"), 404, "not_found")

    def test_wrong_method_is_a_json_405(self, api):
        assert_error(api("acme", "admin").put("/api/v1/auth/me", {}), 405, "method_not_allowed")

    def test_malformed_json_is_400_and_changes_nothing(self, api, world):
        with tenant_context(world.acme.tenant):
            before = User.objects.count()
        assert_error(api("acme", "admin").post("/api/v1/users", raw='{"email": '), 400, "parse_error")
        with tenant_context(world.acme.tenant):
            assert User.objects.count() == before

    def test_wrong_content_type_is_415(self, api):
        client = api("acme", "admin")
        response = client.client.post("/api/v1/users", data="email=x", content_type="text/plain",
                                      headers={"Authorization": f"Bearer {client.token}"})
        assert_error(response, 415, "unsupported_media_type")

    def test_auditor_every_write_is_403_and_changes_nothing(self, api, world):
        client = api("acme", "auditor")
        member = world.acme.member.pk
        with tenant_context(world.acme.tenant):
            token_id = ApiToken.objects.filter(kind="service").values_list("pk", flat=True).first()
            before = (User.objects.count(), AuditEvent.objects.count())
        responses = [
            client.post("/api/v1/users", {"email": "new@acme.test", "password": PASSWORD}),
            client.patch(f"/api/v1/users/{member}", {"full_name": "x"}),
            client.put(f"/api/v1/users/{member}", {"email": "member@acme.test"}),
            client.delete(f"/api/v1/users/{member}"),
            client.post("/api/v1/auth/service-tokens", {"name": "x"}),
            client.delete(f"/api/v1/auth/service-tokens/{token_id}"),
        ]
        for response in responses:
            assert_error(response, 403, "read_only_role")
        with tenant_context(world.acme.tenant):
            assert (User.objects.count(), AuditEvent.objects.count()) == before


class TestIdempotency:
    def create(self, client, key, email="idem@acme.test"):
        return client.post("/api/v1/users", {"email": email, "password": PASSWORD},
                           headers={"Idempotency-Key": key})

    def test_repeat_returns_the_first_status_and_body_without_executing_again(self, api, world):
        client = api("acme", "admin")
        first = self.create(client, "key-1")
        second = self.create(client, "key-1")
        assert first.status_code == second.status_code == 201
        assert second.body == first.body and second["Idempotent-Replayed"] == "true"
        with tenant_context(world.acme.tenant):
            assert User.objects.filter(email="idem@acme.test").count() == 1
            assert AuditEvent.objects.filter(action="user.create", object_id=str(first.body["id"])).count() == 1

    def test_same_key_with_another_body_is_422(self, api, world):
        client = api("acme", "admin")
        self.create(client, "key-2")
        error = assert_error(self.create(client, "key-2", email="other@acme.test"), 422, "idempotency_key_reused")
        assert "different request" in error["message"]
        with tenant_context(world.acme.tenant):
            assert not User.objects.filter(email="other@acme.test").exists()

    def test_keys_are_per_token(self, api, world):
        assert self.create(api("acme", "admin"), "shared-key").status_code == 201
        other = self.create(api("acme", "service_admin"), "shared-key", email="idem2@acme.test")
        assert other.status_code == 201 and "Idempotent-Replayed" not in other

    def test_keys_are_per_tenant(self, api, world):
        assert self.create(api("acme", "admin"), "tenant-key").status_code == 201
        other = self.create(api("globex", "admin"), "tenant-key", email="idem@globex.test")
        assert other.status_code == 201 and "Idempotent-Replayed" not in other

    def test_failed_write_is_not_remembered(self, api, world):
        client = api("acme", "admin")
        bad = client.post("/api/v1/users", {"email": "bad"}, headers={"Idempotency-Key": "key-3"})
        assert bad.status_code == 400
        with tenant_context(world.acme.tenant):
            assert not IdempotencyRecord.objects.filter(key="key-3").exists()

    def test_expired_key_executes_again(self, api, world):
        from datetime import timedelta

        from django.utils import timezone

        client = api("acme", "admin")
        self.create(client, "key-old", email="old@acme.test")
        with tenant_context(world.acme.tenant):
            IdempotencyRecord.objects.filter(key="key-old").update(created_at=timezone.now() - timedelta(hours=25))
            User.objects.filter(email="old@acme.test").delete()
        again = self.create(client, "key-old", email="old@acme.test")
        assert again.status_code == 201 and "Idempotent-Replayed" not in again

    def test_delete_is_idempotent_too(self, api, world):
        client = api("acme", "admin")
        created = self.create(client, "key-4").body
        first = client.delete(f"/api/v1/users/{created['id']}", headers={"Idempotency-Key": "del-1"})
        second = client.delete(f"/api/v1/users/{created['id']}", headers={"Idempotency-Key": "del-1"})
        assert first.status_code == second.status_code == 204
        assert second["Idempotent-Replayed"] == "true"

    @pytest.mark.parametrize("key", ["", "x" * 256, "spaces are bad"])
    def test_malformed_key_is_400(self, api, key):
        assert_error(self.create(api("acme", "admin"), key), 400, "invalid")


def test_concurrent_repeats_execute_once(world, django_db_blocker):
    """Eight threads, each with its own database connection, send the same keyed write at once."""
    email = "concurrent@acme.test"
    key = f"concurrent-{time.time_ns()}"
    barrier = threading.Barrier(8)
    results: list = []

    def fire():
        client = Api(world.acme.tokens["admin"])
        barrier.wait()
        try:
            results.append(client.post("/api/v1/users", {"email": email, "password": PASSWORD},
                                       headers={"Idempotency-Key": key}))
        finally:
            connection.close()

    with django_db_blocker.unblock():
        try:
            threads = [threading.Thread(target=fire) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert [r.status_code for r in results] == [201] * 8, [r.content[:200] for r in results]
            assert len({r.body["id"] for r in results}) == 1
            assert sum(1 for r in results if r.get("Idempotent-Replayed") == "true") == 7
            with tenant_context(world.acme.tenant):
                assert User.objects.filter(email=email).count() == 1
        finally:
            with tenant_context(world.acme.tenant):
                User.objects.filter(email=email).delete()
                IdempotencyRecord.objects.filter(key=key).delete()
            connection.set_schema_to_public()


class TestRateLimits:
    def test_bucket_allows_the_burst_then_the_sustained_rate(self, db):
        key = f"unit-{time.time_ns()}"
        t0 = 1_000_000.0
        allowed = sum(ratelimit.take(key, 100, 200, now=t0).allowed for _ in range(250))
        assert allowed == 200
        # One second later exactly 100 more have refilled: sustained rate 100/s.
        allowed = sum(ratelimit.take(key, 100, 200, now=t0 + 1.0).allowed for _ in range(150))
        assert allowed == 100
        refused = ratelimit.take(key, 100, 200, now=t0 + 1.0)
        assert not refused.allowed and 0 < refused.retry_after <= 0.01
        # A long pause never refills beyond the burst.
        allowed = sum(ratelimit.take(key, 100, 200, now=t0 + 60).allowed for _ in range(300))
        assert allowed == 200

    def test_defaults_are_100_per_second_burst_200(self, db):
        assert ratelimit.limits_for(None) == (100, 200)

    def test_token_override_gives_429_with_retry_after_and_headers(self, api, world):
        with tenant_context(world.acme.tenant):
            ApiToken.objects.filter(name="acme-siem-reader").update(rate_limit_per_second=1, rate_limit_burst=10)
        client = api("acme", "service_auditor")
        started = time.monotonic()
        statuses = [client.get("/api/v1/auth/me") for _ in range(25)]
        elapsed = time.monotonic() - started
        ok = [r for r in statuses if r.status_code == 200]
        # The burst, plus at most one refill per elapsed second (however slow the machine is).
        assert 10 <= len(ok) <= 10 + int(elapsed) + 1
        assert ok[0]["X-RateLimit-Limit"] == "10"
        limited = next(r for r in statuses if r.status_code == 429)
        assert_error(limited, 429, "throttled")
        assert int(limited["Retry-After"]) >= 1
        time.sleep(1.1)
        assert client.get("/api/v1/auth/me").status_code == 200
        # Other tokens of the same tenant have buckets of their own.
        assert api("acme", "service_admin").get("/api/v1/auth/me").status_code == 200

    def test_tenant_override_applies_to_its_tokens(self, api, world):
        tenant = world.globex.tenant
        original = (tenant.rate_limit_per_second, tenant.rate_limit_burst)
        type(tenant).objects.filter(pk=tenant.pk).update(rate_limit_per_second=1, rate_limit_burst=3)
        try:
            statuses = [api("globex", "admin").get("/api/v1/auth/me").status_code for _ in range(5)]
            assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
        finally:
            type(tenant).objects.filter(pk=tenant.pk).update(rate_limit_per_second=original[0],
                                                             rate_limit_burst=original[1])


class TestReviewFindings:
    """Bad input found in review: each a clear 4xx that changes nothing, never a 500."""

    @pytest.mark.parametrize("query", ["offset=100000000000000000000", "limit=%D9%A5", "limit=%2B3", "limit=1e3"])
    def test_out_of_range_or_odd_numbers_are_400(self, api, world, query):
        assert_error(api("acme", "admin").get(f"/api/v1/users?{query}"), 400, "invalid")

    def test_overlong_login_email_is_400(self, api):
        email = "a" * 250 + "@acme.test"
        assert_error(api().post("/api/v1/auth/login", {"email": email, "password": "x", "tenant": "acme"}), 400)

    def test_max_length_counts_what_was_sent_not_what_is_left_after_trimming(self, api, world):
        client = api("acme", "admin")
        padded = "\f" + "n" * 100  # 101 sent; DRF alone would trim to 100 and accept it
        assert_error(client.post("/api/v1/agents", {"name": padded}), 400, "invalid")
        assert client.post("/api/v1/agents", {"name": "n" * 100}).status_code == 201

    def test_nul_in_json_is_400(self, api, world):
        body = {"external_id": "nul", "attributes": {"a": "\u0000"}}
        response = api("acme", "admin").post("/api/v1/identities", body)
        assert_error(response, 400, "invalid")

    def test_huge_dormant_days_is_400(self, api):
        assert_error(api("acme", "admin").get("/api/v1/accounts?dormant_days=1000000"), 400, "invalid")

    def test_user_identity_must_exist(self, api):
        response = api("acme", "admin").post("/api/v1/users", {
            "email": "linked@acme.test", "password": PASSWORD, "identity_id": "6f1c1a40-0000-4000-8000-000000000000"})
        assert_error(response, 400, "invalid")

    def test_secrets_shown_once_are_not_kept_for_replays(self, api, world):
        client = api("acme", "admin")
        first = client.post("/api/v1/auth/service-tokens", {"name": "replayed"}, headers={"Idempotency-Key": "tok-1"})
        again = client.post("/api/v1/auth/service-tokens", {"name": "replayed"}, headers={"Idempotency-Key": "tok-1"})
        assert first.body["token"].count(".") == 2 and again.body["token"] == "[redacted]"
        assert again.body["id"] == first.body["id"]
        with tenant_context(world.acme.tenant):
            stored = IdempotencyRecord.objects.get(key="tok-1").response_body
        assert first.body["token"] not in str(stored)
