"""LDAP / Active Directory connector (ldap3): users, groups, memberships; write-back of membership and disable.

Config (non-secret)::

    {"url": "ldaps://dc1.corp.example:636", "base_dn": "dc=corp,dc=example", "flavor": "ad",
     "user_base": "ou=Staff,dc=corp,dc=example", "group_base": "ou=Groups,dc=corp,dc=example",
     "user_filter": "...", "group_filter": "...", "page_size": 500,
     "mapping": {"external_id": ["employeeID", "sAMAccountName"], "department": "department"}}

auth_config (secret): ``{"bind_dn": "...", "password": "..."}``. Optional settings: ``start_tls``,
``tls_verify`` (default true), ``ca_certs_file``, ``timeout`` (seconds), ``extra_attributes`` (copied
into ``RemoteIdentity.attributes``), ``disabled_attribute`` / ``disabled_value`` (OpenLDAP),
``incremental_overlap_seconds``, ``count_entries``; ``authoritative`` is accepted (it belongs to the
connector instance, not to this class, whose capabilities say non-authoritative).

What comes out
    Every user entry gives a RemoteAccount and, when it carries an external id, a RemoteIdentity.
    Every group gives a RemoteEntitlement (value = group DN) and one RemoteGrant per ``member`` /
    ``uniqueMember`` value (account_native_id = member DN). Account native ids and entitlement
    values are *canonical DNs* (attribute types and values lower-cased, blanks around separators
    removed): DN matching is case-insensitive for the naming attributes directories use, and a
    group's member value must equal the member's account native id byte for byte for the sync
    engine to join them, whatever spelling the server or whoever wrote the group used. The DN as
    the server returned it and the entry's entryUUID / objectGUID are kept in ``attributes``. We
    key on the DN rather than the UUID because memberships are DNs: keying on UUIDs would need one
    lookup per membership. A rename therefore shows up as a new account plus a deleted one.
    A user without an external id (or with one the protocol refuses) is reported in
    ``record_errors`` and its identity skipped; its account is still emitted, unlinked, because an
    account nobody owns is exactly what orphan detection is for. A ``manager`` DN is resolved to
    the manager's external id: from a per-run cache of the entries already read, else by a
    base-scope read of that DN (negative results cached too).

Paging and the cursor
    Each chunk is read with the Simple Paged Results control (RFC 2696, criticality true so a
    server without it fails loudly instead of hitting its size limit) in pages of ``page_size``.
    A paged-results cookie is only valid on the connection that produced it (OpenLDAP keeps the
    state per connection; AD per server), and the dispatcher makes a new connector object per
    call, so the live state -- bound connection, current cookie, rest of the current page, the
    DN -> external id cache -- is kept in a module-level session cache keyed by
    ``connector_business_id`` plus a random run token. Sessions are closed at the end of the run,
    and evicted (unbound) after 15 minutes idle or when more than 64 are open.

    ``next_cursor`` is base64(JSON) and self-sufficient for a restart without the live session:
    run token, chunk sequence number, phase (``users`` then ``groups``), entries done, the
    canonical DN of the last entry emitted (the *anchor*), the incremental lower bound pinned at
    the start of the run, and counters for the progress estimate. It does not carry the paged
    cookie: no other connection could use it. When a call arrives with a cursor whose session is
    gone (worker restart, another process, eviction) or whose sequence number is not the session's
    (a chunk retried with an older cursor), the phase's search is re-run on a new connection and
    entries are skipped up to and including the anchor. That relies on a repeated search returning
    entries in the same relative order, which holds for OpenLDAP back-mdb (entry-id order) and in
    practice for AD; if the anchor itself has disappeared, the phase restarts from its first entry.
    Either way nothing is missed -- at worst records are sent twice, which the sync engine merges
    idempotently -- and deletions stay safe because the engine only deletes after a full run. The
    fallback costs a re-read of the phase up to the anchor, so it is for the exception (the sync
    runner pulls every chunk of a run from one process, which keeps the live path).

    ``chunk_size`` counts directory entries: a chunk holds at most that many users or groups. A
    group's memberships travel with the group, so a chunk can hold more grants than
    ``chunk_size`` when groups are large; memory stays bounded by chunk_size entries, one page and
    the per-run DN -> external id cache (at most 100k DNs).
    ``total_estimate`` (for progress) comes from an attribute-less count of users and groups at
    the start of a run (``count_entries``, default true), plus memberships extrapolated from the
    groups read so far.

Incremental
    With ``incremental`` and ``last_sync_at``, both filters get ``(modifyTimestamp>=T)`` on
    OpenLDAP and ``(whenChanged>=T)`` on AD, T being last_sync_at minus
    ``incremental_overlap_seconds`` (default 60, to absorb clock skew between RapidValue and the
    directory; records sent twice are harmless). whenChanged is per domain controller (like
    uSNChanged, which would also need the highest USN stored per DC); point incremental runs at
    one DC. A group whose membership changed has a new timestamp, so it comes back with all its
    current members. Deletions are never visible incrementally: the periodic full sync finds them.

Disable / enable (write-back)
    AD: bit 2 (ACCOUNTDISABLE) of ``userAccountControl``, read-modify-write. OpenLDAP has no
    standard "disabled" flag; by default we use the ppolicy overlay's ``pwdAccountLockedTime``
    set to ``000001010000Z`` (permanent administrative lock: binds fail; the overlay must be
    loaded for the attribute to exist). Directories without ppolicy can set ``disabled_attribute``
    and ``disabled_value`` (e.g. ``employeeType`` / ``disabled``): disabling adds that value,
    enabling removes it, and an account reads as disabled when the value is present. For
    ``pwdAccountLockedTime`` any value means disabled (a temporary lockout also shows as disabled).
    Membership write-back modifies the group's ``member`` (``uniqueMember`` for
    groupOfUniqueNames) with MODIFY_ADD / MODIFY_DELETE. Every operation is idempotent (adding an
    existing member or removing an absent one succeeds, verified with an LDAP compare when the
    server refuses) and gets its own OperationResult; one failure never stops the others.

AD notes: ``member`` ranges (more than 1500 values) are followed by ldap3's ``auto_range``;
membership through ``primaryGroupID`` (Domain Users) is not in ``member`` and is not reported;
nested groups appear as grants whose account_native_id is a group DN.

Pure Python plus ldap3: no Django import (this also runs inside the on-premises agent). The bind
password never appears in a message, a cursor, an exception text or a log line from here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError, LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
from ldap3.utils.dn import parse_dn
from pydantic import ValidationError

from ..base import ConfigurationError, Connector, register
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

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
AD_ACCOUNTDISABLE = 0x2
PPOLICY_LOCK_ATTRIBUTE = "pwdAccountLockedTime"
PPOLICY_PERMANENT_LOCK = "000001010000Z"

# LDAP result codes we act on.
RC_SUCCESS = 0
RC_COMPARE_FALSE = 5
RC_COMPARE_TRUE = 6
RC_SIZE_LIMIT_EXCEEDED = 4
RC_UNAVAILABLE_CRITICAL_EXTENSION = 12
RC_NO_SUCH_OBJECT = 32
RC_INVALID_CREDENTIALS = 49
RC_BUSY = 51
RC_UNAVAILABLE = 52
RC_OBJECT_CLASS_VIOLATION = 65
TRANSIENT_CODES = {RC_BUSY, RC_UNAVAILABLE, 3, 11, 80}  # timeLimitExceeded, adminLimitExceeded, other

FLAVORS = ("openldap", "ad")
DEFAULT_USER_FILTER = {"openldap": "(objectClass=inetOrgPerson)", "ad": "(&(objectClass=user)(objectCategory=person))"}
DEFAULT_GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
DEFAULT_MAPPING: dict[str, dict[str, list[str]]] = {
    "openldap": {
        "external_id": ["employeeNumber", "uid"], "username": ["uid"], "email": ["mail"],
        "first_name": ["givenName"], "last_name": ["sn"], "display_name": ["displayName", "cn"],
        "department": ["departmentNumber"], "title": ["title"], "location": ["l"], "manager": ["manager"],
        "uuid": ["entryUUID"],
    },
    "ad": {
        "external_id": ["employeeID", "employeeNumber", "sAMAccountName"], "username": ["sAMAccountName"],
        "email": ["mail"], "first_name": ["givenName"], "last_name": ["sn"], "display_name": ["displayName", "cn"],
        "department": ["department"], "title": ["title"], "location": ["l"], "manager": ["manager"],
        "uuid": ["objectGUID"],
    },
}
# Identity fields a mapping may also set (not mapped by default: their values must fit the engine's choices).
OPTIONAL_MAPPED = ("employment_type", "start_date", "end_date")
MAPPABLE = (*DEFAULT_MAPPING["openldap"], *OPTIONAL_MAPPED)
CONFIG_KEYS = {
    "url", "base_dn", "user_base", "group_base", "user_filter", "group_filter", "flavor", "mapping", "page_size",
    "extra_attributes", "disabled_attribute", "disabled_value", "start_tls", "tls_verify", "ca_certs_file",
    "timeout", "incremental_overlap_seconds", "count_entries", "authoritative",
}
_ATTRIBUTE_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")

SESSION_IDLE_SECONDS = 15 * 60
MAX_SESSIONS = 64
MAX_DN_CACHE = 100_000  # DN -> external id per live session: about 25 MB at most
# RemoteIdentity.external_id's limit: a longer id is a record error, and no manager reference resolves to it.
EXTERNAL_ID_MAX = next(m.max_length for m in RemoteIdentity.model_fields["external_id"].metadata
                       if getattr(m, "max_length", None))


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LdapSettings:
    """Validated config + auth_config. ``repr`` hides the password (it may end up in a traceback)."""

    url: str
    host: str
    port: int
    use_ssl: bool
    base_dn: str
    user_base: str
    group_base: str
    user_filter: str
    group_filter: str
    flavor: str
    mapping: dict[str, list[str]]
    extra_attributes: list[str]
    page_size: int
    disabled_attribute: str
    disabled_value: str
    start_tls: bool
    tls_verify: bool
    ca_certs_file: str | None
    timeout: int
    incremental_overlap: int
    count_entries: bool
    bind_dn: str
    password: str = field(repr=False)

    @property
    def disabled_by_presence(self) -> bool:
        """ppolicy's lock attribute means "locked" whatever its value; a marker attribute needs its value."""
        return self.disabled_attribute.lower() == PPOLICY_LOCK_ATTRIBUTE.lower()

    def fingerprint(self) -> str:
        """Identifies who/where a live session is bound to, without keeping the password around."""
        material = json.dumps([self.url, self.bind_dn, self.password, self.base_dn, self.user_base,
                               self.group_base, self.user_filter, self.group_filter, self.flavor,
                               self.page_size, self.mapping, self.extra_attributes, self.disabled_attribute,
                               self.disabled_value], sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    @classmethod
    def parse(cls, config: dict, auth_config: dict) -> LdapSettings:
        if not isinstance(config, dict) or not isinstance(auth_config, dict):
            raise ConfigurationError("config and auth_config must be objects")
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigurationError(f"config has unknown keys: {unknown}; allowed: {sorted(CONFIG_KEYS)}")

        flavor = config.get("flavor", "openldap")
        if flavor not in FLAVORS:
            raise ConfigurationError(f"config.flavor must be one of {list(FLAVORS)}")

        url = config.get("url")
        if not isinstance(url, str) or not url:
            raise ConfigurationError("config.url is required (ldap://host:389 or ldaps://host:636)")
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ConfigurationError("config.url must look like ldap://host[:port] or ldaps://host[:port]")
        try:
            port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        except ValueError:
            raise ConfigurationError("config.url has an invalid port") from None
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise ConfigurationError("config.url must be only scheme, host and port (no path, query or user)")

        base_dn = _dn_setting(config, "base_dn", required=True)
        user_base = _dn_setting(config, "user_base") or base_dn
        group_base = _dn_setting(config, "group_base") or base_dn
        user_filter = _filter_setting(config, "user_filter", DEFAULT_USER_FILTER[flavor])
        group_filter = _filter_setting(config, "group_filter", DEFAULT_GROUP_FILTER)

        mapping = {name: list(attrs) for name, attrs in DEFAULT_MAPPING[flavor].items()}
        overrides = config.get("mapping", {})
        if not isinstance(overrides, dict):
            raise ConfigurationError("config.mapping must be an object of field -> attribute (or list of attributes)")
        unknown_fields = sorted(set(overrides) - set(MAPPABLE))
        if unknown_fields:
            raise ConfigurationError(f"config.mapping has unknown fields: {unknown_fields}; allowed: {list(MAPPABLE)}")
        for name, attrs in overrides.items():
            attrs = [attrs] if isinstance(attrs, str) else attrs
            if attrs in ([], None) and name not in ("external_id", "username"):
                mapping.pop(name, None)  # an empty mapping switches an optional field off
                continue
            if not isinstance(attrs, list) or not attrs or not all(_is_attribute(a) for a in attrs):
                raise ConfigurationError(f"config.mapping.{name} must be an attribute name or a non-empty list of them")
            mapping[name] = attrs

        extra = config.get("extra_attributes", [])
        if not isinstance(extra, list) or not all(_is_attribute(a) for a in extra):
            raise ConfigurationError("config.extra_attributes must be a list of attribute names")

        page_size = _int_setting(config, "page_size", 500, 1, 10_000)
        timeout = _int_setting(config, "timeout", 30, 1, 3600)
        overlap = _int_setting(config, "incremental_overlap_seconds", 60, 0, 86_400)

        disabled_attribute = config.get("disabled_attribute", PPOLICY_LOCK_ATTRIBUTE)
        if not _is_attribute(disabled_attribute):
            raise ConfigurationError("config.disabled_attribute must be an attribute name")
        default_value = PPOLICY_PERMANENT_LOCK if disabled_attribute.lower() == PPOLICY_LOCK_ATTRIBUTE.lower() else None
        disabled_value = config.get("disabled_value", default_value)
        if not isinstance(disabled_value, str) or not disabled_value:
            raise ConfigurationError("config.disabled_value is required (a non-empty string) with a "
                                     "disabled_attribute other than pwdAccountLockedTime")

        flags = {}
        for name, default in (("start_tls", False), ("tls_verify", True), ("count_entries", True),
                              ("authoritative", False)):
            flags[name] = config.get(name, default)
            if not isinstance(flags[name], bool):
                raise ConfigurationError(f"config.{name} must be true or false")
        if flags["start_tls"] and parts.scheme == "ldaps":
            raise ConfigurationError("config.start_tls makes no sense with ldaps:// (already TLS)")
        ca_certs_file = config.get("ca_certs_file")
        if ca_certs_file is not None and (not isinstance(ca_certs_file, str) or not ca_certs_file):
            raise ConfigurationError("config.ca_certs_file must be a path")

        bind_dn = auth_config.get("bind_dn")
        if not isinstance(bind_dn, str) or not bind_dn.strip():
            raise ConfigurationError("auth_config.bind_dn is required")
        if flavor == "openldap" or "=" in bind_dn:  # AD also accepts user@domain / DOMAIN\\user
            try:
                parse_dn(bind_dn, strip=True)
            except LDAPInvalidDnError:
                raise ConfigurationError("auth_config.bind_dn is not a valid DN") from None
        password = auth_config.get("password")
        if not isinstance(password, str) or not password:
            # An empty password makes a simple bind "unauthenticated" and many servers accept it.
            raise ConfigurationError("auth_config.password is required (non-empty)")

        return cls(
            url=url, host=parts.hostname, port=port, use_ssl=parts.scheme == "ldaps", base_dn=base_dn,
            user_base=user_base, group_base=group_base, user_filter=user_filter, group_filter=group_filter,
            flavor=flavor, mapping=mapping, extra_attributes=list(extra), page_size=page_size,
            disabled_attribute=disabled_attribute, disabled_value=disabled_value, start_tls=flags["start_tls"],
            tls_verify=flags["tls_verify"], ca_certs_file=ca_certs_file, timeout=timeout,
            incremental_overlap=overlap, count_entries=flags["count_entries"], bind_dn=bind_dn,
            password=password,
        )


def _is_attribute(name: Any) -> bool:
    return isinstance(name, str) and bool(_ATTRIBUTE_NAME.match(name))


def _dn_setting(config: dict, key: str, required: bool = False) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        if required:
            raise ConfigurationError(f"config.{key} is required (e.g. dc=example,dc=com)")
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"config.{key} must be a DN string")
    try:
        parse_dn(value, strip=True)
    except LDAPInvalidDnError:
        raise ConfigurationError(f"config.{key} is not a valid DN: {value!r}") from None
    return value


def _filter_setting(config: dict, key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise ConfigurationError(f"config.{key} must be an LDAP filter string")
    try:
        parse_filter(value, None, True, True, None, False)
    except LDAPInvalidFilterError:
        raise ConfigurationError(f"config.{key} is not a valid LDAP filter: {value!r}") from None
    return value.strip()


def _int_setting(config: dict, key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"config.{key} must be an integer from {low} to {high}")
    return value


# --- helpers -------------------------------------------------------------------------------------


class LdapFailure(Exception):
    """An LDAP problem described for a human; never carries the password."""

    def __init__(self, message: str, code: int | None = None, transient: bool = False):
        super().__init__(message)
        self.code = code
        self.transient = transient


def canonical_dn(dn: str) -> str:
    """One spelling per DN (see module docstring), so member values and entry DNs compare equal."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError:
        return dn.strip().lower()
    return "".join(f"{attr}={value}{sep}" for attr, value, sep in parts).lower()


def _scrub(text: str, secret: str | None) -> str:
    """Belt and braces: whatever a library put in a message, the password does not leave here."""
    if secret:
        text = text.replace(secret, "***")
    return text


def _describe(result: dict | None) -> str:
    result = result or {}
    text = str(result.get("description") or "error")
    if result.get("message"):
        text += f" ({str(result['message']).strip()})"
    return text


def _values(entry: dict, attribute: str) -> list[str]:
    """Attribute values as text, from the raw bytes so the result does not depend on schema loading."""
    raw = entry.get("raw_attributes", {}).get(attribute) or []
    if isinstance(raw, bytes | str):
        raw = [raw]
    out = []
    for value in raw:
        if isinstance(value, bytes):
            if attribute.lower() == "objectguid" and len(value) == 16:
                out.append(str(uuid.UUID(bytes_le=value)))
                continue
            value = value.decode("utf-8", errors="replace")
        text = str(value).strip()
        if text:
            out.append(text)
    return out


def _first(entry: dict, attributes: list[str]) -> str | None:
    for attribute in attributes:
        values = _values(entry, attribute)
        if values:
            return values[0]
    return None


def _external_id(entry: dict, settings: LdapSettings) -> str | None:
    """The entry's external id when it is one the protocol accepts (what a manager reference resolves to)."""
    value = _first(entry, settings.mapping["external_id"])
    return value if value is not None and len(value) <= EXTERNAL_ID_MAX else None


def _ldap_time(moment: datetime, flavor: str) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    stamp = moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    return f"{stamp}.0Z" if flavor == "ad" else f"{stamp}Z"


def _and(*filters: str | None) -> str:
    present = [f for f in filters if f]
    return present[0] if len(present) == 1 else "(&" + "".join(present) + ")"


# --- cursor and live sessions -------------------------------------------------------------------


@dataclass
class SyncCursor:
    """What ``next_cursor`` carries (base64 JSON); enough to restart a phase without the live session."""

    token: str
    seq: int = 0
    phase: str = "users"
    done_in_phase: int = 0
    anchor: str | None = None
    emitted: int = 0
    since: str | None = None
    users_total: int | None = None
    groups_total: int | None = None
    grants_done: int = 0

    def encode(self) -> str:
        payload = {"v": 1, "tok": self.token, "seq": self.seq, "phase": self.phase, "n": self.done_in_phase,
                   "anchor": self.anchor, "t": self.emitted, "since": self.since, "u": self.users_total,
                   "g": self.groups_total, "gr": self.grants_done}
        return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, cursor: str) -> SyncCursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            if data.get("v") != 1 or data["phase"] not in ("users", "groups"):
                raise ValueError("unknown cursor version or phase")
            return cls(token=str(data["tok"]), seq=int(data["seq"]), phase=data["phase"],
                       done_in_phase=int(data["n"]), anchor=data.get("anchor"), emitted=int(data["t"]),
                       since=data.get("since"), users_total=data.get("u"), groups_total=data.get("g"),
                       grants_done=int(data.get("gr", 0)))
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ConfigurationError("invalid LDAP sync cursor (start a new sync without a cursor)") from None


class PagedReader:
    """One paged subtree search, read entry by entry; holds at most one page in memory."""

    def __init__(self, conn: Connection, base: str, search_filter: str, attributes: list[str], page_size: int):
        self.conn = conn
        self.base = base
        self.filter = search_filter
        self.attributes = attributes
        self.page_size = page_size
        self.cookie: bytes | None = None
        self.buffer: deque[dict] = deque()
        self.started = False
        self.exhausted = False

    def _fetch(self) -> None:
        self.conn.search(self.base, self.filter, SUBTREE, attributes=self.attributes, paged_size=self.page_size,
                         paged_cookie=self.cookie, paged_criticality=True)
        result = self.conn.result or {}
        code = result.get("result")
        if code != RC_SUCCESS:
            hint = ""
            if code == RC_SIZE_LIMIT_EXCEEDED:
                hint = "; the bind account's paged-search total is limited (OpenLDAP: limits size.prtotal=unlimited)"
            elif code == RC_UNAVAILABLE_CRITICAL_EXTENSION:
                hint = "; the server does not support the simple paged results control"
            elif code == RC_NO_SUCH_OBJECT:
                hint = f"; search base {self.base!r} does not exist"
            raise LdapFailure(f"search under {self.base} failed: {_describe(result)}{hint}", code,
                              transient=code in TRANSIENT_CODES)
        self.started = True
        cookie = result.get("controls", {}).get(PAGED_RESULTS_OID, {}).get("value", {}).get("cookie")
        self.cookie = cookie or None
        self.exhausted = not cookie
        self.buffer.extend(r for r in self.conn.response or [] if r.get("type") == "searchResEntry")

    def next(self) -> dict | None:
        while not self.buffer:
            if self.started and self.exhausted:
                return None
            self._fetch()
        return self.buffer.popleft()

    @property
    def finished(self) -> bool:
        return self.started and self.exhausted and not self.buffer

    def skip_past(self, anchor: str, seen: Callable[[dict], None] | None = None) -> bool:
        """Consume entries up to and including the one whose canonical DN is ``anchor``; False if absent.

        ``seen`` gets every skipped entry (to refill the manager cache without extra reads).
        """
        while (entry := self.next()) is not None:
            if seen is not None:
                seen(entry)
            if canonical_dn(entry["dn"]) == anchor:
                return True
        return False


@dataclass
class LiveSession:
    key: str
    fingerprint: str
    conn: Connection
    seq: int
    reader: PagedReader | None = None
    dn_ids: OrderedDict[str, str | None] = field(default_factory=OrderedDict)
    last_used: float = field(default_factory=time.monotonic)

    def remember(self, dn: str, external_id: str | None) -> None:
        self.dn_ids[dn] = external_id
        self.dn_ids.move_to_end(dn)
        while len(self.dn_ids) > MAX_DN_CACHE:
            self.dn_ids.popitem(last=False)

    def close(self) -> None:
        with contextlib.suppress(LDAPException):
            self.conn.unbind()


_sessions: dict[str, LiveSession] = {}
_sessions_lock = threading.Lock()


def _checkout(key: str, fingerprint: str, seq: int) -> LiveSession | None:
    """Take the live session out of the cache (a session is used by one call at a time)."""
    stale: list[LiveSession] = []
    with _sessions_lock:
        now = time.monotonic()
        for other_key, other in list(_sessions.items()):
            if now - other.last_used > SESSION_IDLE_SECONDS:
                stale.append(_sessions.pop(other_key))
        session = _sessions.pop(key, None)
    for old in stale:
        old.close()
    if session is not None and (session.fingerprint != fingerprint or session.seq != seq):
        session.close()  # retried chunk or changed settings: its paged state is not where the cursor is
        return None
    return session


def _checkin(session: LiveSession) -> None:
    session.last_used = time.monotonic()
    evicted: list[LiveSession] = []
    with _sessions_lock:
        previous = _sessions.pop(session.key, None)
        if previous is not None:
            evicted.append(previous)
        _sessions[session.key] = session
        while len(_sessions) > MAX_SESSIONS:
            oldest = min(_sessions, key=lambda k: _sessions[k].last_used)
            evicted.append(_sessions.pop(oldest))
    for old in evicted:
        old.close()


def close_all_sessions() -> None:
    """Unbind every cached connection (tests, shutdown)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()


# --- the connector ------------------------------------------------------------------------------


@register
class LdapConnector(Connector):
    type = "ldap"
    local_only_config = ("url", "start_tls", "tls_verify", "ca_certs_file")
    capabilities: ClassVar[Capabilities] = Capabilities(
        sync_identities=True, sync_accounts=True, sync_entitlements=True, sync_grants=True, incremental=True,
        paging=True, authoritative=False,
        operations=[OperationKind.ADD_GRANT, OperationKind.REMOVE_GRANT, OperationKind.DISABLE_ACCOUNT,
                    OperationKind.ENABLE_ACCOUNT],
    )

    @classmethod
    def validate_config(cls, config: dict, auth_config: dict) -> None:
        LdapSettings.parse(config, auth_config)

    # -- connection --

    def _connect(self, settings: LdapSettings) -> Connection:
        """Open and bind a connection; raises LdapFailure with a message fit for a user."""
        tls = Tls(validate=ssl.CERT_REQUIRED if settings.tls_verify else ssl.CERT_NONE,
                  ca_certs_file=settings.ca_certs_file)
        server = Server(settings.host, port=settings.port, use_ssl=settings.use_ssl, tls=tls, get_info=NONE,
                        connect_timeout=settings.timeout)
        conn = Connection(server, user=settings.bind_dn, password=settings.password, auto_bind=False,
                          receive_timeout=settings.timeout, raise_exceptions=False, auto_range=True,
                          read_only=False, return_empty_attributes=False, auto_referrals=False)
        try:
            conn.open()
            if settings.start_tls and not conn.start_tls():
                raise LdapFailure(f"StartTLS with {settings.url} failed: {_describe(conn.result)}", transient=True)
            if not conn.bind():
                code = (conn.result or {}).get("result")
                reason = "invalid credentials" if code == RC_INVALID_CREDENTIALS else _describe(conn.result)
                raise LdapFailure(f"bind as {settings.bind_dn} failed: {reason}", code,
                                  transient=code in TRANSIENT_CODES)
        except LDAPException as exc:
            _safe_unbind(conn)
            raise LdapFailure(f"cannot connect to {settings.url}: {_scrub(str(exc), settings.password)}",
                              transient=True) from None
        except LdapFailure:
            _safe_unbind(conn)
            raise
        return conn

    # -- test connection --

    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        try:
            settings = LdapSettings.parse(request.config, request.auth_config)
        except ConfigurationError as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        try:
            conn = self._connect(settings)
        except LdapFailure as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        try:
            conn.search(settings.base_dn, "(objectClass=*)", BASE, attributes=["objectClass"])
            code = (conn.result or {}).get("result")
            if code == RC_NO_SUCH_OBJECT:
                return TestConnectionResponse(success=False, message=f"base_dn {settings.base_dn} does not exist")
            if code != RC_SUCCESS or not conn.response:
                return TestConnectionResponse(
                    success=False, message=f"cannot read base_dn {settings.base_dn}: {_describe(conn.result)}")
            # The bind DN is part of the write-only credentials (and, on an agent, never leaves the premises).
            details: dict[str, Any] = {"base_dn": settings.base_dn}
            conn.search("", "(objectClass=*)", BASE, attributes=["supportedControl", "vendorName", "vendorVersion"])
            if conn.result.get("result") == RC_SUCCESS and conn.response:
                root = conn.response[0]
                details["paged_results"] = PAGED_RESULTS_OID in _values(root, "supportedControl")
                vendor = " ".join(_values(root, "vendorName") + _values(root, "vendorVersion"))
                if vendor:
                    details["vendor"] = vendor
            return TestConnectionResponse(success=True, details=details,
                                          message="bound with the configured credentials; base_dn readable")
        except LDAPException as exc:
            return TestConnectionResponse(success=False, message=_scrub(f"LDAP error: {exc}", settings.password))
        finally:
            _safe_unbind(conn)

    # -- sync --

    def _attributes(self, settings: LdapSettings, phase: str) -> list[str]:
        if phase == "groups":
            return ["cn", "description", "objectClass", "member", "uniqueMember"]
        wanted = {a for attrs in settings.mapping.values() for a in attrs} | set(settings.extra_attributes)
        wanted.add("userAccountControl" if settings.flavor == "ad" else settings.disabled_attribute)
        return sorted(wanted)

    def _filter(self, settings: LdapSettings, phase: str, since: str | None) -> str:
        base_filter = settings.user_filter if phase == "users" else settings.group_filter
        stamp = "whenChanged" if settings.flavor == "ad" else "modifyTimestamp"
        return _and(base_filter, f"({stamp}>={since})" if since else None)

    def _reader(self, conn: Connection, settings: LdapSettings, phase: str, since: str | None) -> PagedReader:
        base = settings.user_base if phase == "users" else settings.group_base
        return PagedReader(conn, base, self._filter(settings, phase, since), self._attributes(settings, phase),
                           settings.page_size)

    def _count(self, conn: Connection, settings: LdapSettings, phase: str, since: str | None) -> int:
        base = settings.user_base if phase == "users" else settings.group_base
        reader = PagedReader(conn, base, self._filter(settings, phase, since), ["1.1"], settings.page_size)
        count = 0
        while reader.next() is not None:
            count += 1
        return count

    def _open_session(self, key: str, settings: LdapSettings, state: SyncCursor) -> LiveSession:
        conn = self._connect(settings)
        session = LiveSession(key=key, fingerprint=settings.fingerprint(), conn=conn, seq=state.seq)
        try:
            if settings.count_entries and state.users_total is None:
                state.users_total = self._count(conn, settings, "users", state.since)
                state.groups_total = self._count(conn, settings, "groups", state.since)
            session.reader = self._reader(conn, settings, state.phase, state.since)
            seen = partial(self._remember_user, session, settings) if state.phase == "users" else None
            if state.anchor and not session.reader.skip_past(state.anchor, seen):
                # The anchor entry is gone: replay the phase from its start (duplicates merge; nothing lost).
                session.reader = self._reader(conn, settings, state.phase, state.since)
        except BaseException:
            session.close()
            raise
        return session

    @staticmethod
    def _remember_user(session: LiveSession, settings: LdapSettings, entry: dict) -> None:
        session.remember(canonical_dn(entry["dn"]), _external_id(entry, settings))

    def sync(self, request: SyncRequest) -> SyncResponse:
        settings = LdapSettings.parse(request.config, request.auth_config)
        if request.cursor:
            state = SyncCursor.decode(request.cursor)
        else:
            since = None
            if request.incremental and request.last_sync_at is not None:
                since = _ldap_time(request.last_sync_at - timedelta(seconds=settings.incremental_overlap),
                                   settings.flavor)
            state = SyncCursor(token=secrets.token_urlsafe(12), since=since)
        key = f"{request.connector_business_id}/{state.token}"
        session = _checkout(key, settings.fingerprint(), state.seq)
        try:
            if session is None:
                session = self._open_session(key, settings, state)
            response, finished = self._chunk(session, settings, state, request)
        except LdapFailure as exc:
            if session is not None:
                session.close()
            return SyncResponse(success=False, error=_scrub(str(exc), settings.password))
        except LDAPException as exc:
            if session is not None:
                session.close()
            return SyncResponse(success=False,
                                error=_scrub(f"LDAP error from {settings.url}: {exc}", settings.password))
        except BaseException:
            if session is not None:
                session.close()
            raise
        if finished:
            session.close()
        else:
            state.seq += 1
            session.seq = state.seq
            _checkin(session)
            response.has_more = True
            response.next_cursor = state.encode()
        response.total_estimate = self._estimate(state)
        return response

    @staticmethod
    def _estimate(state: SyncCursor) -> int | None:
        if state.users_total is None or state.groups_total is None:
            return None
        groups_done = state.done_in_phase if state.phase == "groups" else 0
        per_group = state.grants_done / groups_done if groups_done else 0
        remaining_grants = int(max(state.groups_total - groups_done, 0) * per_group)
        return 2 * state.users_total + state.groups_total + state.grants_done + remaining_grants

    def _chunk(self, session: LiveSession, settings: LdapSettings, state: SyncCursor,
               request: SyncRequest) -> tuple[SyncResponse, bool]:
        response = SyncResponse(success=True)
        budget = request.chunk_size
        if request.max_records is not None:
            budget = min(budget, request.max_records - state.emitted)
        pending_managers: list[tuple[RemoteIdentity, str]] = []
        finished = False
        while True:
            if budget <= 0:
                finished = request.max_records is not None and state.emitted >= request.max_records
                break
            entry = session.reader.next()
            if entry is None:
                if state.phase == "groups":
                    finished = True
                    break
                state.phase, state.done_in_phase, state.anchor = "groups", 0, None
                session.reader = self._reader(session.conn, settings, "groups", state.since)
                continue
            dn = canonical_dn(entry["dn"])
            if state.phase == "users":
                self._user(entry, dn, settings, session, response, pending_managers)
            else:
                state.grants_done += self._group(entry, dn, response)
            state.done_in_phase += 1
            state.emitted += 1
            state.anchor = dn
            budget -= 1
        if not finished and state.phase == "groups" and session.reader.finished:
            finished = True
        self._resolve_managers(session, settings, pending_managers)
        return response, finished

    def _user(self, entry: dict, dn: str, settings: LdapSettings, session: LiveSession, response: SyncResponse,
              pending_managers: list[tuple[RemoteIdentity, str]]) -> None:
        mapping = settings.mapping
        if settings.flavor == "ad":
            try:
                flags = int(_first(entry, ["userAccountControl"]) or 0)
            except ValueError:
                flags = 0
            disabled = bool(flags & AD_ACCOUNTDISABLE)
        else:
            values = _values(entry, settings.disabled_attribute)
            disabled = bool(values) if settings.disabled_by_presence else any(
                v.lower() == settings.disabled_value.lower() for v in values)
        external_id = _first(entry, mapping["external_id"])
        entry_uuid = _first(entry, mapping["uuid"]) if "uuid" in mapping else None

        identity: RemoteIdentity | None = None
        if external_id is None:
            response.record_errors.append(RecordError(
                kind="identity", key=None, location=entry["dn"],
                error=f"no external id: none of {', '.join(mapping['external_id'])} is set"))
        else:
            fields: dict[str, Any] = {"external_id": external_id, "status": "suspended" if disabled else "active"}
            for name in ("email", "first_name", "last_name", "display_name", "department", "title", "location",
                         *OPTIONAL_MAPPED):
                if name in mapping:
                    fields[name] = _first(entry, mapping[name])
            attributes: dict[str, Any] = {"dn": entry["dn"]}
            for attribute in settings.extra_attributes:
                values = _values(entry, attribute)
                if values:
                    attributes[attribute] = values[0] if len(values) == 1 else values
            try:
                identity = RemoteIdentity(**fields, attributes=attributes)
            except ValidationError as exc:
                first = exc.errors()[0]
                response.record_errors.append(RecordError(
                    kind="identity", key=external_id[:200], location=entry["dn"],
                    error=f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"))
                external_id = None
        session.remember(dn, identity.external_id if identity else None)
        if identity is not None:
            response.identities.append(identity)
            manager = _first(entry, mapping["manager"]) if "manager" in mapping else None
            if manager:
                pending_managers.append((identity, canonical_dn(manager)))

        try:
            response.accounts.append(RemoteAccount(
                native_id=dn, username=_first(entry, mapping["username"]),
                status="disabled" if disabled else "active", identity_external_id=external_id,
                attributes={"dn": entry["dn"], "uuid": entry_uuid}))
        except ValidationError as exc:
            first = exc.errors()[0]
            response.record_errors.append(RecordError(
                kind="account", key=dn[:500], location=entry["dn"],
                error=f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"))

    def _group(self, entry: dict, dn: str, response: SyncResponse) -> int:
        try:
            response.entitlements.append(RemoteEntitlement(
                value=dn, display_name=_first(entry, ["cn"]) or entry["dn"], type="group",
                description=_first(entry, ["description"])))
        except ValidationError as exc:
            response.record_errors.append(RecordError(kind="entitlement", key=dn[:500], location=entry["dn"],
                                                      error=str(exc.errors()[0]["msg"])))
            return 0
        grants = 0
        for member in _values(entry, "member") + _values(entry, "uniqueMember"):
            member_dn = canonical_dn(member)
            if len(member_dn) > 500:
                response.record_errors.append(RecordError(kind="grant", key=member_dn[:500], location=entry["dn"],
                                                          error="member DN longer than 500 characters"))
                continue
            response.grants.append(RemoteGrant(entitlement_value=dn, account_native_id=member_dn))
            grants += 1
        return grants

    def _resolve_managers(self, session: LiveSession, settings: LdapSettings,
                          pending: list[tuple[RemoteIdentity, str]]) -> None:
        """Manager DN -> the manager's external id: cached entries first, else one base read per DN."""
        for identity, manager_dn in pending:
            if manager_dn not in session.dn_ids:
                session.conn.search(manager_dn, "(objectClass=*)", BASE, attributes=settings.mapping["external_id"])
                found = None
                if (session.conn.result or {}).get("result") == RC_SUCCESS and session.conn.response:
                    found = _first(session.conn.response[0], settings.mapping["external_id"])
                session.remember(manager_dn, found)
            identity.manager_external_id = session.dn_ids[manager_dn]
            if identity.manager_external_id is None:
                identity.attributes["manager_dn"] = manager_dn

    # -- provisioning --

    def provision(self, request: ProvisioningRequest) -> ProvisioningResponse:
        try:
            settings = LdapSettings.parse(request.config, request.auth_config)
        except ConfigurationError as exc:
            return ProvisioningResponse(results=[
                OperationResult(operation_id=op.operation_id, success=False, error=str(exc))
                for op in request.operations])
        results: list[OperationResult] = []
        conn: Connection | None = None
        connect_error: LdapFailure | None = None
        try:
            for op in request.operations:
                if op.kind not in self.capabilities.operations:
                    results.append(OperationResult(operation_id=op.operation_id, success=False,
                                                   error=f"ldap connector does not support {op.kind.value}"))
                    continue
                if conn is None and connect_error is None:
                    try:
                        conn = self._connect(settings)
                    except LdapFailure as exc:
                        connect_error = exc
                if connect_error is not None:
                    results.append(OperationResult(operation_id=op.operation_id, success=False,
                                                   error=str(connect_error), retryable=connect_error.transient))
                    continue
                try:
                    self._operation(conn, settings, op)
                    results.append(OperationResult(operation_id=op.operation_id, success=True,
                                                   account_native_id=op.account_native_id))
                except LdapFailure as exc:
                    results.append(OperationResult(operation_id=op.operation_id, success=False,
                                                   error=_scrub(str(exc), settings.password),
                                                   retryable=exc.transient))
                except LDAPException as exc:
                    # A broken connection: report this one as retryable and reconnect for the next.
                    results.append(OperationResult(operation_id=op.operation_id, success=False, retryable=True,
                                                   error=_scrub(f"LDAP error: {exc}", settings.password)))
                    _safe_unbind(conn)
                    conn = None
        finally:
            if conn is not None:
                _safe_unbind(conn)
        return ProvisioningResponse(results=results)

    def _operation(self, conn: Connection, settings: LdapSettings, op: ProvisioningOperation) -> None:
        if not op.account_native_id:
            raise LdapFailure(f"{op.kind.value} needs account_native_id (the account's DN)")
        account_dn = op.account_native_id
        if op.kind in (OperationKind.ADD_GRANT, OperationKind.REMOVE_GRANT):
            if not op.entitlement_value:
                raise LdapFailure(f"{op.kind.value} needs entitlement_value (the group's DN)")
            self._membership(conn, op.entitlement_value, account_dn, add=op.kind == OperationKind.ADD_GRANT)
        else:
            self._set_disabled(conn, settings, account_dn, disable=op.kind == OperationKind.DISABLE_ACCOUNT)

    @staticmethod
    def _read(conn: Connection, dn: str, attributes: list[str], what: str) -> dict:
        conn.search(dn, "(objectClass=*)", BASE, attributes=attributes)
        code = (conn.result or {}).get("result")
        if code == RC_NO_SUCH_OBJECT or (code == RC_SUCCESS and not conn.response):
            raise LdapFailure(f"{what} {dn} does not exist", code)
        if code != RC_SUCCESS:
            raise LdapFailure(f"cannot read {what} {dn}: {_describe(conn.result)}", code,
                              transient=code in TRANSIENT_CODES)
        return conn.response[0]

    def _membership(self, conn: Connection, group_dn: str, member_dn: str, add: bool) -> None:
        group = self._read(conn, group_dn, ["objectClass"], "group")
        classes = {c.lower() for c in _values(group, "objectClass")}
        attribute = "uniqueMember" if "groupofuniquenames" in classes else "member"
        if add:
            self._read(conn, member_dn, ["1.1"], "account")  # no dangling members (OpenLDAP would accept them)
        change = MODIFY_ADD if add else MODIFY_DELETE
        if conn.modify(group_dn, {attribute: [(change, [member_dn])]}):
            return
        code = (conn.result or {}).get("result")
        failure = _describe(conn.result)
        if code != RC_NO_SUCH_OBJECT:
            # Idempotence: already a member / already not one is success. Servers differ in how they say
            # so (OpenLDAP 20 / 16, AD 68 / 53), so the actual state decides, by an LDAP compare.
            is_member = conn.compare(group_dn, attribute, member_dn)
            if (conn.result or {}).get("result") in (RC_COMPARE_FALSE, RC_COMPARE_TRUE) and is_member == add:
                return
        if code == RC_OBJECT_CLASS_VIOLATION and not add:
            failure += f"; {group_dn} cannot lose its last {attribute} (groupOfNames needs one)"
        action = "add" if add else "remove"
        raise LdapFailure(f"cannot {action} {member_dn} {'to' if add else 'from'} {group_dn}: {failure}", code,
                          transient=code in TRANSIENT_CODES)

    def _set_disabled(self, conn: Connection, settings: LdapSettings, account_dn: str, disable: bool) -> None:
        action = "disable" if disable else "enable"
        if settings.flavor == "ad":
            entry = self._read(conn, account_dn, ["userAccountControl"], "account")
            try:
                flags = int(_first(entry, ["userAccountControl"]) or 0)
            except ValueError:
                raise LdapFailure(f"{account_dn} has a non-numeric userAccountControl") from None
            wanted = flags | AD_ACCOUNTDISABLE if disable else flags & ~AD_ACCOUNTDISABLE
            if wanted == flags:
                return
            changes = {"userAccountControl": [(MODIFY_REPLACE, [str(wanted)])]}
        else:
            attribute, value = settings.disabled_attribute, settings.disabled_value
            entry = self._read(conn, account_dn, [attribute], "account")
            present = _values(entry, attribute)
            if settings.disabled_by_presence:
                if disable and present == [value]:
                    return
                if not disable and not present:
                    return
                # Replace, not add: a temporary lockout time becomes a permanent lock.
                changes = {attribute: [(MODIFY_REPLACE, [value]) if disable else (MODIFY_DELETE, [])]}
            else:
                has_value = any(v.lower() == value.lower() for v in present)
                if has_value == disable:
                    return
                changes = {attribute: [(MODIFY_ADD if disable else MODIFY_DELETE, [value])]}
        if conn.modify(account_dn, changes):
            return
        code = (conn.result or {}).get("result")
        raise LdapFailure(f"cannot {action} {account_dn}: {_describe(conn.result)}", code,
                          transient=code in TRANSIENT_CODES)


def _safe_unbind(conn: Connection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(LDAPException):
        conn.unbind()
