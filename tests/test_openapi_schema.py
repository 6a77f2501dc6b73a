"""The OpenAPI document: valid by drf-spectacular's own validation, no warnings, and it says what the API does.

Also the two documentation pages, which must work offline: every asset they load is served by us.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from drf_spectacular.drainage import GENERATOR_STATS

from rapidvalue.api.pagination import DEFAULT_LIMIT

ENVELOPE = {"items", "total", "limit", "offset"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
# Operations under /api/v1/ that take no token: they are how a token is obtained or given up.
ANONYMOUS_OPERATIONS = {
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("post", "/api/v1/agent/register"),  # the one-time enrollment code is the credential
}
# The one documented endpoint outside /api/v1/: the unauthenticated health probe.
PATHS_OUTSIDE_API = {"/health"}


@pytest.fixture
def document(world, db) -> dict:
    """``/openapi.json`` as an anonymous client gets it."""
    response = Client().get("/openapi.json")
    assert response.status_code == 200, response.content[:300]
    assert "json" in response["Content-Type"], response["Content-Type"]
    return json.loads(response.content)


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


class TestValidation:
    def test_spectacular_validates_without_warnings_or_errors(self, tmp_path, capsys):
        GENERATOR_STATS.reset()  # count only what this generation reports
        target = tmp_path / "openapi.yaml"
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
        output = capsys.readouterr()
        assert not re.search(r"\b(warning|error)\b", output.out + output.err, re.IGNORECASE), output
        assert not GENERATOR_STATS, "drf-spectacular reported warnings or errors"
        written = yaml.safe_load(target.read_text())
        assert written["openapi"].startswith("3.") and written["paths"]

    def test_the_command_and_the_endpoint_serve_the_same_document(self, tmp_path, document):
        target = tmp_path / "openapi.json"
        call_command("spectacular", "--format", "openapi-json", "--file", str(target))
        assert json.loads(target.read_text()) == document


class TestDocument:
    def test_is_openapi_3_with_our_title(self, document):
        assert re.fullmatch(r"3\.\d+\.\d+", document["openapi"]), document["openapi"]
        assert document["info"]["title"] == "RapidValue API"
        assert document["info"]["version"]

    def test_every_path_is_under_the_api_prefix(self, document):
        paths = set(document["paths"])
        assert paths, "the document lists no path"
        outside = {p for p in paths if not p.startswith("/api/v1/")}
        assert outside <= PATHS_OUTSIDE_API, outside
        # the schema, the docs and the admin console are not API operations
        assert not {p for p in paths if p.startswith(("/openapi", "/docs", "/redoc", "/admin", "/static"))}

    def test_bearer_security_schemes_are_declared(self, document):
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
        assert schemes["agentBearerAuth"]["type"] == "http" and schemes["agentBearerAuth"]["scheme"] == "bearer"

    def test_every_api_operation_requires_its_token_kind(self, document):
        seen_agent = False
        for method, path, operation in _operations(document):
            if not path.startswith("/api/v1/"):
                continue
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            if (method, path) in ANONYMOUS_OPERATIONS:
                assert not schemes, (method, path, schemes)
            elif path.startswith("/api/v1/agent/"):
                seen_agent = True
                assert schemes == {"agentBearerAuth"}, (method, path, schemes)
            else:
                assert schemes == {"bearerAuth"}, (method, path, schemes)
        assert seen_agent, "no agent-spine operation documented"

    def test_list_operations_document_the_envelope_and_its_parameters(self, document):
        lists = [(m, p, op) for m, p, op in _operations(document) if m == "get" and op["operationId"].endswith("_list")]
        assert ("get", "/api/v1/users") in {(m, p) for m, p, _ in lists}
        for _, path, operation in lists:
            schema = _resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
            assert schema["type"] == "object", path
            assert set(schema["required"]) >= ENVELOPE, (path, schema)
            assert set(schema["properties"]) >= ENVELOPE, (path, schema)
            assert schema["properties"]["items"]["type"] == "array", path
            for name in ("total", "limit", "offset"):
                assert schema["properties"][name]["type"] == "integer", (path, name)
            query = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
            assert {"limit", "offset"} <= set(query), (path, sorted(query))
            assert query["limit"]["schema"]["type"] == "integer" and str(DEFAULT_LIMIT) in query["limit"]["description"]

    def test_cursor_lists_document_next_cursor(self, document):
        audit = document["paths"]["/api/v1/audit-events"]["get"]
        schema = _resolve(document, audit["responses"]["200"]["content"]["application/json"]["schema"])
        assert "next_cursor" in schema["required"]
        assert "cursor" in {p["name"] for p in audit["parameters"]}

    def test_every_operation_has_a_typed_success_response(self, document):
        for method, path, operation in _operations(document):
            success = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
            assert success, (method, path)
            for code, response in success.items():
                if code == "204":
                    assert "content" not in response, (method, path)
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema, (method, path, code)

    def test_every_operation_documents_the_one_error_shape(self, document):
        error = document["components"]["schemas"]["Error"]
        assert error["required"] == ["error"]
        assert set(error["properties"]["error"]["required"]) == {"code", "message", "details", "request_id"}
        for method, path, operation in _operations(document):
            for code in ("400", "401", "403", "404", "429"):
                response = operation["responses"][code]
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, code)

    def test_writes_document_idempotency_key(self, document):
        for method, path, operation in _operations(document):
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            if method != "get" and path.startswith("/api/v1/"):
                assert "Idempotency-Key" in names, (method, path)


class _AssetCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in {"src", "href", "spec-url"} and value:
                self.urls.append((tag, value))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_local_assets(world, db, page):
    client = Client()
    response = client.get(page)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    collector = _AssetCollector()
    collector.feed(html)
    scripts = [url for tag, url in collector.urls if tag == "script"]
    assert scripts, f"{page} loads no script"
    external = [url for _, url in collector.urls if urlsplit(url).scheme or url.startswith("//")]
    assert not external, f"{page} loads assets from elsewhere: {external}"
    assert "cdn" not in html.lower(), f"{page} mentions a CDN"
    for _, url in collector.urls:
        if url.startswith("/static/"):
            asset = client.get(url)
            assert asset.status_code == 200, url
            # reading a streamed file to the end also closes it (the test client's wrapper)
            body = b"".join(asset.streaming_content) if asset.streaming else asset.content
            assert body, url
    assert "/openapi.json" in html
