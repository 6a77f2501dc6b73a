"""Schemathesis over every operation of our OpenAPI document, as acme's tenant admin.

The operations come from the document the application serves: it is generated at collection time
by the same drf-spectacular generator behind ``/openapi.json`` (``test_fuzzed_document_is_the_served_one``
proves they are identical), so every endpoint added later is fuzzed too, with no change here.
Each operation is its own test item, ``test_every_operation_as_tenant_admin[METHOD /path]``.

Requests go in-process to the real WSGI application, so the whole production middleware stack runs
(request ids, CSRF, tenant resolution, rate limits), inside the test's transaction (``db``): whatever
the run creates, changes or deletes in the shared ``acme`` tenant is rolled back afterwards. The host
is schemathesis' ``localhost``, the base domain: the tenant comes from the token.

All of schemathesis' default checks run (no 5xx, status code, content type, response headers and
response body conform to the document, negative data rejected, ...), with one narrow exclusion
explained at ``_excluded_checks``.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

MAX_EXAMPLES = 10


def _served_document() -> dict:
    """The OpenAPI document as ``/openapi.json`` builds it (no database or Redis needed at collection)."""
    return SchemaGenerator(urlconf="rapidvalue.urls_public").get_schema(request=None, public=True)


DOCUMENT = _served_document()

schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "generation": {
                # Bounded run: ~25 generated cases per operation and mode, no shrinking (a failure
                # is reported as found), no example database written to the working tree.
                "max-examples": MAX_EXAMPLES,
                "no-shrink": True,
                "database": "none",
                # The bearer token is ours to send (``_credentials``), not a parameter to fuzz: a
                # generated "Authorization missing" case would be sent with the real token and then
                # wrongly count as accepted bad data. Missing/invalid tokens are covered by
                # test_auth_tokens.py.
                "with-security-parameters": False,
                # PostgreSQL text cannot hold NUL, so every string input refuses it with a 400
                # (Django's ProhibitNullCharactersValidator): a platform rule, not a per-field one.
                "allow-x00": False,
            },
        }
    ),
)
schema.app = get_wsgi_application()


@pytest.fixture
def in_test_transaction(db):
    """Keep the WSGI handler on the test's connection and inside its transaction.

    Django closes "old" connections when a request starts and finishes; inside the test's
    transaction that would abort it. Django's test client detaches that handler for the same
    reason; the raw WSGI application needs it done here.
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _credentials(case, world) -> dict[str, str]:
    """The bearer token the operation declares: acme's admin user token for ``bearerAuth``; on agent-spine
    operations (``agentBearerAuth``, where no other kind is valid) acme's agent token; none on
    operations without a security requirement (login, refresh, logout, health)."""
    security = case.operation.definition.raw.get("security") or []
    schemes = {name for requirement in security for name in requirement}
    if "agentBearerAuth" in schemes:
        return {"Authorization": f"Bearer {world.acme.tokens['agent']}"}
    if schemes:
        return {"Authorization": f"Bearer {world.acme.tokens['admin']}"}
    return {}


def _excluded_checks(case) -> list:
    """Checks that cannot hold for this operation, for a documented reason.

    ``positive_data_acceptance`` (a schema-valid request must not get a 400) is skipped on:

    * operations with a request body: write bodies carry business rules that JSON Schema cannot
      express and that the API answers with its documented 400 ``invalid`` (the password policy:
      at least 10 characters, not common, not all digits; a service token's ``expires_at`` must lie
      in the future; a user is admin or auditor, never both);
    * operations taking an opaque ``cursor``: any string is schema-valid, but only a value from a
      previous page's ``next_cursor`` is a cursor, anything else is the documented 400.

    Every other operation keeps it. "Not a server error", status code, content type, response
    headers and response schema conformance, and negative data rejection, are never excluded.
    """
    raw = case.operation.definition.raw
    takes_cursor = any(p.get("in") == "query" and p.get("name") == "cursor" for p in raw.get("parameters", []))
    if raw.get("requestBody") or takes_cursor:
        return [positive_data_acceptance]
    return []


def test_fuzzed_document_is_the_served_one(world, db):
    """What is fuzzed below is exactly what ``/openapi.json`` serves, so no endpoint escapes the run."""
    response = Client().get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT
    operations = [(method, path) for path, item in DOCUMENT["paths"].items() for method in item]
    assert ("get", "/api/v1/users") in operations and len(operations) >= 10


@pytest.mark.slow
@schema.parametrize()
# The one function-scoped fixture is the test's transaction: sharing it between the generated cases
# is the point (their writes are rolled back together at the end).
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_as_tenant_admin(case, world, in_test_transaction):
    case.call_and_validate(headers=_credentials(case, world), excluded_checks=_excluded_checks(case))
