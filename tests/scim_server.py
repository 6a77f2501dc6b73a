"""A real SCIM 2.0 server on loopback for the SCIM connector tests (scim2-server, in memory).

``scim2-server`` (python-scim / Yaal Coop) is a full RFC 7643/7644 service provider: Users with the
enterprise extension, Groups, filters, index paging, PATCH, DELETE, ``meta.lastModified``, and
static bearer tokens (``BearerTokenApplication``, the application its own ``scim2-server``
command serves). We build the same application as that command and serve it with the standard
library's threaded WSGI server on ``127.0.0.1:0`` in a daemon thread: port 0 means no race for a
free port, and everything the connector does still goes over real HTTP.

Two things the command does not have are added by a thin WSGI middleware (``FaultInjector``):
scripted failures (answer the next N matching requests with 429/503/...) to test retries, and a
log of the requests that reached the server, to assert on what the connector actually sent.

Fixtures are loaded through the server's HTTP API (``seed_directory``), not written into its
storage, so they get real ids, ``meta`` and validation.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote_plus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
from scim2_models import ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import load_default_resource_types, load_default_schemas, load_default_service_provider_config

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
DEPARTMENTS = ["Engineering", "Sales", "Finance", "HR", "Support", "Marketing"]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: pytest would show hundreds of lines on a failure."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


@dataclass
class Fault:
    status: int
    path_prefix: str = ""
    method: str | None = None
    retry_after: str | None = None
    query_contains: str = ""
    scim_type: str | None = None

    def matches(self, method: str, path: str, query: str) -> bool:
        return (path.startswith(self.path_prefix) and (self.method is None or self.method == method)
                and self.query_contains in unquote_plus(query))


class FaultInjector:
    """WSGI middleware: logs requests and answers scripted failures before the real application."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def fail_next(self, count: int, status: int, path_prefix: str = "", method: str | None = None,
                  retry_after: str | None = None, query_contains: str = "", scim_type: str | None = None) -> None:
        """Answer the next ``count`` matching requests with ``status`` instead of the server."""
        with self.lock:
            self.faults.extend(Fault(status, path_prefix, method, retry_after, query_contains, scim_type)
                               for _ in range(count))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        with self.lock:
            self.log.append((method, path, query))
            fault = next((f for f in self.faults if f.matches(method, path, query)), None)
            if fault is not None:
                self.faults.remove(fault)
        if fault is None:
            return self.app(environ, start_response)
        error: dict[str, Any] = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                 "status": str(fault.status), "detail": "injected by the test"}
        if fault.scim_type:
            error["scimType"] = fault.scim_type
        body = json.dumps(error).encode()
        headers = [("Content-Type", "application/scim+json"), ("Content-Length", str(len(body)))]
        if fault.retry_after is not None:
            headers.append(("Retry-After", fault.retry_after))
        start_response(f"{fault.status} Injected", headers)
        return [body]


@dataclass
class ScimServer:
    base_url: str
    token: str
    faults: FaultInjector
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for the tests' own reads and writes (fixtures, verification)."""
        return httpx.Client(base_url=self.base_url, timeout=10,
                            headers={"Authorization": f"Bearer {token or self.token}",
                                     "Content-Type": "application/scim+json"})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_scim_server(token: str | None = None) -> ScimServer:
    """Start scim2-server (in memory, bearer token required) on a free loopback port."""
    token = token or secrets.token_urlsafe(24)
    config = load_default_service_provider_config()
    # Announcing the scheme makes 401 responses carry WWW-Authenticate, as the scim2-server command does.
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(load_default_schemas().values(), load_default_resource_types().values(),
                                           config=config)
    app = BearerTokenApplication(InMemoryStorage(), provider, service=ScimService(provider),
                                 bearer_tokens=[token])
    faults = FaultInjector(app)
    server = make_server("127.0.0.1", 0, faults, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="scim2-server",
                              daemon=True)
    thread.start()
    port = server.server_address[1]
    return ScimServer(base_url=f"http://127.0.0.1:{port}/v2", token=token, faults=faults, _server=server,
                      _thread=thread)


# --- fixtures through the API -------------------------------------------------------------------


@dataclass
class SeededUser:
    id: str
    user_name: str
    external_id: str | None
    manager_id: str | None
    department: str

    @property
    def expected_external_id(self) -> str:
        return self.external_id or self.id


@dataclass
class SeededGroup:
    id: str
    display_name: str
    member_ids: list[str]


@dataclass
class Directory:
    users: list[SeededUser]
    groups: list[SeededGroup]

    def user(self, scim_id: str) -> SeededUser:
        return next(u for u in self.users if u.id == scim_id)


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise AssertionError(f"SCIM fixture request failed: {response.status_code} {response.text}")
    return response.json() if response.content else {}


def user_payload(index: int, *, external_id: str | None, manager_id: str | None, prefix: str = "user") -> dict:
    first, last = f"First{index}", f"Last{index}"
    payload: dict[str, Any] = {
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "userName": f"{prefix}{index:04d}",
        "name": {"givenName": first, "familyName": last},
        "displayName": f"{first} {last}",
        "title": "Manager" if index < 30 else "Engineer",
        "active": index % 17 != 5,
        "emails": [{"value": f"{prefix}{index}.home@home.example", "type": "home"},
                   {"value": f"{prefix}{index}@corp.example", "type": "work", "primary": True}],
        ENTERPRISE: {"department": DEPARTMENTS[index % len(DEPARTMENTS)], "employeeNumber": str(1000 + index)},
    }
    if external_id:
        payload["externalId"] = external_id
    if manager_id:
        payload[ENTERPRISE]["manager"] = {"value": manager_id}
    return payload


def seed_directory(server: ScimServer, users: int = 230, groups: int = 12) -> Directory:
    """Create ``users`` users and ``groups`` groups through the SCIM API.

    User i reports to user (i - 1) // 8 when i % 4 != 0 (so some users have no manager), every
    tenth user has no ``externalId`` (the connector must fall back to the SCIM id), user 0 has
    none and no manager. Group g holds the users i with i % groups == g or i % 29 == g; group 11
    (of 12) is left empty to cover a group without members.
    """
    seeded: list[SeededUser] = []
    with server.client() as client:
        for index in range(users):
            manager = seeded[(index - 1) // 8] if index and index % 4 else None
            external_id = None if index % 10 == 0 else f"emp-{index:05d}"
            body = _check(client.post("/Users", json=user_payload(
                index, external_id=external_id, manager_id=manager.id if manager else None)))
            seeded.append(SeededUser(id=body["id"], user_name=body["userName"], external_id=external_id,
                                     manager_id=manager.id if manager else None,
                                     department=DEPARTMENTS[index % len(DEPARTMENTS)]))
        made: list[SeededGroup] = []
        for g in range(groups):
            members = [] if g == groups - 1 else [
                u.id for i, u in enumerate(seeded) if i % groups == g or i % 29 == g]
            body = _check(client.post("/Groups", json={
                "schemas": [GROUP_SCHEMA], "displayName": f"Group {g:02d}",
                "members": [{"value": m, "type": "User"} for m in members]}))
            made.append(SeededGroup(id=body["id"], display_name=body["displayName"], member_ids=members))
    return Directory(users=seeded, groups=made)
