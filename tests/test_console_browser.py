"""The consoles in a real browser: Debian's Chromium, driven by Playwright, against gunicorn.

Tenant console: an admin signs in on the tenant's own domain and sees its agents with their
online state, last heartbeat, version and jobs. Control plane: staff sign in on the base domain
and see every tenant's agents on one page.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import tenant_context

from agentspine.models import Agent, AgentJob
from connectors.models import ConnectorInstance
from tests.conftest import PASSWORD
from tests.servers import Server
from tests.test_celery_tasks import _database_url_of_test_db

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# What the machine's closed network needs (no background connections) and a root user needs (no sandbox).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def console(world, django_db_blocker, tmp_path_factory):
    """A server, and agents in both tenants: acme's online with a job, globex's never enrolled."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test installs Debian's chromium package", pytrace=False)
    created = []
    saved_hashes = []
    with django_db_blocker.unblock():
        # The server hashes as in production (PBKDF2); the test process uses a fast MD5 hasher. Give the
        # users who sign in here a PBKDF2 hash for the duration, and put theirs back afterwards.
        from django.contrib.auth.hashers import PBKDF2PasswordHasher
        from django_tenants.utils import schema_context

        from rapidvalue.users.models import User

        for schema, email in (("public", "staff@control.test"), (world.acme.tenant.schema_name, "admin@acme.test")):
            with schema_context(schema):
                user = User.objects.get(email=email)
                saved_hashes.append((schema, email, user.password))
                User.objects.filter(pk=user.pk).update(
                    password=PBKDF2PasswordHasher().encode(PASSWORD, "browsertestsalt", iterations=1000))
        with tenant_context(world.acme.tenant):
            from access.models import Application

            app_row = Application.objects.create(name="Browser test app")
            connector = ConnectorInstance.objects.create(name="Browser LDAP", type="ldap", application=app_row)
            online = Agent.objects.create(name="acme-dc1", online=True, enrolled_at=timezone.now(),
                                          last_heartbeat_at=timezone.now() - timedelta(seconds=3), version="9.8.7",
                                          hostname="dc1.acme.corp")
            AgentJob.objects.create(agent=online, connector=connector, kind="sync", request={})
            created.append((world.acme.tenant, [online.pk], connector, app_row))
        with tenant_context(world.globex.tenant):
            pending = Agent.objects.create(name="globex-branch")
            created.append((world.globex.tenant, [pending.pk], None, None))
        connection.set_schema_to_public()
        server = Server(_database_url_of_test_db(), tmp_path_factory.mktemp("console-logs")).start()
        try:
            yield server
        finally:
            server.kill()
            for schema, email, password in saved_hashes:
                with schema_context(schema):
                    User.objects.filter(email=email).update(password=password)
            for tenant, agent_ids, connector, app_row in created:
                with tenant_context(tenant):
                    Agent.objects.filter(pk__in=agent_ids).delete()
                    if connector is not None:
                        connector.delete()
                        app_row.delete()
            connection.set_schema_to_public()


@pytest.fixture
def page(console):
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs in this thread
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def _sign_in(page, url: str, email: str) -> None:
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}/admin/")


def test_tenant_admin_sees_agents_with_state_heartbeat_version_and_jobs(console, page, world):
    base = f"http://{world.acme.domain}:{console.port}"
    _sign_in(page, base, "admin@acme.test")
    from playwright.sync_api import expect

    page.get_by_role("link", name="Agents", exact=True).first.click()
    page.wait_for_url("**/admin/agentspine/agent/")
    row = page.locator("#result_list tbody tr", has_text="acme-dc1")
    expect(row).to_have_count(1)
    text = row.inner_text()
    assert "online" in text and "9.8.7" in text and "dc1.acme.corp" in text
    assert "globex-branch" not in page.content()  # another tenant's agent is not here
    row.locator("a", has_text="acme-dc1").click()
    expect(page.get_by_text("1 open, 1 in all")).to_be_visible()
    page.click("text=1 open, 1 in all")
    page.wait_for_url("**/admin/agentspine/agentjob/**")
    jobs = page.locator("#result_list tbody tr")
    expect(jobs).to_have_count(1)
    assert "Browser LDAP" in jobs.inner_text() and "Queued" in jobs.inner_text()


def test_control_plane_lists_the_agents_of_every_tenant(console, page, world):
    base = f"http://localhost:{console.port}"
    _sign_in(page, base, "staff@control.test")
    page.click("text=Agents of all tenants")
    page.wait_for_url("**/admin/agents/")
    rows = {r.locator("td").nth(1).inner_text(): r.inner_text() for r in page.locator("tr.agent-row").all()}
    assert "acme-dc1" in rows and "globex-branch" in rows
    assert rows["acme-dc1"].startswith("acme") and "online" in rows["acme-dc1"] and "9.8.7" in rows["acme-dc1"]
    assert rows["globex-branch"].startswith("globex") and "pending_enrollment" in rows["globex-branch"]
    assert "1" in rows["acme-dc1"].split("\t")[-1]  # open jobs


def test_a_tenant_admin_cannot_open_the_control_plane_page(console, page, world):
    base = f"http://localhost:{console.port}"
    page.goto(f"{base}/admin/agents/")
    assert "/admin/login/" in page.url  # anonymous: to the login form
    page.fill("#id_username", "admin@acme.test")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_load_state()
    assert "/admin/login/" in page.url and "acme-dc1" not in page.content()


def test_a_new_agents_enrollment_code_is_shown_once_on_a_page_of_its_own(console, page, world, django_db_blocker):
    import httpx

    base = f"http://{world.acme.domain}:{console.port}"
    _sign_in(page, base, "admin@acme.test")
    try:
        page.goto(f"{base}/admin/agentspine/agent/add/")
        page.fill("#id_name", "console-made")
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/agent/add/")) as added:
            page.click("input[name=_save]")
        assert added.value.status == 200 and "no-store" in added.value.headers["cache-control"]
        code = page.locator("#enrollment-code").inner_text().strip()
        assert code.startswith("acme.")
        # Not in a message either: Django's default message storage is a cookie.
        assert all(code not in c["value"] for c in page.context.cookies())
        page.goto(f"{base}/admin/agentspine/agent/")
        assert code not in page.content()
        # (Chromium resolves *.localhost itself; httpx goes to loopback with the tenant's Host.)
        api = httpx.Client(base_url=f"http://127.0.0.1:{console.port}",
                           headers={"Host": f"{world.acme.domain}:{console.port}"})
        registered = api.post("/api/v1/agent/register", json={"code": code, "hostname": "console-test"})
        assert registered.status_code == 201, registered.text
        assert api.post("/api/v1/agent/register", json={"code": code}).status_code == 401  # once only
    finally:
        try:
            with django_db_blocker.unblock(), tenant_context(world.acme.tenant):
                from rapidvalue.authn.models import ApiToken

                made = list(Agent.objects.filter(name="console-made").values_list("pk", flat=True))
                ApiToken.objects.filter(agent_id__in=made).delete()
                Agent.objects.filter(pk__in=made).delete()
        finally:
            # Playwright's event loop runs in this thread, so Django gave this block a connection of
            # its own (connections are per thread and per async context): closed here, or it stays
            # open after the loop and the test database cannot be dropped at the end of the session.
            connection.close()
