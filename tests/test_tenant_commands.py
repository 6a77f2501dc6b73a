"""Tenant management commands: provision, list, suspend/reactivate, delete, and their audit.

Provisioning runs inside the test's transaction (django-tenants creates and migrates the schema
on the same connection), so every tenant made here disappears with the rollback. The exit-code
tests run ``manage.py`` for real in a subprocess against the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import tenant_context

from rapidvalue.audit.models import AuditEvent
from rapidvalue.tenancy.models import ControlPlaneAuditEvent, Domain, Tenant
from rapidvalue.users.models import User
from tests.conftest import PASSWORD, Api, assert_error

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def provision(slug: str, *extra: str, email: str | None = None) -> dict:
    email = email or f"owner@{slug}.test"
    return json.loads(run("provision_tenant", slug, "--name", f"{slug} Ltd", "--admin-email", email, *extra))


def schema_exists(schema: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [schema])
        return cursor.fetchone() is not None


def login(slug: str, email: str, password: str):
    return Api().post("/api/v1/auth/login", {"email": email, "password": password, "tenant": slug})


def manage_py(*args: str) -> subprocess.CompletedProcess:
    """Run ``python manage.py ...`` against this session's test database."""
    db = connection.settings_dict
    url = "postgres://{}:{}@{}:{}/{}".format(
        quote(db["USER"], safe=""), quote(db["PASSWORD"] or "", safe=""), db["HOST"] or "127.0.0.1",
        db["PORT"] or 5432, quote(db["NAME"], safe=""),
    )
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL,
           "DJANGO_SETTINGS_MODULE": "rapidvalue.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )


# --- provision_tenant -------------------------------------------------------------------------


def test_provision_prints_a_summary_and_the_admin_can_log_in(world, db):
    events = ControlPlaneAuditEvent.objects.count()
    summary = provision("cmd-a", "--admin-password", PASSWORD)
    assert summary["slug"] == "cmd-a"
    assert summary["schema"] == "cmd_a"
    assert summary["domain"] == f"cmd-a.{settings.BASE_DOMAIN}" == "cmd-a.localhost"
    assert summary["admin_email"] == "owner@cmd-a.test"
    assert summary["status"] == "active"
    assert "admin_password" not in summary, "a password the operator chose is never echoed"

    tenant = Tenant.objects.get(slug="cmd-a")
    assert tenant.schema_name == "cmd_a" and schema_exists("cmd_a")
    assert Domain.objects.get(tenant=tenant).domain == "cmd-a.localhost"
    with tenant_context(tenant):
        admin = User.objects.get(email="owner@cmd-a.test")
        assert admin.is_admin and not admin.is_auditor
        assert AuditEvent.objects.filter(action="tenant.provisioned").exists()

    response = login("cmd-a", "owner@cmd-a.test", PASSWORD)
    assert response.status_code == 200, response.body
    assert response.body["tenant"] == "cmd-a"
    me = Api(response.body["access"]).get("/api/v1/auth/me")
    assert me.status_code == 200, me.body
    assert me.body["tenant"] == "cmd-a" and me.body["is_admin"] is True
    # The new tenant's admin sees only its own users, and acme's admin none of them.
    users = Api(response.body["access"]).get("/api/v1/users")
    assert {u["email"] for u in users.body["items"]} == {"owner@cmd-a.test"}
    acme_users = Api(world.acme.tokens["admin"]).get("/api/v1/users?limit=500")
    assert "owner@cmd-a.test" not in {u["email"] for u in acme_users.body["items"]}

    # The control-plane audit log records the provisioning, by the CLI.
    assert ControlPlaneAuditEvent.objects.count() == events + 1
    event = ControlPlaneAuditEvent.objects.get(action="tenant.provision", tenant_slug="cmd-a")
    assert event.object_type == "tenant" and event.object_id == str(tenant.pk)
    assert event.actor_type == "system" and event.actor_id == "cli"
    assert event.details["admin_email"] == "owner@cmd-a.test"
    assert event.details["domain"] == "cmd-a.localhost"


def test_provision_generates_a_password_when_none_is_given(world, db):
    summary = provision("cmd-b")
    password = summary["admin_password"]
    assert isinstance(password, str) and len(password) >= 16
    response = login("cmd-b", "owner@cmd-b.test", password)
    assert response.status_code == 200, response.body
    assert_error(login("cmd-b", "owner@cmd-b.test", "not-the-password-1"), 401, "invalid_credentials")


def test_provision_refuses_a_duplicate_slug_and_changes_nothing(world, db):
    tenants = Tenant.objects.count()
    events = ControlPlaneAuditEvent.objects.count()
    with pytest.raises(CommandError, match="already exists") as excinfo:
        provision("acme", "--admin-password", PASSWORD, email="intruder@acme.test")
    assert excinfo.value.returncode == 1
    assert Tenant.objects.count() == tenants
    assert ControlPlaneAuditEvent.objects.count() == events
    with tenant_context(world.acme.tenant):
        assert not User.objects.filter(email="intruder@acme.test").exists()


@pytest.mark.parametrize(
    ("slug", "reason"),
    [
        ("ab", "3-40 characters"),  # too short
        ("a", "3-40 characters"),
        ("1acme", "starting with a letter"),  # leading digit
        ("cmd-", "not ending with a hyphen"),
        ("cmd_x", "lowercase letters, digits and hyphens"),
        ("x" * 41, "3-40 characters"),
        ("public", "reserved"),
        ("www", "reserved"),
    ],
)
def test_provision_refuses_an_invalid_slug(world, db, slug, reason):
    tenants = Tenant.objects.count()
    with pytest.raises(CommandError, match=reason) as excinfo:
        provision(slug, "--admin-password", PASSWORD)
    assert excinfo.value.returncode == 1
    assert Tenant.objects.count() == tenants
    assert not ControlPlaneAuditEvent.objects.filter(action="tenant.provision", tenant_slug=slug).exists()


@pytest.mark.parametrize("slug", ["CmdUpper", "CMD-UP"])
def test_provision_refuses_an_uppercase_slug(world, db, slug):
    """Slugs are lowercase (``validate_tenant_slug``); an uppercase one is refused, not rewritten."""
    tenants = Tenant.objects.count()
    with pytest.raises(CommandError) as excinfo:
        provision(slug, "--admin-password", PASSWORD)
    assert excinfo.value.returncode == 1
    assert "lowercase" in str(excinfo.value), str(excinfo.value)
    assert Tenant.objects.count() == tenants


def test_provision_refuses_an_invalid_admin_email(world, db):
    with pytest.raises(CommandError, match="Invalid admin email") as excinfo:
        provision("cmd-e", "--admin-password", PASSWORD, email="not-an-email")
    assert excinfo.value.returncode == 1
    assert not Tenant.objects.filter(slug="cmd-e").exists()
    assert not schema_exists("cmd_e")


def test_provision_exits_1_with_the_reason_on_stderr(world):
    """The real process: a duplicate and an invalid slug exit with status 1 and a clear message."""
    duplicate = manage_py("provision_tenant", "acme", "--name", "Again", "--admin-email", "again@acme.test")
    assert duplicate.returncode == 1, (duplicate.stdout, duplicate.stderr)
    assert "A tenant with slug 'acme' already exists" in duplicate.stderr, duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    assert duplicate.stdout.strip() == ""

    reserved = manage_py("provision_tenant", "www", "--name", "W", "--admin-email", "w@www.test")
    assert reserved.returncode == 1, (reserved.stdout, reserved.stderr)
    assert "reserved" in reserved.stderr and "Traceback" not in reserved.stderr


# --- list_tenants -----------------------------------------------------------------------------


def test_list_tenants_as_a_table(world, db):
    lines = run("list_tenants").splitlines()
    assert lines[0].split() == ["ID", "SLUG", "NAME", "STATUS", "POC", "DOMAIN"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert {"acme", "globex"} <= set(rows)
    assert "public" not in rows
    assert "Acme Corporation" in rows["acme"] and "acme.localhost" in rows["acme"] and "active" in rows["acme"]
    assert rows["globex"].split()[0] == str(world.globex.tenant.pk)


def test_list_tenants_as_json(world, db):
    provision("cmd-l", "--admin-password", PASSWORD)
    rows = json.loads(run("list_tenants", "--json"))
    by_slug = {row["slug"]: row for row in rows}
    assert {"acme", "globex", "cmd-l"} <= set(by_slug)
    assert all(row["schema"] != "public" for row in rows)
    acme = by_slug["acme"]
    assert acme["id"] == world.acme.tenant.pk
    assert acme["name"] == "Acme Corporation"
    assert acme["status"] == "active" and acme["poc"] is False
    assert acme["schema"] == "acme" and acme["domain"] == "acme.localhost"
    assert by_slug["cmd-l"]["schema"] == "cmd_l"
    assert [row["slug"] for row in rows] == sorted(by_slug)


# --- suspend_tenant ---------------------------------------------------------------------------


def test_suspend_then_reactivate(world, db):
    provision("cmd-s", "--admin-password", PASSWORD)
    tokens = login("cmd-s", "owner@cmd-s.test", PASSWORD).body
    client = Api(tokens["access"])
    assert client.get("/api/v1/auth/me").status_code == 200

    assert "suspended" in run("suspend_tenant", "cmd-s")
    tenant = Tenant.objects.get(slug="cmd-s")
    assert tenant.status == "suspended" and tenant.suspended_at is not None
    assert_error(client.get("/api/v1/auth/me"), 403, "tenant_suspended")
    assert_error(Api(tokens["access"], host="cmd-s.localhost").get("/api/v1/auth/me"), 403, "tenant_suspended")
    assert_error(client.post("/api/v1/auth/refresh", {"refresh": tokens["refresh"]}), 403, "tenant_suspended")
    assert_error(login("cmd-s", "owner@cmd-s.test", PASSWORD), 403, "tenant_suspended")
    # Other tenants are untouched.
    assert Api(world.acme.tokens["admin"]).get("/api/v1/auth/me").status_code == 200

    assert "active" in run("suspend_tenant", "cmd-s", "--reactivate")
    tenant.refresh_from_db()
    assert tenant.status == "active" and tenant.suspended_at is None
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200, me.body
    assert me.body["tenant"] == "cmd-s"

    actions = list(
        ControlPlaneAuditEvent.objects.filter(tenant_slug="cmd-s").order_by("id").values_list("action", flat=True)
    )
    assert actions == ["tenant.provision", "tenant.suspend", "tenant.activate"]
    suspend = ControlPlaneAuditEvent.objects.get(tenant_slug="cmd-s", action="tenant.suspend")
    assert suspend.details == {"status": ["active", "suspended"]}
    assert suspend.actor_type == "system" and suspend.actor_id == "cli"


def test_suspend_an_unknown_tenant_is_refused(world, db):
    with pytest.raises(CommandError, match="No tenant with slug 'cmd-nope'") as excinfo:
        run("suspend_tenant", "cmd-nope")
    assert excinfo.value.returncode == 1


# --- delete_tenant ----------------------------------------------------------------------------


def test_delete_without_yes_refuses_and_changes_nothing(world, db):
    provision("cmd-d", "--admin-password", PASSWORD)
    events = ControlPlaneAuditEvent.objects.count()
    with pytest.raises(CommandError, match="without --yes") as excinfo:
        run("delete_tenant", "cmd-d")
    assert excinfo.value.returncode == 1
    assert Tenant.objects.filter(slug="cmd-d").exists()
    assert schema_exists("cmd_d")
    assert ControlPlaneAuditEvent.objects.count() == events
    assert login("cmd-d", "owner@cmd-d.test", PASSWORD).status_code == 200


def test_delete_without_yes_exits_1_in_a_real_process(world, db):
    """``manage.py delete_tenant`` must be this project's command (not django-tenants' own)."""
    result = manage_py("delete_tenant", "acme")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Refusing to delete tenant 'acme'" in result.stderr, result.stderr
    assert schema_exists("acme") and Tenant.objects.filter(slug="acme").exists()


def test_delete_with_yes_drops_the_schema_and_the_tenant(world, db):
    provision("cmd-x", "--admin-password", PASSWORD)
    tenant = Tenant.objects.get(slug="cmd-x")
    tokens = login("cmd-x", "owner@cmd-x.test", PASSWORD).body
    assert schema_exists("cmd_x")
    # The login wrote rows with deferred foreign keys in this (never committed) test transaction;
    # PostgreSQL refuses to drop their tables while those checks are pending, so run them now,
    # as a commit would have in real use.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    assert "deleted" in run("delete_tenant", "cmd-x", "--yes")
    assert not schema_exists("cmd_x")
    assert not Tenant.objects.filter(slug="cmd-x").exists()
    assert not Domain.objects.filter(domain="cmd-x.localhost").exists()
    # Its tokens now name a tenant that does not exist: refused, never a 500.
    assert_error(Api(tokens["access"]).get("/api/v1/auth/me"), 401)
    assert_error(login("cmd-x", "owner@cmd-x.test", PASSWORD), 401, "invalid_credentials")
    # Other tenants' schemas are untouched.
    assert schema_exists("acme") and schema_exists("globex")

    event = ControlPlaneAuditEvent.objects.get(action="tenant.delete", tenant_slug="cmd-x")
    assert event.object_id == str(tenant.pk)
    assert event.actor_type == "system" and event.actor_id == "cli"
    # The control-plane log keeps the whole history of the deleted tenant.
    actions = set(ControlPlaneAuditEvent.objects.filter(tenant_slug="cmd-x").values_list("action", flat=True))
    assert actions == {"tenant.provision", "tenant.delete"}


def test_delete_an_unknown_tenant_is_refused(world, db):
    with pytest.raises(CommandError, match="No tenant with slug 'cmd-nope'") as excinfo:
        run("delete_tenant", "cmd-nope", "--yes")
    assert excinfo.value.returncode == 1
    assert schema_exists("acme")
