"""A real OpenLDAP ``slapd`` for tests: started on a free loopback port with a generated directory.

Use the session-scoped ``slapd`` fixture (import it into the test module) or :func:`shared_slapd`.
One server per test process (each xdist worker gets its own), stopped at the end of the session
and, as a safety net, at interpreter exit.

The server: back-mdb in a temporary directory, suffix ``dc=example,dc=test``, the core / cosine /
inetorgperson / nis schemas from /etc/ldap/schema, the ppolicy overlay (its schema gives
``pwdAccountLockedTime``, and a default policy makes a locked account unable to bind), ACLs
that give a service account write access and everyone else read access, and a 500-entry size
limit for non-paged searches (OpenLDAP's default), so a sync that returns more than 500 users
proves it paged. The directory is generated as LDIF and loaded with ``slapadd`` before the
server starts (a second, not minutes).

slapd missing? The test setup installs what it needs: ``apt-get install slapd ldap-utils``
(noninteractive; preseeded so the package sets up no system database or daemon of its own),
as root or through passwordless sudo, under a file lock so parallel workers do not fight over
dpkg. If that is impossible the fixture *fails* with the reason: an LDAP connector whose tests
were silently skipped is an untested LDAP connector.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
import pytest

SUFFIX = "dc=example,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-Secret-7d41"
SERVICE_DN = f"cn=rapidvalue,ou=services,{SUFFIX}"
SERVICE_PW = "svc-Secret-9f2e"
READER_DN = f"cn=reader,ou=services,{SUFFIX}"
READER_PW = "reader-Secret-3a8b"
USER_PW = "user-Secret-51c0"

USERS = 1200
GROUP_COUNT = 30
DEPARTMENTS = ["Engineering", "Sales", "Finance", "HR", "Support", "Marketing"]
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
APT_PACKAGES = ("slapd", "ldap-utils")
INSTALL_LOCK = Path(tempfile.gettempdir()) / "rapidvalue-slapd-install.lock"


def user_dn(index: int) -> str:
    return f"uid=u{index:05d},{PEOPLE}"


def group_dn(index: int) -> str:
    return f"cn=grp-{index:02d},{GROUPS}"


def manager_index(index: int) -> int | None:
    """A tree (i reports to (i-1)//10), plus every 100th+7 reporting to someone read *later* in the run."""
    if index == 0:
        return None
    if index % 100 == 7:
        return USERS - 1 - index // 100
    return (index - 1) // 10


def group_members(group: int) -> list[int]:
    return [i for i in range(USERS) if i % GROUP_COUNT == group]


def unique_names(group: int) -> bool:
    """Every fifth group is a groupOfUniqueNames (uniqueMember) rather than a groupOfNames (member)."""
    return group % 5 == 4


def shouty(dn: str) -> str:
    """The same DN spelled differently (upper case, blanks after commas): it must still join."""
    return ", ".join(part.upper() for part in dn.split(","))


@dataclass(frozen=True)
class Directory:
    """What the generated directory holds, for the assertions."""

    users: int = USERS
    bad_users: tuple[str, ...] = (f"cn=No Identifier,{PEOPLE}", f"uid=toolong,{PEOPLE}")
    groups: tuple[str, ...] = tuple(group_dn(g) for g in range(GROUP_COUNT))
    provisioning_groups: tuple[str, ...] = (f"cn=prov-names,{GROUPS}", f"cn=prov-unique,{GROUPS}")
    memberships: frozenset[tuple[str, str]] = field(default_factory=lambda: frozenset(
        (group_dn(g), user_dn(i)) for g in range(GROUP_COUNT) for i in group_members(g)))
    # Users with a password (for the disable test: a locked account cannot bind).
    with_password: tuple[int, ...] = (10, 11, 12, 13)


def _entry(dn: str, *lines: str) -> str:
    return "\n".join((f"dn: {dn}", *lines)) + "\n\n"


def build_ldif() -> str:
    """The whole directory as LDIF (slapadd adds entryUUID, timestamps and the rest)."""
    directory = Directory()
    out = [
        _entry(SUFFIX, "objectClass: dcObject", "objectClass: organization", "o: Example Test", "dc: example"),
        *(_entry(f"ou={ou},{SUFFIX}", "objectClass: organizationalUnit", f"ou: {ou}")
          for ou in ("people", "groups", "services", "policies")),
        _entry(f"cn=default,ou=policies,{SUFFIX}", "objectClass: device", "objectClass: pwdPolicy", "cn: default",
               "pwdAttribute: userPassword", "pwdLockout: TRUE"),
        _entry(SERVICE_DN, "objectClass: organizationalRole", "objectClass: simpleSecurityObject", "cn: rapidvalue",
               f"userPassword: {SERVICE_PW}"),
        _entry(READER_DN, "objectClass: organizationalRole", "objectClass: simpleSecurityObject", "cn: reader",
               f"userPassword: {READER_PW}"),
    ]
    for i in range(USERS):
        first, last = f"First{i}", f"Last{i}"
        lines = ["objectClass: inetOrgPerson", f"uid: u{i:05d}", f"cn: {first} {last}", f"sn: {last}",
                 f"givenName: {first}", f"displayName: {first} {last}", f"mail: u{i:05d}@example.test",
                 f"employeeNumber: E{i:05d}", f"departmentNumber: {DEPARTMENTS[i % len(DEPARTMENTS)]}",
                 f"title: {'Manager' if i * 10 + 1 < USERS else 'Engineer'}", "l: Brussels"]
        if (manager := manager_index(i)) is not None:
            lines.append(f"manager: {user_dn(manager)}")
        if i in directory.with_password:
            lines.append(f"userPassword: {USER_PW}")
        out.append(_entry(user_dn(i), *lines))
    # Bad entries: no external id at all; an external id longer than the protocol allows (200).
    out.append(_entry(directory.bad_users[0], "objectClass: inetOrgPerson", "cn: No Identifier", "sn: Identifier"))
    out.append(_entry(directory.bad_users[1], "objectClass: inetOrgPerson", "uid: toolong", "cn: Too Long",
                      "sn: Long", f"employeeNumber: {'X' * 250}"))
    for g in range(GROUP_COUNT):
        if unique_names(g):
            members = [f"uniqueMember: {user_dn(i)}" for i in group_members(g)]
            kind = "groupOfUniqueNames"
        else:
            # grp-01 spells its member DNs differently from the entries' own DNs.
            members = [f"member: {shouty(user_dn(i)) if g == 1 else user_dn(i)}" for i in group_members(g)]
            kind = "groupOfNames"
        out.append(_entry(group_dn(g), f"objectClass: {kind}", f"cn: grp-{g:02d}", f"description: Group {g}",
                          *members))
    out.append(_entry(directory.provisioning_groups[0], "objectClass: groupOfNames", "cn: prov-names",
                      f"member: {user_dn(1)}"))
    out.append(_entry(directory.provisioning_groups[1], "objectClass: groupOfUniqueNames", "cn: prov-unique",
                      f"uniqueMember: {user_dn(1)}"))
    return "".join(out)


def slapd_conf(workdir: Path) -> str:
    # Built from dedented text first: in slapd.conf a line starting with a blank continues the previous one.
    includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
    return includes + textwrap.dedent(f"""\
        modulepath /usr/lib/ldap
        moduleload back_mdb
        moduleload ppolicy
        pidfile {workdir}/slapd.pid
        argsfile {workdir}/slapd.args
        sizelimit 500

        database mdb
        suffix "{SUFFIX}"
        rootdn "{ROOT_DN}"
        rootpw {ROOT_PW}
        directory {workdir}/db
        maxsize 268435456
        index objectClass,uid,member,uniqueMember,entryUUID eq
        limits dn.exact="{SERVICE_DN}" size.soft=500 size.hard=500 size.prtotal=unlimited
        overlay ppolicy
        ppolicy_default "cn=default,ou=policies,{SUFFIX}"
        access to attrs=userPassword
            by self write
            by anonymous auth
            by * none
        access to *
            by dn.exact="{SERVICE_DN}" write
            by users read
            by * none
        """)


# --- installing slapd ----------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _as_root() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_slapd() -> str:
    """The path of slapd, installing Debian's package when it is missing; pytest.fail when impossible."""
    if (found := find_binary("slapd")) and find_binary("slapadd"):
        return found
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers: one apt-get at a time
        if (found := find_binary("slapd")) and find_binary("slapadd"):
            return found
        apt_get, root = shutil.which("apt-get"), _as_root()
        if apt_get is None or root is None:
            missing = "no apt-get" if apt_get is None else "not root and no passwordless sudo"
            pytest.fail("OpenLDAP slapd is needed for the LDAP connector tests and is not installed; installing it "
                        f"needs apt-get and root or passwordless sudo ({missing}). "
                        f"Install it: apt-get install -y {' '.join(APT_PACKAGES)}", pytrace=False)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
        if shutil.which("debconf-set-selections"):
            # No system database and no system daemon: the tests run their own slapd.
            subprocess.run([*root, "debconf-set-selections"], input="slapd slapd/no_configuration boolean true\n",
                           text=True, capture_output=True, env=env)
        install = [*root, apt_get, "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
        result = subprocess.run(install, capture_output=True, text=True, env=env)
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run([*root, apt_get, "update", "-q"], capture_output=True, text=True, env=env)
            result = subprocess.run(install, capture_output=True, text=True, env=env)
        found = find_binary("slapd")
        if result.returncode != 0 or found is None or find_binary("slapadd") is None:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            pytest.fail(f"could not install OpenLDAP slapd ({' '.join(install)} exited {result.returncode}):\n{tail}",
                        pytrace=False)
        return found


# --- running it ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlapdServer:
    """One running slapd. ``config()`` / ``auth()`` build connector settings pointing at it."""

    workdir: Path
    port: int = 0
    process: subprocess.Popen | None = None
    directory: Directory = field(default_factory=Directory)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def config(self, **overrides) -> dict:
        return {"url": self.url, "base_dn": SUFFIX, "user_base": PEOPLE, "group_base": GROUPS, **overrides}

    @staticmethod
    def auth(bind_dn: str = SERVICE_DN, password: str = SERVICE_PW) -> dict:
        return {"bind_dn": bind_dn, "password": password}

    def admin(self):
        """An ldap3 connection bound as the rootdn, to arrange and inspect the directory."""
        return ldap3.Connection(ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE), ROOT_DN, ROOT_PW,
                                auto_bind=True, raise_exceptions=True)

    def start(self) -> SlapdServer:
        slapd = ensure_slapd()
        slapadd = find_binary("slapadd")
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.write_text(slapd_conf(self.workdir))
        ldif = self.workdir / "directory.ldif"
        ldif.write_text(build_ldif())
        loaded = subprocess.run([slapadd, "-q", "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True)
        if loaded.returncode != 0:
            pytest.fail(f"slapadd failed ({loaded.returncode}): {loaded.stderr[-2000:]}", pytrace=False)
        log_path = self.workdir / "slapd.log"
        for _attempt in range(5):  # the port could be taken between free_port() and slapd's bind
            self.port = free_port()
            with log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [slapd, "-d", "0", "-h", f"ldap://127.0.0.1:{self.port}/", "-f", str(conf)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait_ready(timeout=15):
                return self
            self.stop(remove=False)
        pytest.fail(f"slapd did not start; its log:\n{log_path.read_text(errors='replace')[-3000:]}", pytrace=False)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def stop(self, remove: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)


_shared: SlapdServer | None = None
_shared_lock = threading.Lock()


def shared_slapd() -> SlapdServer:
    """The process-wide server, started on first use (so two modules importing the fixture share it)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.process is None or _shared.process.poll() is not None:
            server = SlapdServer(workdir=Path(tempfile.mkdtemp(prefix="rv-slapd-")))
            atexit.register(server.stop)
            _shared = server.start()
        return _shared


def stop_shared_slapd() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture(scope="session")
def slapd():
    """A running slapd with the generated directory; stopped when the session ends."""
    yield shared_slapd()
    stop_shared_slapd()
