"""Audit: every write leaves an event, nobody can change one, only admin and auditor read them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.utils import timezone
from django_tenants.utils import tenant_context

from rapidvalue.audit.models import AuditEvent
from tests.conftest import PASSWORD, assert_error


def events(world, **filters):
    with tenant_context(world.acme.tenant):
        return list(AuditEvent.objects.filter(**filters).order_by("id"))


def test_each_user_write_is_audited_with_before_after_and_request_id(api, world):
    client = api("acme", "admin")
    created = client.post("/api/v1/users", {"email": "audited@acme.test", "password": PASSWORD, "full_name": "A"})
    uid = str(created.body["id"])
    updated = client.patch(f"/api/v1/users/{uid}", {"full_name": "B", "is_auditor": True})
    deleted = client.delete(f"/api/v1/users/{uid}")
    assert (created.status_code, updated.status_code, deleted.status_code) == (201, 200, 204)

    create_event, update_event, delete_event = events(world, object_type="user", object_id=uid)
    assert create_event.action == "user.create" and create_event.before is None
    assert create_event.after["email"] == "audited@acme.test"
    assert create_event.request_id == created["X-Request-Id"]
    assert create_event.actor_label == "admin@acme.test" and create_event.token_kind == "user"
    assert create_event.ip == "127.0.0.1" and create_event.tenant == "acme"
    assert update_event.action == "user.update"
    assert update_event.changes == {"full_name": ["A", "B"], "is_auditor": [False, True]}
    assert update_event.request_id == updated["X-Request-Id"]
    assert delete_event.action == "user.delete" and delete_event.after is None
    assert delete_event.before["email"] == "audited@acme.test"


def test_service_token_writes_are_audited_without_the_secret(api, world):
    client = api("acme", "service_admin")
    created = client.post("/api/v1/auth/service-tokens", {"name": "audit-me", "role": "auditor"})
    raw = created.body["token"]
    client.delete(f"/api/v1/auth/service-tokens/{created.body['id']}")
    trail = events(world, object_type="api_token", object_id=created.body["id"])
    assert [e.action for e in trail] == ["service_token.create", "service_token.revoke"]
    assert trail[0].actor_type == "service" and trail[0].actor_label == "acme-hr-sync"
    dumped = json.dumps([[e.before, e.after, e.changes] for e in trail])
    assert raw not in dumped
    assert trail[0].after["token_hash"] == "[redacted]"


def test_passwords_never_reach_the_audit_log(api, world):
    client = api("acme", "admin")
    created = client.post("/api/v1/users", {"email": "pw@acme.test", "password": "Unique-Secret-Pass-77"})
    client.patch(f"/api/v1/users/{created.body['id']}", {"password": "Another-Secret-Pass-88"})
    trail = events(world, object_type="user", object_id=str(created.body["id"]))
    assert [e.action for e in trail] == ["user.create", "user.password_change"]
    dumped = json.dumps([[e.before, e.after] for e in trail])
    assert "Unique-Secret-Pass-77" not in dumped and "Another-Secret-Pass-88" not in dumped
    assert "pbkdf2" not in dumped and "argon2" not in dumped


def test_a_failed_write_leaves_no_event(api, world):
    before = len(events(world))
    response = api("acme", "admin").post("/api/v1/users", {"email": "admin@acme.test", "password": PASSWORD})
    assert_error(response, 409, "duplicate_email")
    assert len(events(world)) == before


class TestAppendOnly:
    def test_no_api_can_change_or_delete_an_event(self, api, world):
        event_id = events(world)[0].id
        client = api("acme", "admin")
        for response in (
            client.post("/api/v1/audit-events", {"action": "forged"}),
            client.put(f"/api/v1/audit-events/{event_id}", {"action": "forged"}),
            client.patch(f"/api/v1/audit-events/{event_id}", {"action": "forged"}),
            client.delete(f"/api/v1/audit-events/{event_id}"),
        ):
            assert_error(response, 405, "method_not_allowed")

    def test_the_model_refuses_updates_and_deletes(self, world, db):
        with tenant_context(world.acme.tenant):
            event = AuditEvent.objects.first()
            event.action = "forged"
            with pytest.raises(ValueError):
                event.save()
            with pytest.raises(ValueError):
                event.delete()
            with pytest.raises(ValueError):
                AuditEvent.objects.filter(pk=event.pk).update(action="forged")
            with pytest.raises(ValueError):
                AuditEvent.objects.all().delete()

    @pytest.mark.parametrize("statement", [
        "UPDATE audit_auditevent SET action = 'forged'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ])
    def test_the_database_refuses_raw_sql_too(self, world, db, statement):
        with tenant_context(world.acme.tenant):
            with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), \
                    connection.cursor() as cursor:
                cursor.execute(statement)
            assert AuditEvent.objects.exists()


class TestReading:
    def test_only_admin_and_auditor_read_the_log(self, api):
        assert api("acme", "admin").get("/api/v1/audit-events").status_code == 200
        assert api("acme", "auditor").get("/api/v1/audit-events").status_code == 200
        assert api("acme", "service_auditor").get("/api/v1/audit-events").status_code == 200
        assert_error(api("acme", "member").get("/api/v1/audit-events"), 403)

    def test_filters(self, api, world):
        admin = api("acme", "admin")
        created = admin.post("/api/v1/users", {"email": "filtered@acme.test", "password": PASSWORD}).body
        client = api("acme", "auditor")
        by_action = client.get("/api/v1/audit-events?action=user.create").body["items"]
        assert by_action and {e["action"] for e in by_action} == {"user.create"}
        by_object = client.get(f"/api/v1/audit-events?object_type=user&object_id={created['id']}").body["items"]
        assert [e["action"] for e in by_object] == ["user.create"]
        by_actor = client.get("/api/v1/audit-events?actor=admin@acme.test").body["items"]
        assert by_actor and {e["actor_label"] for e in by_actor} == {"admin@acme.test"}
        by_actor_id = client.get(f"/api/v1/audit-events?actor={world.acme.admin.pk}&action=user.create").body
        assert created["id"] in {int(e["object_id"]) for e in by_actor_id["items"]}
        future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        assert client.get(f"/api/v1/audit-events?since={future}").body["total"] == 0
        assert client.get(f"/api/v1/audit-events?until={future}&action=user.create").body["total"] >= 1
        assert_error(client.get("/api/v1/audit-events?since=yesterday"), 400, "invalid")

    def test_one_tenants_log_is_invisible_to_another(self, api, world):
        api("globex", "admin").post("/api/v1/users", {"email": "secret-hire@globex.test", "password": PASSWORD})
        body = api("acme", "auditor").get("/api/v1/audit-events?limit=500").body
        assert "globex" not in json.dumps(body)
