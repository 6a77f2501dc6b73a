"""Outbound webhooks against a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import tenant_context

from identities import services as identity_services
from rapidvalue import crypto
from rapidvalue.audit.models import AuditEvent
from rapidvalue.webhooks import delivery
from rapidvalue.webhooks.events import emit
from rapidvalue.webhooks.models import WebhookDelivery, WebhookEvent, WebhookSubscription
from tests.conftest import assert_error
from tests.http_receiver import Receiver

PATTERN_1 = {
    "external_id": "hr-12345", "email": "alice@yourco.com", "first_name": "Alice", "last_name": "Smith",
    "department": "Engineering", "manager_external_id": "hr-09876",
}


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def private_targets(settings):
    settings.ALLOW_PRIVATE_TARGETS = True


def subscribe(api, url, types=("identity.created", "identity.updated", "identity.deactivated"), tenant="acme"):
    response = api(tenant, "admin").post("/api/v1/webhooks", {"url": url, "event_types": list(types)})
    assert response.status_code == 201, response.body
    return response.body


def verify(secret: str, received) -> None:
    timestamp = received.headers["X-RapidValue-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-RapidValue-Signature"], f"v1={expected}")
    assert abs(time.time() - int(timestamp)) < 300


def deliver(world, subscription_id, now=None):
    with tenant_context(world.acme.tenant):
        return delivery.deliver_due(subscription_id, now=now)


class TestSubscriptions:
    def test_secret_is_shown_once_encrypted_at_rest_and_never_audited(self, api, world, private_targets, receiver):
        created = subscribe(api, receiver.url)
        secret = created["secret"]
        assert secret.startswith("whsec_")
        listed = api("acme", "admin").get("/api/v1/webhooks").body
        detail = api("acme", "admin").get(f"/api/v1/webhooks/{created['id']}").body
        assert secret not in json.dumps(listed) and secret not in json.dumps(detail) and "secret" not in detail
        with tenant_context(world.acme.tenant):
            row = WebhookSubscription.objects.get(pk=created["id"])
            assert secret not in row.secret_encrypted and crypto.decrypt(row.secret_encrypted) == secret
            assert secret not in json.dumps(list(AuditEvent.objects.values("before", "after", "changes")))
        rotated = api("acme", "admin").post(f"/api/v1/webhooks/{created['id']}/rotate-secret").body
        assert rotated["secret"] != secret

    def test_auditor_reads_admin_writes(self, api, private_targets, receiver):
        created = subscribe(api, receiver.url)
        assert api("acme", "auditor").get(f"/api/v1/webhooks/{created['id']}").status_code == 200
        assert_error(api("acme", "auditor").post("/api/v1/webhooks", {"url": receiver.url,
                                                                     "event_types": ["agent.online"]}), 403)
        assert_error(api("acme", "member").get("/api/v1/webhooks"), 403)

    @pytest.mark.parametrize("body", [
        {"url": "https://example.invalid/x", "event_types": ["no.such.event"]},
        {"url": "https://example.invalid/x", "event_types": []},
        {"url": "not a url", "event_types": ["identity.created"]},
    ])
    def test_bad_subscriptions_are_400(self, api, world, private_targets, body):
        assert_error(api("acme", "admin").post("/api/v1/webhooks", body), 400, "invalid")
        with tenant_context(world.acme.tenant):
            assert not WebhookSubscription.objects.exists()

    @pytest.mark.parametrize("url", [
        "http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://localhost/hook", "https://10.1.2.3/hook",
        "https://192.168.1.10/hook", "https://169.254.169.254/latest/meta-data", "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook", "ftp://files.example/hook", "https://user:pw@127.0.0.1/hook",
    ])
    def test_ssrf_targets_are_refused(self, api, world, settings, url):
        settings.ALLOW_PRIVATE_TARGETS = False
        settings.DEBUG = False
        assert_error(api("acme", "admin").post("/api/v1/webhooks", {"url": url, "event_types": ["agent.online"]}),
                     400, "unsafe_target")

    def test_a_target_turned_private_is_refused_at_send_time(self, api, world, settings, receiver):
        settings.ALLOW_PRIVATE_TARGETS = True
        created = subscribe(api, receiver.url)
        with tenant_context(world.acme.tenant):
            identity_services.create_identity(external_id="late-ssrf")
        settings.ALLOW_PRIVATE_TARGETS = False
        settings.DEBUG = False
        deliver(world, created["id"])
        assert receiver.received == []
        with tenant_context(world.acme.tenant):
            row = WebhookDelivery.objects.get(subscription_id=created["id"])
        assert row.last_error.startswith("refused") and row.status == "pending"


class TestDelivery:
    def test_pattern_1_sends_a_signed_identity_created(self, api, world, private_targets, receiver):
        created = subscribe(api, receiver.url)
        response = api("acme", "admin").post("/api/v1/identities", PATTERN_1)
        assert response.status_code == 201
        assert deliver(world, created["id"]) == 1
        (received,) = receiver.wait_for(1)
        verify(created["secret"], received)
        body = received.json()
        assert body["type"] == "identity.created" and body["version"] == 1 and body["tenant"] == "acme"
        assert body["data"]["identity"]["external_id"] == "hr-12345"
        assert body["data"]["identity"]["manager_external_id"] == "hr-09876"
        assert received.headers["X-RapidValue-Event-Id"] == body["id"]
        log = api("acme", "admin").get(f"/api/v1/webhooks/{created['id']}/deliveries").body["items"]
        assert log[0]["status"] == "succeeded" and log[0]["attempts"] == 1 and log[0]["last_status_code"] == 200
        assert log[0]["last_latency_ms"] is not None and log[0]["event"]["id"] == body["id"]

    def test_update_and_deactivate_events(self, api, world, private_targets, receiver):
        created = subscribe(api, receiver.url)
        person = api("acme", "admin").post("/api/v1/identities", {"external_id": "ev-1"}).body
        api("acme", "admin").patch(f"/api/v1/identities/{person['id']}", {"title": "Lead"})
        api("acme", "admin").post(f"/api/v1/identities/{person['id']}/deactivate")
        deliver(world, created["id"])
        types = [r.json()["type"] for r in receiver.wait_for(3)]
        assert types == ["identity.created", "identity.updated", "identity.deactivated"]
        assert receiver.received[1].json()["data"]["changes"]["title"] == ["", "Lead"]

    def test_four_failures_then_success_is_five_attempts_with_growing_delays(self, api, world, private_targets):
        flaky = Receiver(statuses=[500, 503, 500, 502, 200]).start()
        try:
            created = subscribe(api, flaky.url)
            api("acme", "admin").post("/api/v1/identities", {"external_id": "flaky-1"})
            now = timezone.now()
            gaps = []
            for _ in range(5):
                deliver(world, created["id"], now=now)
                with tenant_context(world.acme.tenant):
                    row = WebhookDelivery.objects.get(subscription_id=created["id"])
                if row.status == "succeeded":
                    break
                gaps.append((row.next_attempt_at - now).total_seconds())
                # Not due yet: nothing is sent before the retry time.
                deliver(world, created["id"], now=now + timedelta(seconds=gaps[-1] - 1))
                now = row.next_attempt_at
            assert row.status == "succeeded" and row.attempts == 5
            assert gaps == [60, 540, 3000, 18000]
            assert sum(gaps) == 6 * 3600  # the fifth attempt comes six hours after the first
            attempts = [r.headers["X-RapidValue-Delivery-Attempt"] for r in flaky.received]
            assert attempts == ["1", "2", "3", "4", "5"]
            assert len({r.headers["X-RapidValue-Event-Id"] for r in flaky.received}) == 1
        finally:
            flaky.stop()

    def test_five_failures_mark_failed_and_an_admin_can_redeliver(self, api, world, private_targets):
        dead = Receiver(statuses=[500, 500, 500, 500, 500, 200]).start()
        try:
            created = subscribe(api, dead.url)
            api("acme", "admin").post("/api/v1/identities", {"external_id": "dead-1"})
            now = timezone.now()
            for _ in range(6):
                deliver(world, created["id"], now=now)
                now += timedelta(hours=7)
            log = api("acme", "admin").get(f"/api/v1/webhooks/{created['id']}/deliveries").body["items"]
            assert log[0]["status"] == "failed" and log[0]["attempts"] == 5 and len(dead.received) == 5
            again = api("acme", "admin").post(f"/api/v1/webhooks/{created['id']}/deliveries/{log[0]['id']}/redeliver")
            assert again.status_code == 202 and again.body["status"] == "pending"
            deliver(world, created["id"])
            assert dead.wait_for(6)[-1].headers["X-RapidValue-Event-Id"] == log[0]["event"]["id"]
            final = api("acme", "admin").get(f"/api/v1/webhooks/{created['id']}/deliveries/{log[0]['id']}").body
            assert final["status"] == "succeeded"
            assert_error(api("acme", "auditor").post(
                f"/api/v1/webhooks/{created['id']}/deliveries/{log[0]['id']}/redeliver"), 403)
        finally:
            dead.stop()

    def test_a_rolled_back_change_emits_nothing(self, api, world, private_targets, receiver):
        subscribe(api, receiver.url)
        with tenant_context(world.acme.tenant):
            with pytest.raises(RuntimeError), transaction.atomic():
                identity_services.create_identity(external_id="never")
                raise RuntimeError("the change fails after emitting")
            assert not WebhookEvent.objects.exists() and not WebhookDelivery.objects.exists()
        assert_error(api("acme", "admin").post("/api/v1/identities", {"external_id": "x", "status": "bad"}), 400)
        with tenant_context(world.acme.tenant):
            assert not WebhookEvent.objects.exists()

    def test_order_per_subscription_and_a_dead_receiver_delays_nobody_else(self, api, world, private_targets,
                                                                        receiver):
        dead = Receiver(statuses=[500, 200]).start()
        try:
            slow_sub = subscribe(api, dead.url)
            healthy_sub = subscribe(api, receiver.url)
            for n in range(3):
                api("acme", "admin").post("/api/v1/identities", {"external_id": f"ord-{n}"})
            deliver(world, healthy_sub["id"])
            deliver(world, slow_sub["id"])
            assert [r.json()["data"]["identity"]["external_id"] for r in receiver.wait_for(3)] == [
                "ord-0", "ord-1", "ord-2"]
            assert len(dead.received) == 1  # the head failed: later events wait behind it
            deliver(world, slow_sub["id"], now=timezone.now() + timedelta(minutes=2))
            ids = [r.json()["data"]["identity"]["external_id"] for r in dead.wait_for(4)]
            assert ids == ["ord-0", "ord-0", "ord-1", "ord-2"]
        finally:
            dead.stop()

    def test_ping_reaches_only_that_subscription(self, api, world, private_targets, receiver):
        other = Receiver().start()
        try:
            created = subscribe(api, receiver.url, types=["agent.online"])
            subscribe(api, other.url, types=["agent.online"])
            response = api("acme", "admin").post(f"/api/v1/webhooks/{created['id']}/ping")
            assert response.status_code == 202
            deliver(world, created["id"])
            (ping,) = receiver.wait_for(1)
            assert ping.json()["type"] == "webhook.ping" and ping.json()["id"] == response.body["event_id"]
            verify(created["secret"], ping)
            assert other.received == []
        finally:
            other.stop()

    def test_one_tenants_subscriptions_never_receive_another_tenants_events(self, api, world, private_targets,
                                                                          receiver):
        globex_sub = subscribe(api, receiver.url, tenant="globex")
        api("acme", "admin").post("/api/v1/identities", {"external_id": "acme-secret-hire"})
        with tenant_context(world.globex.tenant):
            assert delivery.deliver_due(globex_sub["id"]) == 0
            assert not WebhookDelivery.objects.exists()
        assert receiver.received == []
        assert_error(api("acme", "admin").get(f"/api/v1/webhooks/{globex_sub['id']}"), 404)
        assert_error(api("acme", "admin").get(f"/api/v1/webhooks/{globex_sub['id']}/deliveries/1"), 404)

    def test_emit_refuses_unknown_event_types(self, world, db):
        with tenant_context(world.acme.tenant), pytest.raises(ValueError):
            emit("identity.exploded", {})


@pytest.mark.parametrize("address", ["100.100.100.200", "100.64.0.1", "2002:7f00:1::", "0.0.0.0", "::",
                                     "2001:0:4136:e378:8000:63bf:80ff:fffe", "fe80::1%eth0", "224.0.0.1"])
def test_guard_refuses_non_global_addresses(address):
    from rapidvalue.outbound import _is_private

    assert _is_private(address)


def test_guard_allows_global_addresses():
    from rapidvalue.outbound import _is_private

    assert not _is_private("93.184.216.34") and not _is_private("2606:2800:220:1:248:1893:25c8:1946")
