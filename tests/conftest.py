"""Shared fixtures: two tenants with users of every role, created once per test session.

Every test runs against real PostgreSQL (schemas per tenant) and real Redis. The tenants are
committed once per session (schema migration is the slow part); each test's own changes are
rolled back by pytest-django's transaction. Each xdist worker gets its own test database
(pytest-django) and its own Redis database (below), so workers never share state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from rapidvalue.redis_client import get_blocking_redis, get_redis

try:
    import pytest_django.fixtures as _pytest_django_fixtures
except ImportError:  # pragma: no cover - pytest-django is a test requirement
    _pytest_django_fixtures = None

PASSWORD = "correct-horse-battery-9"


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """Hashing cost is not under test: a cheap hasher first, PBKDF2 still verifies older hashes."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
    from django.contrib.auth.hashers import get_hashers, get_hashers_by_algorithm

    get_hashers.cache_clear()
    get_hashers_by_algorithm.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _isolated_redis():
    """Point this worker at a Redis database of its own (1.., leaving 0 to development).

    ``RV_TEST_REDIS_DB`` moves the first index, so that two test runs can share one Redis.
    """
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    first = int(os.environ.get("RV_TEST_REDIS_DB", "1"))
    settings.REDIS_URL = f"{base}/{first + _worker_index()}"
    get_redis.cache_clear()
    get_blocking_redis.cache_clear()
    get_redis().flushdb()
    yield
    get_redis.cache_clear()
    get_blocking_redis.cache_clear()


@pytest.fixture(autouse=True)
def _clean_redis_and_schema():
    """Fresh rate-limit and login-throttle state and the public schema at each test start."""
    get_redis().flushdb()
    connection.set_schema_to_public()
    yield
    connection.set_schema_to_public()


@dataclass
class TenantWorld:
    """One tenant with a user of every role, service tokens, and their credentials."""

    tenant: Any
    admin: Any
    auditor: Any
    member: Any
    admin_service_token: str
    auditor_service_token: str
    agent_token: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return self.tenant.slug

    @property
    def domain(self) -> str:
        return self.tenant.primary_domain


def _issue_user_access(user, tenant) -> str:
    from rest_framework_simplejwt.tokens import RefreshToken

    refresh = RefreshToken.for_user(user)
    refresh["kind"] = "user"
    refresh["tid"] = tenant.pk
    return str(refresh.access_token)


def _build_world(slug: str, name: str) -> TenantWorld:
    from rapidvalue.authn.services import create_api_token
    from rapidvalue.tenancy.models import Tenant
    from rapidvalue.tenancy.services import provision_tenant
    from rapidvalue.users.models import User

    existing = Tenant.objects.filter(slug=slug).first()
    if existing is not None:
        existing.delete(force_drop=True)
    result = provision_tenant(slug, name=name, admin_email=f"admin@{slug}.test", admin_password=PASSWORD)
    tenant = result.tenant
    # Generous limits so that bulk tests (schemathesis) are not throttled; rate tests override.
    tenant.rate_limit_per_second = 100000
    tenant.rate_limit_burst = 100000
    tenant.save(update_fields=["rate_limit_per_second", "rate_limit_burst"])
    with tenant_context(tenant):
        admin = User.objects.get(email=f"admin@{slug}.test")
        auditor = User.objects.create_user(f"auditor@{slug}.test", PASSWORD, is_auditor=True)
        member = User.objects.create_user(f"member@{slug}.test", PASSWORD)
        admin_service = create_api_token(tenant=tenant, name=f"{slug}-hr-sync", role="admin")
        auditor_service = create_api_token(tenant=tenant, name=f"{slug}-siem-reader", role="auditor")
        from django.utils import timezone

        from agentspine.models import Agent

        enrolled = Agent.objects.create(name=f"{slug}-world-agent", enrolled_at=timezone.now())
        agent = create_api_token(tenant=tenant, name=f"{slug}-agent", kind="agent", role="auditor",
                                 agent_id=enrolled.pk)
        world = TenantWorld(
            tenant=tenant, admin=admin, auditor=auditor, member=member,
            admin_service_token=admin_service.raw, auditor_service_token=auditor_service.raw,
            agent_token=agent.raw,
        )
        world.tokens = {
            "admin": _issue_user_access(admin, tenant),
            "auditor": _issue_user_access(auditor, tenant),
            "member": _issue_user_access(member, tenant),
            "service_admin": admin_service.raw,
            "service_auditor": auditor_service.raw,
            "agent": agent.raw,
        }
    return world


@dataclass
class World:
    acme: TenantWorld
    globex: TenantWorld
    staff: Any
    staff_token: str


def _databases_for_test(test):
    """pytest-django's choice of databases to create, plus the default one for tests using ``world``.

    pytest-django creates a test database only for the aliases that collected tests declare (a
    ``django_db`` mark, ``db``/``transactional_db``). ``world`` commits tenants with the blocker
    lifted and the real-worker tests (test_sync_worker, test_webhook_worker, test_celery_tasks)
    declare nothing else, so run alone they found no test database set up and wrote their
    tenants into the database of DATABASE_URL. ``world`` needs the default test database.
    """
    databases, serialized = _original_databases_for_test(test)
    if not databases and "world" in getattr(test, "fixturenames", ()):
        from django.db import DEFAULT_DB_ALIAS

        return (DEFAULT_DB_ALIAS,), serialized
    return databases, serialized


if _pytest_django_fixtures is not None:
    _original_databases_for_test = _pytest_django_fixtures._get_databases_for_test
    _pytest_django_fixtures._get_databases_for_test = _databases_for_test


@pytest.fixture(scope="session")
def world(django_db_setup, django_db_blocker) -> World:
    """Two committed tenants (acme, globex) and a control-plane staff member."""
    from rest_framework_simplejwt.tokens import RefreshToken

    from rapidvalue.users.models import User

    if not connection.settings_dict["NAME"].startswith("test_"):  # never commit tenants to a real database
        raise RuntimeError(f"world: {connection.settings_dict['NAME']!r} is not a test database")
    with django_db_blocker.unblock():
        acme = _build_world("acme", "Acme Corporation")
        globex = _build_world("globex", "Globex Inc")
        with schema_context("public"):
            staff = User.objects.filter(email="staff@control.test").first() or User.objects.create_superuser(
                "staff@control.test", PASSWORD
            )
            refresh = RefreshToken.for_user(staff)
            refresh["kind"] = "control"
            staff_token = str(refresh.access_token)
        connection.set_schema_to_public()
    return World(acme=acme, globex=globex, staff=staff, staff_token=staff_token)


class Api:
    """A test client that speaks the API: JSON bodies, bearer tokens, chosen host."""

    def __init__(self, token: str | None = None, host: str = "testserver", **headers: str):
        self.client = Client()
        self.token = token
        self.host = host
        self.headers = headers

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        # Accept Django's META spelling (HTTP_X_TENANT_ID) as well as header names.
        headers = {
            (k[5:].replace("_", "-").title() if k.startswith("HTTP_") else k): v for k, v in self.headers.items()
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra)
        return headers

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                raw: str | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        kwargs: dict[str, Any] = {"headers": self._headers(headers or {}), "HTTP_HOST": self.host}
        if data is not None:
            kwargs["data"] = data
            kwargs["content_type"] = "application/json"
        response = getattr(self.client, method.lower())(path, **kwargs)
        connection.set_schema_to_public()
        try:
            response.body = response.json() if response.content else None
        except ValueError:
            response.body = None
        return response

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw):
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw):
        return self.request("PATCH", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The one error shape, with the expected status (and code when given)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}, error
    assert error["message"], error
    assert error["request_id"] == response["X-Request-Id"]
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture
def api(world, db):
    """Factory: ``api("acme", "admin")`` is a client with that tenant's admin user token."""

    def make(tenant: str | None = None, role: str | None = None, *, host: str = "testserver", **headers):
        token = None
        if tenant is not None and role is not None:
            token = getattr(world, tenant).tokens[role]
        return Api(token, host=host, **headers)

    return make
