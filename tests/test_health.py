"""``/health``: no authentication, real database and Redis checks, 503 when either is down."""

from __future__ import annotations

import socket

import pytest
from django.conf import settings
from django.db import connection

from rapidvalue.redis_client import get_redis
from tests.conftest import Api


def _closed_loopback_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_health_shape(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    assert response["X-Request-Id"], "every response carries a request id"
    body = response.json()
    assert set(body) == {"status", "database", "redis"}, body
    return body


@pytest.fixture
def redis_down():
    """Point the process-wide Redis client at a closed port; restore the real one afterwards."""
    real_url = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_loopback_port()}/0"
    get_redis.cache_clear()
    try:
        yield
    finally:
        settings.REDIS_URL = real_url
        get_redis.cache_clear()


def test_health_is_ok_without_a_token(db):
    response = Api().get("/health")
    assert response.status_code == 200, response.content
    assert _assert_health_shape(response) == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.parametrize("host", ["testserver", "localhost", "acme.localhost"])
def test_health_answers_on_every_host_and_ignores_bad_credentials(world, db, host):
    # A garbage or foreign token must not turn a liveness probe into a 401/403.
    for token in (None, "not-a-jwt", world.acme.tokens["agent"]):
        response = Api(token, host=host).get("/health")
        assert response.status_code == 200, (host, token, response.content)
        assert _assert_health_shape(response)["status"] == "ok"


def test_health_echoes_a_well_formed_request_id(db):
    response = Api().get("/health", headers={"X-Request-Id": "probe-1234-abcd"})
    assert response.status_code == 200
    assert response["X-Request-Id"] == "probe-1234-abcd"


def test_health_is_503_when_redis_is_unreachable(db, redis_down):
    response = Api().get("/health")
    assert response.status_code == 503, response.content
    body = _assert_health_shape(response)
    assert body["status"] == "degraded"
    assert body["database"] == "ok"
    assert body["redis"] != "ok" and body["redis"].startswith("error"), body


def test_health_recovers_when_redis_comes_back(db):
    real_url = settings.REDIS_URL
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{_closed_loopback_port()}/0"
        get_redis.cache_clear()
        assert Api().get("/health").status_code == 503
    finally:
        settings.REDIS_URL = real_url
        get_redis.cache_clear()
    response = Api().get("/health")
    assert response.status_code == 200, response.content
    assert response.json()["redis"] == "ok"


def test_health_is_503_when_postgresql_is_unreachable(world, django_db_blocker):
    settings_dict = connection.settings_dict
    real_port = settings_dict["PORT"]
    with django_db_blocker.unblock():
        connection.close()
        settings_dict["PORT"] = str(_closed_loopback_port())
        try:
            response = Api().get("/health")
        finally:
            settings_dict["PORT"] = real_port
            connection.close()
        assert response.status_code == 503, response.content
        body = _assert_health_shape(response)
        assert body["status"] == "degraded"
        assert body["redis"] == "ok"
        assert body["database"] != "ok" and body["database"].startswith("error"), body
        # The connection works again once PostgreSQL is reachable.
        healthy = Api().get("/health")
        assert healthy.status_code == 200, healthy.content
        assert healthy.json() == {"status": "ok", "database": "ok", "redis": "ok"}
