"""Every API view follows the platform conventions (the NetBox-style guard test).

The URL resolvers of both URL confs (tenant domains and the base domain) are walked, so an endpoint
added by any app, in any ``api/urls.py``, is checked without being named here: it fails this file if
it skips the base view (transactions, idempotency, rate-limit headers, scoping), lists without the
envelope pagination, or lets the wrong token kind in.
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework import mixins
from rest_framework.viewsets import ViewSetMixin

from rapidvalue.api.errors import api_not_found
from rapidvalue.api.pagination import EnvelopePagination
from rapidvalue.api.views import PlatformViewMixin
from rapidvalue.authn.authentication import AgentTokenAuthentication
from tests.conftest import assert_error

URLCONFS = ("rapidvalue.urls", "rapidvalue.urls_public")
API_PREFIX = "api/v1/"
AGENT_PREFIX = "api/v1/agent/"


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        piece = str(entry.pattern).lstrip("^")
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + piece)
        elif isinstance(entry, URLPattern):
            yield prefix + piece.rstrip("$"), entry.callback


def _api_callbacks():
    """(urlconf, route, callback) for every route under /api/v1/ in both URL confs."""
    found = []
    for urlconf in URLCONFS:
        for route, callback in _walk(get_resolver(urlconf).url_patterns):
            if route.startswith(API_PREFIX):
                found.append((urlconf, route, callback))
    return found


API_CALLBACKS = _api_callbacks()
DRF_VIEWS = [(urlconf, route, cb) for urlconf, route, cb in API_CALLBACKS if hasattr(cb, "cls")]


def _id(entry) -> str:
    urlconf, route, _ = entry
    return f"{urlconf.rsplit('.', 1)[-1]}:/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)


IDS = [_id(entry) for entry in DRF_VIEWS]


def _is_list_view(callback) -> bool:
    if issubclass(callback.cls, ViewSetMixin):
        return "list" in (getattr(callback, "actions", None) or {}).values()
    return issubclass(callback.cls, mixins.ListModelMixin)


LIST_VIEWS = [entry for entry in DRF_VIEWS if _is_list_view(entry[2])]
LIST_IDS = [_id(entry) for entry in LIST_VIEWS]


def _authentication_classes(callback) -> list[type]:
    return list(callback.cls(**getattr(callback, "initkwargs", {})).authentication_classes)


def test_the_walk_finds_the_platform_endpoints():
    """Guards the guard: if the walk found nothing, every test below would pass vacuously."""
    routes = {route for urlconf, route, _ in DRF_VIEWS if urlconf == "rapidvalue.urls"}
    for expected in ("api/v1/auth/login", "api/v1/auth/me", "api/v1/agent/whoami", "api/v1/users",
                     "api/v1/auth/service-tokens", "api/v1/audit-events"):
        assert expected in routes, (expected, sorted(routes))
    assert {route for _, route, _ in LIST_VIEWS} >= {"api/v1/users", "api/v1/audit-events"}
    assert any(route.startswith(AGENT_PREFIX) for _, route, _ in DRF_VIEWS)


def test_both_url_confs_serve_the_same_api():
    by_conf = {conf: {route for c, route, _ in API_CALLBACKS if c == conf} for conf in URLCONFS}
    assert by_conf["rapidvalue.urls"] == by_conf["rapidvalue.urls_public"]


def test_only_drf_views_and_the_json_catch_all_live_under_the_api_prefix():
    others = [(route, cb) for _, route, cb in API_CALLBACKS if not hasattr(cb, "cls") and cb is not api_not_found]
    assert not others, f"plain Django views under /api/v1/ skip every API convention: {others}"


@pytest.mark.parametrize(("urlconf", "route", "callback"), DRF_VIEWS, ids=IDS)
def test_every_api_view_inherits_the_platform_base(urlconf, route, callback):
    assert issubclass(callback.cls, PlatformViewMixin), (
        f"{callback.cls.__module__}.{callback.cls.__qualname__} at /{route} does not inherit PlatformViewMixin "
        "(transactions, Idempotency-Key, rate-limit headers): derive it from rapidvalue.api.views"
    )


@pytest.mark.parametrize(("urlconf", "route", "callback"), LIST_VIEWS, ids=LIST_IDS)
def test_every_list_uses_the_envelope_pagination(urlconf, route, callback):
    pagination = callback.cls.pagination_class
    assert pagination is not None and issubclass(pagination, EnvelopePagination), (
        f"{callback.cls.__qualname__} at /{route} lists with {pagination!r}, not an EnvelopePagination"
    )


@pytest.mark.parametrize(("urlconf", "route", "callback"), DRF_VIEWS, ids=IDS)
def test_agent_tokens_are_valid_on_the_agent_spine_only(urlconf, route, callback):
    classes = _authentication_classes(callback)
    accepts_agent = [c for c in classes if issubclass(c, AgentTokenAuthentication)
                     or "agent" in getattr(c, "allowed_kinds", ())]
    if route == AGENT_PREFIX + "register":
        assert classes == [], (route, classes)  # enrollment: the one-time code is the credential
    elif route.startswith(AGENT_PREFIX):
        assert classes == [AgentTokenAuthentication], (route, classes)
    else:
        assert not accepts_agent, f"/{route} accepts agent tokens through {accepts_agent}"


def _openapi_path(route: str) -> str:
    """``api/v1/users/(?P<pk>[^/.]+)`` -> ``/api/v1/users/{id}`` (drf-spectacular names ``pk`` ``id``)."""
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: "{id}" if m[1] == "pk" else f"{{{m[1]}}}", route)


def test_list_operations_and_list_views_agree(world, db):
    """Every list action is documented as a list (``*_list``, whose envelope test_openapi_schema checks), and every
    documented list, extra actions such as ``/identities/{id}/reports`` included, is served by an envelope view."""
    from django.test import Client

    document = Client().get("/openapi.json").json()
    documented = {path for path, item in document["paths"].items()
                  if item.get("get", {}).get("operationId", "").endswith("_list")}
    views = {_openapi_path(route): cb for urlconf, route, cb in DRF_VIEWS if urlconf == "rapidvalue.urls"}
    list_paths = {_openapi_path(route) for urlconf, route, _ in LIST_VIEWS if urlconf == "rapidvalue.urls"}
    assert list_paths <= documented, list_paths - documented
    for path in documented:
        assert path in views, f"documented list {path} has no DRF view"
        pagination = views[path].cls.pagination_class
        assert pagination is not None and issubclass(pagination, EnvelopePagination), (path, pagination)


class TestTokenKindsAtTheDoor:
    """The same rule, observed: every documented GET refuses the token kind that does not belong there."""

    @pytest.fixture
    def get_operations(self, world, db):
        from django.test import Client

        document = Client().get("/openapi.json").json()
        return [path for path, item in document["paths"].items()
                if "get" in item and "{" not in path and path.startswith("/api/v1/")]

    def test_agent_token_is_refused_outside_the_agent_spine(self, api, get_operations):
        client = api("acme", "agent")
        checked = 0
        for path in get_operations:
            if path.startswith("/api/v1/agent/"):
                assert client.get(path + "?wait=0" if path.endswith("/jobs/next") else path).status_code in (200, 204)
                continue
            assert_error(client.get(path), 401, "token_kind")
            checked += 1
        assert checked >= 3

    @pytest.mark.parametrize("role", ["admin", "service_admin", "auditor"])
    def test_user_and_service_tokens_are_refused_on_the_agent_spine(self, api, get_operations, role):
        client = api("acme", role)
        agent_paths = [p for p in get_operations if p.startswith("/api/v1/agent/")]
        assert agent_paths
        for path in agent_paths:
            assert_error(client.get(path), 401, "token_kind")
