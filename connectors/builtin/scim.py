"""SCIM 2.0 client connector (RFC 7643 / 7644): Users, Groups, memberships; account and membership write-back.

Config (non-secret)::

    {"base_url": "https://app.example/scim/v2", "page_size": 100,
     "user_filter": "userType eq \\"Employee\\"", "group_filter": "displayName sw \\"app-\\"",
     "mapping": {"external_id": ["externalId", "id"], "department": "urn:...:enterprise:2.0:User:department"}}

auth_config (secret): ``{"token": "..."}`` (Bearer) or ``{"username": "...", "password": "..."}`` (Basic).

Optional settings: ``allow_http`` (plain http is refused unless true; for tests and on-premises
servers inside a trusted network), ``timeout`` (seconds per request, default 30), ``max_retries``
(default 3) and ``retry_backoff_seconds`` (default 0.5, doubled per try) for 429/5xx/network
failures, ``incremental_overlap_seconds`` (default 60), ``ca_certs_file`` (PEM bundle for a private
CA). Unknown keys are refused, so that a typo is a clear error rather than a silent default.

What comes out
    Every User gives a RemoteAccount (native_id = SCIM ``id``, username = ``userName``, status from
    ``active``) and a RemoteIdentity. Every Group gives a RemoteEntitlement (value = group ``id``,
    display_name = ``displayName``) and one RemoteGrant per ``members[].value`` (account_native_id =
    member id). SCIM ids, not names, are the keys: they are the only thing a group's ``members``
    carry, so grants join accounts without a lookup per membership, and renames do not look like a
    new account. Members of ``type: Group`` (nested groups) are reported as record errors and
    skipped: the protocol has no group-in-group grant.

    The default mapping (override per field with ``config.mapping``; a field maps to a SCIM
    attribute path or a list of them, the first non-empty wins):
    external_id ``externalId`` then ``id``; username ``userName``; email the primary ``emails``
    value (else the first); first/last/display name ``name.givenName`` / ``name.familyName`` /
    ``displayName``; title ``title``; location the primary address's ``locality``; department and
    manager from the enterprise extension (``department``, ``manager.value``). Paths are
    case-insensitive as SCIM attribute names are; an extension attribute is written with its schema
    URN (``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department``); a multi-valued
    attribute resolves to its ``primary`` item, else its first. ``manager.value`` is the manager's
    SCIM id: it is resolved to the manager's *external id*, from the users of the same chunk or by
    one filtered lookup (``id eq .. or id eq ..``) per 20 unknown managers (a GET per id when the
    server refuses that filter). A manager that does not exist leaves the field empty and is
    reported as a record error; the identity is still sent.

Paging and the cursor
    Index paging (``startIndex`` / ``count``) over ``/Users`` then ``/Groups``. The dispatcher
    makes a new connector object per call and SCIM paging needs no server-side state, so the
    cursor (base64 JSON) carries everything: phase, next startIndex, records emitted, the
    incremental lower bound pinned at the start of the run, whether the incremental filter was
    refused, and totals for the progress estimate. ``chunk_size`` counts SCIM resources, as the
    LDAP connector counts entries: a chunk holds at most that many users or groups, fetched in
    pages of at most ``page_size`` (a request never asks for more than the chunk still needs, so
    the cursor is an exact startIndex). A group's memberships travel with the group (the server
    returns them in one resource anyway), so a chunk may carry more grants than ``chunk_size``.
    ``max_records`` also counts resources. ``total_estimate`` is in protocol records, like the
    runner's progress counter: 2 per user, 1 per group, plus memberships extrapolated from the
    groups read so far.

    Index paging is not a snapshot. Deleting a user behind our position would shift an unseen user
    into the part already read, and a full sync must not then report it as gone (the engine deletes
    what a successful full sync did not see). So every page compares ``totalResults`` with the
    previous page's; when it shrank by d, the page is read again from d positions earlier. Records
    read twice are merged idempotently by the engine (and de-duplicated within a chunk here).
    Simultaneous creations and deletions that keep the total unchanged are not detected; RFC 9865
    cursor paging would be needed for that.

Incremental
    With ``incremental`` and ``last_sync_at``: ``filter=meta.lastModified gt "<T>"`` with T =
    last_sync_at minus ``incremental_overlap_seconds`` (clock skew; records sent twice are
    harmless), combined with user_filter / group_filter as ``(<filter>) and meta.lastModified gt
    ..``. A group whose membership changed has a new lastModified and comes back with all its
    members. If the server answers 400 to the filter with meta.lastModified (not every server can
    filter on it), that phase falls back to a full listing (keeping user_filter / group_filter), the
    cursor remembers it for the rest of the run, and one record error says so. Deletions are never
    visible incrementally; the periodic full sync finds them.

Errors
    Wrong config raises ConfigurationError before any request. 401/403 from the server give
    ``SyncResponse(success=False)`` with a message to check auth_config (retrying cannot help;
    the runner fails the run with that message). Other 4xx answers (e.g. a user_filter the server
    refuses) also give ``success=False``. 429, 5xx (except 501) and network failures are retried
    ``max_retries`` times with exponential backoff, honouring ``Retry-After`` up to 30 s; then
    TransientConnectorError is raised (worth retrying the run later). Redirects are never followed.
    A server without ``/Groups`` (404) is synced as having no groups.

Write-back (``provision``)
    create_account: POST /Users with userName, name, displayName, emails, externalId (the
    identity's external id) and active (``attributes.active``, default true); other entries of
    ``attributes`` are added as SCIM attributes. A 409 (userName taken) is a success only when the
    existing user has the same externalId, i.e. it is our own earlier, retried create.
    enable/disable_account: PATCH ``active``. delete_account: DELETE (404 counts as done).
    add_grant: a membership check (``id eq G and members[value eq U]``) then PATCH add; an existing
    member is a success without a write (RFC 7644 lets servers add duplicates otherwise).
    remove_grant: PATCH remove ``members[value eq "U"]``; a 400 noTarget or a missing group counts as
    done. Each operation gets its own OperationResult; one failure never stops the others, and
    ``retryable`` is set for 429/5xx/network failures.

Pure Python plus httpx: no Django import (this also runs inside the on-premises agent), hence no
``rapidvalue.outbound``: explicit timeouts and no redirects are applied here. The token and the
password never appear in a message, a cursor, an exception text or a repr.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError

from ..base import ConfigurationError, Connector, ConnectorError, TransientConnectorError, register
from ..protocol.v1 import (
    Capabilities,
    OperationKind,
    OperationResult,
    ProvisioningOperation,
    ProvisioningRequest,
    ProvisioningResponse,
    RecordError,
    RemoteAccount,
    RemoteEntitlement,
    RemoteGrant,
    RemoteIdentity,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_MEDIA_TYPE = "application/scim+json"

DEFAULT_MAPPING: dict[str, list[str]] = {
    "external_id": ["externalId", "id"],
    "username": ["userName"],
    "email": ["emails.value"],
    "first_name": ["name.givenName"],
    "last_name": ["name.familyName"],
    "display_name": ["displayName", "name.formatted"],
    "department": [f"{ENTERPRISE_SCHEMA}:department"],
    "title": ["title"],
    "location": ["addresses.locality"],
    "manager": [f"{ENTERPRISE_SCHEMA}:manager.value"],
}
# Identity fields a mapping may also set; not mapped by default because their values must fit the engine's choices.
OPTIONAL_MAPPED = ("employment_type", "start_date", "end_date")
MAPPABLE = (*DEFAULT_MAPPING, *OPTIONAL_MAPPED)
REQUIRED_MAPPED = ("external_id", "username")
CONFIG_KEYS = {
    "base_url", "allow_http", "page_size", "user_filter", "group_filter", "mapping", "timeout", "max_retries",
    "retry_backoff_seconds", "incremental_overlap_seconds", "ca_certs_file",
}
AUTH_KEYS = {"token", "username", "password"}
# A SCIM attribute path: optional schema URN, then dotted attribute names (RFC 7644 §3.10).
_PATH = re.compile(r"^(?:urn:[A-Za-z0-9._:-]+:)?[A-Za-z$][\w$-]*(?:\.[A-Za-z$][\w$-]*)*$")
MANAGER_LOOKUP_BATCH = 20
MAX_RETRY_AFTER = 30.0
MAX_DETAIL = 300


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScimSettings:
    """Validated config + auth_config. ``repr`` hides the secrets (a settings object may end up in a traceback)."""

    base_url: str
    page_size: int
    user_filter: str | None
    group_filter: str | None
    mapping: dict[str, list[str]]
    timeout: float
    max_retries: int
    retry_backoff: float
    incremental_overlap: int
    ca_certs_file: str | None
    username: str | None
    token: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, config: dict, auth_config: dict) -> ScimSettings:
        if not isinstance(config, dict) or not isinstance(auth_config, dict):
            raise ConfigurationError("config and auth_config must be objects")
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigurationError(f"config has unknown keys: {unknown}; allowed: {sorted(CONFIG_KEYS)}")

        allow_http = config.get("allow_http", False)
        if not isinstance(allow_http, bool):
            raise ConfigurationError("config.allow_http must be true or false")
        base_url = _base_url(config.get("base_url"), allow_http)

        mapping = {name: list(paths) for name, paths in DEFAULT_MAPPING.items()}
        overrides = config.get("mapping", {})
        if not isinstance(overrides, dict):
            raise ConfigurationError("config.mapping must be an object of field -> SCIM attribute path (or list)")
        unknown_fields = sorted(set(overrides) - set(MAPPABLE))
        if unknown_fields:
            raise ConfigurationError(f"config.mapping has unknown fields: {unknown_fields}; allowed: {list(MAPPABLE)}")
        for name, paths in overrides.items():
            paths = [paths] if isinstance(paths, str) else paths
            if paths in ([], None) and name not in REQUIRED_MAPPED:
                mapping.pop(name, None)  # an empty mapping switches an optional field off
                continue
            if not isinstance(paths, list) or not paths or not all(
                    isinstance(p, str) and _PATH.match(p) for p in paths):
                raise ConfigurationError(
                    f"config.mapping.{name} must be a SCIM attribute path (e.g. name.givenName or "
                    f"{ENTERPRISE_SCHEMA}:department) or a non-empty list of them")
            mapping[name] = list(paths)

        filters = {}
        for key in ("user_filter", "group_filter"):
            value = config.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value):
                raise ConfigurationError(f"config.{key} must be a SCIM filter on one line, e.g. userName sw \"a\"")
            filters[key] = value.strip() if value else None

        ca_certs_file = config.get("ca_certs_file")
        if ca_certs_file is not None and (not isinstance(ca_certs_file, str) or not ca_certs_file):
            raise ConfigurationError("config.ca_certs_file must be a path to a PEM bundle")

        token, username, password = (auth_config.get(k) for k in ("token", "username", "password"))
        unknown_auth = sorted(set(auth_config) - AUTH_KEYS)
        if unknown_auth:
            # Key names only: values are secrets.
            raise ConfigurationError(f"auth_config has unknown keys: {unknown_auth}; allowed: {sorted(AUTH_KEYS)}")
        if token is not None and (username is not None or password is not None):
            raise ConfigurationError("auth_config: give either token (Bearer) or username and password (Basic), "
                                     "not both")
        if token is not None:
            if not isinstance(token, str) or not token.strip() or any(c in token for c in "\r\n"):
                raise ConfigurationError("auth_config.token must be a non-empty string on one line")
        elif username is not None or password is not None:
            if not isinstance(username, str) or not username or ":" in username:
                raise ConfigurationError("auth_config.username must be a non-empty string without ':'")
            if not isinstance(password, str) or not password:
                raise ConfigurationError("auth_config.password is required (non-empty) with username")
        else:
            raise ConfigurationError("auth_config needs token (Bearer) or username and password (Basic)")

        return cls(
            base_url=base_url,
            page_size=_number(config, "page_size", 100, 1, 1000, int),
            user_filter=filters["user_filter"], group_filter=filters["group_filter"], mapping=mapping,
            timeout=_number(config, "timeout", 30, 1, 300, float),
            max_retries=_number(config, "max_retries", 3, 0, 10, int),
            retry_backoff=_number(config, "retry_backoff_seconds", 0.5, 0, 60, float),
            incremental_overlap=_number(config, "incremental_overlap_seconds", 60, 0, 86_400, int),
            ca_certs_file=ca_certs_file, username=username if token is None else None,
            token=token.strip() if token else None, password=password if token is None else None,
        )


def _base_url(value: Any, allow_http: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("config.base_url is required (e.g. https://app.example/scim/v2)")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigurationError("config.base_url is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL itself holds a secret.
        raise ConfigurationError("config.base_url must not carry credentials; put them in auth_config")
    if parts.scheme == "http" and not allow_http:
        raise ConfigurationError("config.base_url must use https (plain http only with config.allow_http: true, "
                                 "for tests and trusted on-premises networks)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError("config.base_url must look like https://host[:port]/path")
    if parts.query or parts.fragment:
        raise ConfigurationError("config.base_url must not have a query or a fragment")
    return value.strip().rstrip("/")


def _number(config: dict, key: str, default: float, low: float, high: float, kind: type) -> Any:
    value = config.get(key, default)
    valid_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, valid_types) or not low <= value <= high:
        raise ConfigurationError(f"config.{key} must be {'an integer' if kind is int else 'a number'} "
                                 f"from {low} to {high}")
    return kind(value)


# --- HTTP ----------------------------------------------------------------------------------------


class InvalidOperation(ConnectorError):
    """A provisioning operation that lacks what it needs; it fails alone."""


class ScimHttpError(ConnectorError):
    """A final, non-retryable answer from the server (4xx, 501, redirect, not SCIM JSON)."""

    def __init__(self, message: str, status: int | None = None, scim_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.scim_type = scim_type

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)


def _describe(response: httpx.Response) -> tuple[str, str | None]:
    """``HTTP 400 invalidFilter: detail`` from a SCIM error body (RFC 7644 §3.12), or the bare status."""
    scim_type = detail = None
    try:
        body = response.json()
        if isinstance(body, dict):
            scim_type = body.get("scimType") if isinstance(body.get("scimType"), str) else None
            detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    except ValueError:
        pass
    text = f"HTTP {response.status_code}"
    if scim_type:
        text += f" {scim_type}"
    if detail:
        text += f": {detail[:MAX_DETAIL]}"
    return text, scim_type


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class ScimClient:
    """httpx with the connector's rules: explicit timeouts, no redirects, retries for 429/5xx/network only."""

    def __init__(self, settings: ScimSettings, *, retries: int | None = None):
        self.settings = settings
        self.retries = settings.max_retries if retries is None else retries
        headers = {"Accept": f"{SCIM_MEDIA_TYPE}, application/json", "User-Agent": "RapidValue-SCIM/1"}
        auth: httpx.Auth | None = None
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        else:
            auth = httpx.BasicAuth(settings.username or "", settings.password or "")
        verify: ssl.SSLContext | bool = True
        if settings.ca_certs_file:
            try:
                verify = ssl.create_default_context(cafile=settings.ca_certs_file)
            except (OSError, ssl.SSLError):
                raise ConfigurationError("config.ca_certs_file cannot be read as a PEM CA bundle") from None
        self.http = httpx.Client(
            base_url=settings.base_url + "/", headers=headers, auth=auth, verify=verify, follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ScimClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> httpx.Response:
        """Send with retries; return a response whose status is in ``ok``, else raise ScimHttpError.

        Retrying a POST is safe enough here: create_account recognises its own earlier attempt on 409.
        """
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": SCIM_MEDIA_TYPE} if body is not None else None
        what = f"{method} {self.settings.base_url}/{path}"
        attempt = 0
        while True:
            wait = self.settings.retry_backoff * (2 ** attempt)
            try:
                response = self.http.request(method, path, params=params, content=content, headers=headers)
            except httpx.TimeoutException:
                failure = f"{what} timed out after {self.settings.timeout:g} s"
            except httpx.RequestError as exc:
                failure = f"{what} failed: {exc.__class__.__name__}: {exc}"
            else:
                if response.status_code in ok:
                    return response
                if response.status_code == 429 or (response.status_code >= 500 and response.status_code != 501):
                    failure = f"{what}: {_describe(response)[0]}"
                    retry_after = _retry_after(response)
                    if retry_after is not None:
                        wait = min(retry_after, MAX_RETRY_AFTER)
                else:
                    raise self._final(response, what)
            if attempt >= self.retries:
                raise TransientConnectorError(f"{failure} (after {attempt + 1} attempts)")
            attempt += 1
            time.sleep(wait)

    @staticmethod
    def _final(response: httpx.Response, what: str) -> ScimHttpError:
        status = response.status_code
        if 300 <= status < 400:
            return ScimHttpError(f"{what}: HTTP {status} redirect to {response.headers.get('Location', '?')!r} "
                                 "(redirects are not followed: set config.base_url to the final URL)", status)
        text, scim_type = _describe(response)
        if status in (401, 403):
            return ScimHttpError(f"{what}: {text}: the SCIM server refused the credentials; check auth_config",
                                 status, scim_type)
        return ScimHttpError(f"{what}: {text}", status, scim_type)

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _json(self.request("GET", path, params=params), f"GET {self.settings.base_url}/{path}")

    def list(self, endpoint: str, *, scim_filter: str | None, start_index: int, count: int) -> dict[str, Any]:
        params: dict[str, Any] = {"startIndex": start_index, "count": count}
        if scim_filter:
            params["filter"] = scim_filter
        page = self.get_json(endpoint, params)
        if not isinstance(page.get("totalResults"), int) or not isinstance(page.get("Resources", []), list):
            raise ScimHttpError(f"GET {self.settings.base_url}/{endpoint}: not a SCIM ListResponse")
        return page


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ScimHttpError(f"{what}: the answer is not JSON (is base_url the SCIM root?)",
                            response.status_code) from None
    if not isinstance(body, dict):
        raise ScimHttpError(f"{what}: the answer is not a JSON object", response.status_code)
    return body


def _path_id(value: str) -> str:
    """A SCIM id as one path segment: an id like ``../Groups/x`` must not reach another resource."""
    return quote(value, safe="")


def _literal(value: str) -> str:
    """A SCIM filter string literal (JSON string syntax, RFC 7644 §3.4.2.2)."""
    return json.dumps(value)


# --- attribute paths -----------------------------------------------------------------------------


def _get_ci(node: dict[str, Any], name: str) -> Any:
    if name in node:
        return node[name]
    lowered = name.lower()
    return next((v for k, v in node.items() if k.lower() == lowered), None)


def _primary(items: list[Any]) -> Any:
    return next((i for i in items if isinstance(i, dict) and i.get("primary") is True), items[0] if items else None)


def lookup(resource: dict[str, Any], path: str) -> Any:
    """The value at a SCIM attribute path; multi-valued attributes resolve to their primary (else first) item."""
    node: Any = resource
    rest = path
    if path.lower().startswith("urn:"):
        schema, _, rest = path.rpartition(":")
        node = _get_ci(resource, schema)
        if node is None and schema.lower() in (USER_SCHEMA.lower(), GROUP_SCHEMA.lower()):
            node = resource  # core attributes may be written with their URN but sit at the top level
    for part in rest.split("."):
        if isinstance(node, list):
            node = _primary(node)
        if not isinstance(node, dict):
            return None
        node = _get_ci(node, part)
    if isinstance(node, list):
        node = _primary(node)
    if isinstance(node, dict):
        node = node.get("value")
    return node


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def _first(resource: dict[str, Any], paths: list[str] | None) -> str | None:
    for path in paths or []:
        value = _text(lookup(resource, path))
        if value is not None:
            return value
    return None


def _active(resource: dict[str, Any]) -> bool:
    return _truthy(_get_ci(resource, "active"))


def _truthy(value: Any) -> bool:
    """SCIM booleans, also as the strings some servers send; absent means active (RFC 7643 leaves it optional)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no")
    return value is not False


# --- cursor --------------------------------------------------------------------------------------


@dataclass
class SyncCursor:
    """What ``next_cursor`` carries (base64 JSON): everything the next call needs, no server state."""

    phase: str = "users"
    index: int = 1
    emitted: int = 0
    since: str | None = None
    full: list[str] = field(default_factory=list)  # phases whose incremental filter the server refused
    seen_total: int | None = None  # totalResults of the previous page of this phase
    users_total: int | None = None
    groups_total: int | None = None
    groups_done: int = 0
    grants_done: int = 0

    def encode(self) -> str:
        payload = {"v": 1, "p": self.phase, "i": self.index, "e": self.emitted, "s": self.since, "f": self.full,
                   "st": self.seen_total, "u": self.users_total, "g": self.groups_total, "gd": self.groups_done,
                   "gr": self.grants_done}
        return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, cursor: str) -> SyncCursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            if data.get("v") != 1 or data["p"] not in ("users", "groups") or int(data["i"]) < 1:
                raise ValueError("unknown cursor version or phase")
            return cls(phase=data["p"], index=int(data["i"]), emitted=int(data["e"]), since=data.get("s"),
                       full=[str(p) for p in data.get("f", [])], seen_total=data.get("st"),
                       users_total=data.get("u"), groups_total=data.get("g"), groups_done=int(data.get("gd", 0)),
                       grants_done=int(data.get("gr", 0)))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
            raise ConfigurationError("invalid SCIM sync cursor (start a new sync without a cursor)") from None

    def estimate(self) -> int | None:
        """Protocol records expected overall: 2 per user, 1 per group, memberships extrapolated."""
        if self.users_total is None or self.groups_total is None:
            return None
        per_group = self.grants_done / self.groups_done if self.groups_done else 0
        remaining = int(max(self.groups_total - self.groups_done, 0) * per_group)
        return 2 * self.users_total + self.groups_total + self.grants_done + remaining


def _since(last_sync_at: datetime, overlap: int) -> str:
    if last_sync_at.tzinfo is None:
        last_sync_at = last_sync_at.replace(tzinfo=UTC)
    moment = (last_sync_at - timedelta(seconds=overlap)).astimezone(UTC).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _and(*filters: str | None) -> str | None:
    present = [f for f in filters if f]
    if len(present) <= 1:
        return present[0] if present else None
    return " and ".join(f"({f})" for f in present)


# --- the connector -------------------------------------------------------------------------------


@register
class ScimConnector(Connector):
    type = "scim"
    local_only_config = ("base_url", "allow_http", "ca_certs_file")
    capabilities: ClassVar[Capabilities] = Capabilities(
        sync_identities=True, sync_accounts=True, sync_entitlements=True, sync_grants=True, incremental=True,
        paging=True, operations=list(OperationKind),
    )

    @classmethod
    def validate_config(cls, config: dict, auth_config: dict) -> None:
        ScimSettings.parse(config, auth_config)

    # -- test connection --

    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        """Discovery, then an authenticated read (ServiceProviderConfig alone proves nothing: RFC 7643 §5
        lets servers serve it without authentication), then each configured filter."""
        try:
            settings = ScimSettings.parse(request.config, request.auth_config)
        except ConfigurationError as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        details: dict[str, Any] = {}
        try:
            with ScimClient(settings, retries=0) as client:
                try:
                    spc = client.get_json("ServiceProviderConfig")
                    details.update({
                        feature: bool((spc.get(feature) or {}).get("supported"))
                        for feature in ("patch", "filter", "sort", "etag", "bulk")
                    })
                    schemes = spc.get("authenticationSchemes") or []
                    details["authentication_schemes"] = [s.get("type") for s in schemes if isinstance(s, dict)]
                except ScimHttpError as exc:
                    if exc.auth:
                        raise
                    details["service_provider_config"] = f"unavailable ({exc.status})"
                users = client.list("Users", scim_filter=None, start_index=1, count=1)
                details["users"] = users["totalResults"]
                try:
                    details["groups"] = client.list("Groups", scim_filter=None, start_index=1, count=1)["totalResults"]
                except ScimHttpError as exc:
                    if exc.status != 404:
                        raise
                    details["groups"] = 0
                    details["groups_endpoint"] = "absent (404): no entitlements will be synced"
                for key, endpoint in (("user_filter", "Users"), ("group_filter", "Groups")):
                    value = getattr(settings, key)
                    if value:
                        try:
                            page = client.list(endpoint, scim_filter=value, start_index=1, count=1)
                        except ScimHttpError as exc:
                            return TestConnectionResponse(
                                success=False, details=details,
                                message=f"config.{key} was refused by the server: {exc}")
                        details[f"{key}_matches"] = page["totalResults"]
        except (ScimHttpError, TransientConnectorError) as exc:
            return TestConnectionResponse(success=False, message=str(exc), details=details)
        except ConfigurationError as exc:
            return TestConnectionResponse(success=False, message=str(exc), details=details)
        return TestConnectionResponse(
            success=True, details=details,
            message=f"connected to {settings.base_url}: {details['users']} users, {details['groups']} groups")

    # -- sync --

    def sync(self, request: SyncRequest) -> SyncResponse:
        settings = ScimSettings.parse(request.config, request.auth_config)
        if request.cursor:
            state = SyncCursor.decode(request.cursor)
        else:
            since = None
            if request.incremental and request.last_sync_at is not None:
                since = _since(request.last_sync_at, settings.incremental_overlap)
            state = SyncCursor(since=since)
        response = SyncResponse(success=True)
        try:
            with ScimClient(settings) as client:
                finished = self._chunk(client, settings, state, request, response)
        except ScimHttpError as exc:
            return SyncResponse(success=False, error=str(exc))
        if not finished:
            response.has_more = True
            response.next_cursor = state.encode()
        response.total_estimate = state.estimate()
        return response

    def _filter(self, settings: ScimSettings, state: SyncCursor, phase: str) -> str | None:
        base = settings.user_filter if phase == "users" else settings.group_filter
        if state.since and phase not in state.full:
            return _and(base, f"meta.lastModified gt {_literal(state.since)}")
        return base

    def _list(self, client: ScimClient, settings: ScimSettings, state: SyncCursor, phase: str, start_index: int,
              count: int, response: SyncResponse) -> dict[str, Any]:
        """One page of a phase; falls back to a full listing when the server refuses the incremental filter."""
        endpoint = "Users" if phase == "users" else "Groups"
        try:
            return client.list(endpoint, scim_filter=self._filter(settings, state, phase), start_index=start_index,
                               count=count)
        except ScimHttpError as exc:
            if exc.status == 404 and phase == "groups":
                return {"totalResults": 0, "Resources": []}  # a server without Groups: nothing to grant
            if exc.status != 400 or not state.since or phase in state.full:
                raise
            state.full.append(phase)
            state.index = 1 if state.phase == phase else state.index
            state.seen_total = None if state.phase == phase else state.seen_total
            response.record_errors.append(RecordError(
                kind="account" if phase == "users" else "entitlement", location=f"/{endpoint}",
                error=f"the server refused the incremental filter on meta.lastModified ({exc}); "
                      f"all {endpoint.lower()} were listed instead"))
            return client.list(endpoint, scim_filter=self._filter(settings, state, phase),
                               start_index=1 if state.phase == phase else start_index, count=count)

    def _chunk(self, client: ScimClient, settings: ScimSettings, state: SyncCursor, request: SyncRequest,
               response: SyncResponse) -> bool:
        """Fill ``response`` with at most chunk_size resources; True when the run is complete."""
        if state.groups_total is None:
            # For the progress estimate only (one cheap request per run).
            state.groups_total = self._list(client, settings, state, "groups", 1, 0, response)["totalResults"]
        budget = request.chunk_size
        if request.max_records is not None:
            budget = min(budget, request.max_records - state.emitted)
        seen_accounts: set[str] = set()
        seen_groups: set[str] = set()
        known_ids: dict[str, str] = {}
        pending_managers: list[tuple[RemoteIdentity, str]] = []
        while budget > 0:
            page = self._page(client, settings, state, min(settings.page_size, budget), response)
            resources = [r for r in page.get("Resources") or [] if isinstance(r, dict)]
            if state.phase == "users":
                state.users_total = page["totalResults"]
                for resource in resources:
                    self._user(resource, settings, response, seen_accounts, known_ids, pending_managers)
            else:
                for resource in resources:
                    self._group(resource, state, response, seen_groups)
            state.index += len(resources)
            state.emitted += len(resources)
            budget -= len(resources)
            if not resources or state.index > page["totalResults"]:
                if state.phase == "groups":
                    break
                state.phase, state.index, state.seen_total = "groups", 1, None
        self._resolve_managers(client, settings, pending_managers, known_ids, response)
        done = state.phase == "groups" and (budget > 0 or state.index > (state.groups_total or 0))
        if request.max_records is not None and state.emitted >= request.max_records:
            done = True
        return done

    def _page(self, client: ScimClient, settings: ScimSettings, state: SyncCursor, count: int,
              response: SyncResponse) -> dict[str, Any]:
        """The next page; read again from earlier when the listing shrank (see "Paging" above)."""
        page = self._list(client, settings, state, state.phase, state.index, count, response)
        total = page["totalResults"]
        if state.seen_total is not None and total < state.seen_total and state.index > 1:
            state.index = max(1, state.index - (state.seen_total - total))
            page = self._list(client, settings, state, state.phase, state.index, count, response)
            total = page["totalResults"]
        state.seen_total = total
        if state.phase == "groups":
            state.groups_total = total
        return page

    def _user(self, resource: dict[str, Any], settings: ScimSettings, response: SyncResponse, seen: set[str],
              known_ids: dict[str, str], pending_managers: list[tuple[RemoteIdentity, str]]) -> None:
        scim_id = _text(resource.get("id"))
        if scim_id is None:
            response.record_errors.append(RecordError(kind="account", key=_first(resource, ["userName"]),
                                                      location="/Users", error="user without id; skipped"))
            return
        if scim_id in seen:
            return
        seen.add(scim_id)
        mapping = settings.mapping
        external_id = _first(resource, mapping["external_id"])
        username = _first(resource, mapping["username"])
        status = "active" if _active(resource) else "disabled"
        location = f"/Users/{scim_id}"
        values = {name: _first(resource, paths) for name, paths in mapping.items()
                  if name not in ("external_id", "username", "manager")}
        identity = None
        if external_id is None:
            response.record_errors.append(RecordError(
                kind="identity", key=scim_id, location=location,
                error=f"no external id (mapping: {mapping['external_id']}); identity skipped, account kept"))
        else:
            known_ids[scim_id] = external_id
            try:
                identity = RemoteIdentity(external_id=external_id, status=status,
                                          **{k: v for k, v in values.items() if v is not None})
            except ValidationError as exc:
                response.record_errors.append(RecordError(kind="identity", key=external_id[:500], location=location,
                                                          error=_validation_message(exc)))
        if identity is not None:
            response.identities.append(identity)
            manager_id = _first(resource, mapping.get("manager"))
            if manager_id is not None and manager_id != scim_id:
                pending_managers.append((identity, manager_id))
        attributes = {key: value for key, value in (
            ("email", values.get("email")), ("externalId", _text(_get_ci(resource, "externalId"))),
            ("employeeNumber", _text(lookup(resource, f"{ENTERPRISE_SCHEMA}:employeeNumber"))),
            ("displayName", values.get("display_name")),
        ) if value is not None}
        try:
            response.accounts.append(RemoteAccount(
                native_id=scim_id, username=username, status=status,
                identity_external_id=identity.external_id if identity else None, attributes=attributes))
        except ValidationError as exc:
            response.record_errors.append(RecordError(kind="account", key=scim_id[:500], location=location,
                                                      error=_validation_message(exc)))

    def _group(self, resource: dict[str, Any], state: SyncCursor, response: SyncResponse, seen: set[str]) -> None:
        group_id = _text(resource.get("id"))
        if group_id is None:
            response.record_errors.append(RecordError(kind="entitlement", key=_text(resource.get("displayName")),
                                                      location="/Groups", error="group without id; skipped"))
            return
        if group_id in seen:
            return
        seen.add(group_id)
        location = f"/Groups/{group_id}"
        try:
            response.entitlements.append(RemoteEntitlement(
                value=group_id, display_name=_text(_get_ci(resource, "displayName")), type="group",
                description=_text(_get_ci(resource, "description"))))
        except ValidationError as exc:
            response.record_errors.append(RecordError(kind="entitlement", key=group_id[:500], location=location,
                                                      error=_validation_message(exc)))
            return
        state.groups_done += 1
        members: set[str] = set()
        for member in _get_ci(resource, "members") or []:
            value = _text(member.get("value")) if isinstance(member, dict) else None
            if value is None:
                response.record_errors.append(RecordError(kind="grant", key=group_id[:500], location=location,
                                                          error="member without value; skipped"))
                continue
            if str(member.get("type", "")).lower() == "group":
                response.record_errors.append(RecordError(
                    kind="grant", key=f"{value} -> {group_id}"[:500], location=location,
                    error="nested group membership is not supported; skipped"))
                continue
            if value in members:
                continue
            members.add(value)
            response.grants.append(RemoteGrant(entitlement_value=group_id, account_native_id=value))
        state.grants_done += len(members)

    def _resolve_managers(self, client: ScimClient, settings: ScimSettings,
                          pending: list[tuple[RemoteIdentity, str]], known_ids: dict[str, str],
                          response: SyncResponse) -> None:
        """SCIM manager ids -> the managers' external ids, with as few requests as possible."""
        unknown = sorted({manager for _, manager in pending if manager not in known_ids})
        for start in range(0, len(unknown), MANAGER_LOOKUP_BATCH):
            batch = unknown[start:start + MANAGER_LOOKUP_BATCH]
            for resource in self._users_by_id(client, batch):
                scim_id = _text(resource.get("id"))
                external_id = _first(resource, settings.mapping["external_id"])
                if scim_id and external_id:
                    known_ids[scim_id] = external_id
        for identity, manager in pending:
            identity.manager_external_id = known_ids.get(manager)
            if identity.manager_external_id is None:
                response.record_errors.append(RecordError(
                    kind="identity", key=identity.external_id, location=f"manager {manager}",
                    error="manager not found on the SCIM server (or without external id); manager left empty"))

    def _users_by_id(self, client: ScimClient, ids: list[str]) -> Iterator[dict[str, Any]]:
        scim_filter = " or ".join(f"id eq {_literal(i)}" for i in ids)
        try:
            page = client.list("Users", scim_filter=scim_filter, start_index=1, count=len(ids))
            yield from (r for r in page.get("Resources") or [] if isinstance(r, dict))
            return
        except ScimHttpError as exc:
            if exc.status != 400:
                raise
        for scim_id in ids:  # the server cannot filter on id: one GET each
            try:
                yield client.get_json(f"Users/{_path_id(scim_id)}")
            except ScimHttpError as exc:
                if exc.status != 404:
                    raise

    # -- provisioning --

    def provision(self, request: ProvisioningRequest) -> ProvisioningResponse:
        try:
            settings = ScimSettings.parse(request.config, request.auth_config)
        except ConfigurationError as exc:
            return ProvisioningResponse(results=[
                OperationResult(operation_id=op.operation_id, success=False, error=str(exc))
                for op in request.operations])
        handlers = {
            OperationKind.CREATE_ACCOUNT: self._create_account,
            OperationKind.ENABLE_ACCOUNT: lambda c, op: self._set_active(c, op, True),
            OperationKind.DISABLE_ACCOUNT: lambda c, op: self._set_active(c, op, False),
            OperationKind.DELETE_ACCOUNT: self._delete_account,
            OperationKind.ADD_GRANT: self._add_grant,
            OperationKind.REMOVE_GRANT: self._remove_grant,
        }
        results: list[OperationResult] = []
        try:
            client = ScimClient(settings)
        except ConfigurationError as exc:
            return ProvisioningResponse(results=[
                OperationResult(operation_id=op.operation_id, success=False, error=str(exc))
                for op in request.operations])
        with client:
            for op in request.operations:
                try:
                    results.append(handlers[op.kind](client, op))
                except TransientConnectorError as exc:
                    results.append(OperationResult(operation_id=op.operation_id, success=False, error=str(exc),
                                                   retryable=True))
                except (ScimHttpError, InvalidOperation) as exc:
                    results.append(OperationResult(operation_id=op.operation_id, success=False, error=str(exc)))
                except Exception as exc:  # one bad operation must never lose the results of the others
                    results.append(OperationResult(operation_id=op.operation_id, success=False,
                                                   error=f"{exc.__class__.__name__}: {exc}"))
        return ProvisioningResponse(results=results)

    @staticmethod
    def _need(op: ProvisioningOperation, *names: str) -> None:
        missing = [n for n in names if not getattr(op, n)]
        if missing:
            raise InvalidOperation(f"{op.kind.value} needs {' and '.join(missing)}")

    def _create_account(self, client: ScimClient, op: ProvisioningOperation) -> OperationResult:
        identity = op.identity
        username = op.username or (identity.email if identity else None)
        if not username:
            raise InvalidOperation("create_account needs username (or an identity with an email)")
        attributes = dict(op.attributes)
        active = attributes.pop("active", True)
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": username, "active": _truthy(active)}
        if identity is not None:
            body["externalId"] = identity.external_id
            name = {k: v for k, v in (("givenName", identity.first_name), ("familyName", identity.last_name)) if v}
            if name:
                body["name"] = name
            display = identity.display_name or " ".join(name.values()) or None
            if display:
                body["displayName"] = display
            if identity.email:
                body["emails"] = [{"value": identity.email, "type": "work", "primary": True}]
            if identity.title:
                body["title"] = identity.title
            if identity.department:
                body["schemas"].append(ENTERPRISE_SCHEMA)
                body[ENTERPRISE_SCHEMA] = {"department": identity.department}
        for key, value in attributes.items():
            if key not in ("schemas", "id", "meta", "userName"):
                body[key] = value
                if key.startswith("urn:") and key not in body["schemas"]:
                    body["schemas"].append(key)
        try:
            created = _json(client.request("POST", "Users", body=body, ok=(200, 201)), "POST Users")
        except ScimHttpError as exc:
            if exc.status != 409:
                raise
            existing = self._user_by_name(client, username)
            if existing and identity and _text(_get_ci(existing, "externalId")) == identity.external_id:
                # Our own earlier attempt (e.g. a retried POST whose answer was lost): done.
                return OperationResult(operation_id=op.operation_id, success=True,
                                       account_native_id=_text(existing.get("id")))
            owner = f" by SCIM user {existing.get('id')}" if existing else ""
            return OperationResult(operation_id=op.operation_id, success=False,
                                   error=f"userName {username!r} is already taken{owner}")
        scim_id = _text(created.get("id"))
        if scim_id is None:
            raise ScimHttpError("POST Users: the created user has no id")
        return OperationResult(operation_id=op.operation_id, success=True, account_native_id=scim_id)

    def _user_by_name(self, client: ScimClient, username: str) -> dict[str, Any] | None:
        page = client.list("Users", scim_filter=f"userName eq {_literal(username)}", start_index=1, count=1)
        resources = page.get("Resources") or []
        return resources[0] if resources and isinstance(resources[0], dict) else None

    def _set_active(self, client: ScimClient, op: ProvisioningOperation, active: bool) -> OperationResult:
        self._need(op, "account_native_id")
        body = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "active", "value": active}]}
        client.request("PATCH", f"Users/{_path_id(op.account_native_id or '')}", body=body, ok=(200, 204))
        return OperationResult(operation_id=op.operation_id, success=True, account_native_id=op.account_native_id)

    def _delete_account(self, client: ScimClient, op: ProvisioningOperation) -> OperationResult:
        self._need(op, "account_native_id")
        # 404: already gone, which is what was asked.
        client.request("DELETE", f"Users/{_path_id(op.account_native_id or '')}", ok=(200, 204, 404))
        return OperationResult(operation_id=op.operation_id, success=True, account_native_id=op.account_native_id)

    def _is_member(self, client: ScimClient, group_id: str, member_id: str) -> bool | None:
        """True/False when the server can filter on members, None when it cannot tell."""
        scim_filter = f"id eq {_literal(group_id)} and members[value eq {_literal(member_id)}]"
        try:
            page = client.list("Groups", scim_filter=scim_filter, start_index=1, count=1)
        except ScimHttpError as exc:
            if exc.status in (400, 501):
                return None
            raise
        return page["totalResults"] > 0

    def _add_grant(self, client: ScimClient, op: ProvisioningOperation) -> OperationResult:
        self._need(op, "account_native_id", "entitlement_value")
        group_id, member_id = op.entitlement_value or "", op.account_native_id or ""
        if self._is_member(client, group_id, member_id):
            return OperationResult(operation_id=op.operation_id, success=True, account_native_id=member_id)
        body = {"schemas": [PATCH_SCHEMA], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": member_id}]}]}
        client.request("PATCH", f"Groups/{_path_id(group_id)}", body=body, ok=(200, 204))
        return OperationResult(operation_id=op.operation_id, success=True, account_native_id=member_id)

    def _remove_grant(self, client: ScimClient, op: ProvisioningOperation) -> OperationResult:
        self._need(op, "account_native_id", "entitlement_value")
        group_id, member_id = op.entitlement_value or "", op.account_native_id or ""
        body = {"schemas": [PATCH_SCHEMA], "Operations": [
            {"op": "remove", "path": f"members[value eq {_literal(member_id)}]"}]}
        try:
            client.request("PATCH", f"Groups/{_path_id(group_id)}", body=body, ok=(200, 204))
        except ScimHttpError as exc:
            # noTarget: not a member (RFC 7644 §3.5.2.2); 404: no such group. Either way the grant is not there.
            if not (exc.status == 404 or (exc.status == 400 and exc.scim_type == "noTarget")):
                raise
        return OperationResult(operation_id=op.operation_id, success=True, account_native_id=member_id)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
