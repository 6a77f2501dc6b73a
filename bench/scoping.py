"""Benchmark: identity lists, a manager's scoped list and effective access, over HTTP, at tenant scale.

Builds a tenant ``bench`` of 100k identities (a manager tree of depth 10), 200 applications,
200k accounts, 10k entitlements, 500 roles and 2M grants with PostgreSQL ``COPY``, starts the
API under gunicorn and measures, through the API over HTTP (one keep-alive httpx client,
sequential requests):

  (a) ``GET /api/v1/identities?limit=50``               as the tenant admin (sees everyone)
  (b) ``GET /api/v1/identities?limit=50``               as a manager high in the tree (depth 1)
  (c) ``GET /api/v1/identities/{id}/access``            as admin, for identities holding many grants

and prints p50, p95, p99 and max per line against the target (p99 under 50 ms).

Run from the repository root (PostgreSQL and Redis running, ``DATABASE_URL``/``REDIS_URL`` as for
the application)::

    .venv/bin/python bench/scoping.py                  # full size (about 2 minutes of generation)
    .venv/bin/python bench/scoping.py --scale 0.05     # quick run
    .venv/bin/python bench/scoping.py --keep           # keep the tenant; then --reuse skips generation

Exit status: 0 when every line meets its target, 1 when a target is missed, 2 when a
correctness check fails (a non-200 answer, or the manager's total is not their subtree + self).
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rapidvalue.settings")
# The API server and this process must share the signing key: --explain replays server-issued tokens.
os.environ.setdefault("SECRET_KEY", "bench-only-" + "k" * 40)

DEFAULT_TENANT = "bench"
ADMIN_EMAIL = "admin@bench.example"
ADMIN_PASSWORD = "bench-Admin-passw0rd"
MANAGER_EMAIL = "manager@bench.example"
MANAGER_PASSWORD = "bench-Manager-passw0rd"
TOKEN_MAX_AGE = 600  # seconds; access tokens live 15 minutes, log in again well before that

FULL = {
    "identities": 100_000,
    "depth": 10,
    "applications": 200,
    "accounts": 200_000,
    "entitlements": 10_000,
    "roles": 500,
    "grants": 2_000_000,
}

# --------------------------------------------------------------------------------------------
# Realistic vocabulary (deterministic choices from a seeded random.Random)
# --------------------------------------------------------------------------------------------


def _words(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


FIRST_NAMES = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
    "Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra "
    "Mark Margaret Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Carol Kevin "
    "Amanda Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Jason Sharon Edward Laura Jeffrey "
    "Cynthia Ryan Dorothy Jacob Amy Gary Kathleen Nicholas Angela Eric Shirley Jonathan Emma Stephen Brenda "
    "Larry Pamela Justin Nicole Scott Anna Brandon Samantha Benjamin Katherine Samuel Christine Gregory Debra "
    "Alexander Rachel Patrick Carolyn Frank Janet Raymond Maria Jack Olivia Dennis Heather Jerry Helen Tyler "
    "Catherine Aaron Diane Jose Julie Adam Victoria Nathan Joyce Henry Lauren Zachary Kelly Douglas Christina "
    "Peter Ruth Kyle Joan Noah Virginia Ethan Judith Jeremy Evelyn Walter Hannah Christian Andrea Keith Megan "
    "Roger Cheryl Terry Jacqueline Austin Madison Sean Teresa Gerald Abigail Carl Sophia Harold Martha Dylan "
    "Sara Arthur Gloria Lawrence Janice Jordan Kathryn Jesse Ann Bryan Isabella Billy Judy Bruce Charlotte "
    "Gabriel Julia Joe Grace Logan Amber Alan Alice Juan Jean Albert Denise Willie Frances Elijah Danielle "
    "Wayne Marilyn Randy Natalie Vincent Beverly Mason Diana Roy Brittany Ralph Theresa Bobby Kayla Russell "
    "Alexis Bradley Doris Philip Lori Eugene Tiffany Aisha Wei Mei Hiroshi Yuki Priya Arjun Fatima Omar "
    "Lars Ingrid Sven Astrid Pierre Amelie Luca Giulia Mateo Lucia Diego Camila Kwame Ama Chidi Ngozi"
)

LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall "
    "Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes "
    "Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard "
    "Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price "
    "Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell "
    "Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton "
    "Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar "
    "Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells "
    "Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez "
    "Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone "
    "Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan "
    "Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Hansen Peters Santos Hart Bradley Knight "
    "Yamamoto Tanaka Suzuki Wang Zhang Liu Singh Kumar Sharma Okafor Mensah Larsen Johansson Dubois Rossi"
)

DEPARTMENTS = [
    "Engineering", "Sales", "Marketing", "Finance", "Human Resources", "Legal", "Customer Support",
    "Operations", "Information Technology", "Security", "Product Management", "Research & Development",
    "Procurement", "Facilities", "Data & Analytics", "Quality Assurance", "Supply Chain", "Manufacturing",
    "Corporate Communications", "Business Development", "Compliance", "Internal Audit", "Treasury",
    "Customer Success",
]

IC_TITLES = {
    "Engineering": ["Software Engineer", "Site Reliability Engineer", "Frontend Engineer", "Backend Engineer"],
    "Sales": ["Account Executive", "Sales Development Representative", "Sales Engineer"],
    "Marketing": ["Marketing Specialist", "Content Strategist", "Campaign Manager"],
    "Finance": ["Financial Analyst", "Accountant", "Payroll Specialist"],
    "Human Resources": ["HR Business Partner", "Recruiter", "HR Generalist"],
    "Legal": ["Counsel", "Paralegal", "Contracts Manager"],
    "Customer Support": ["Support Agent", "Support Engineer", "Escalation Specialist"],
    "Information Technology": ["Systems Administrator", "Service Desk Analyst", "Network Engineer"],
    "Security": ["Security Analyst", "Security Engineer", "IAM Engineer"],
    "Data & Analytics": ["Data Analyst", "Data Engineer", "Data Scientist"],
}
GENERIC_IC_TITLES = ["Analyst", "Specialist", "Associate", "Coordinator", "Consultant"]
LEVEL_TITLES = [
    "Chief Executive Officer", "Executive Vice President", "Senior Vice President", "Vice President",
    "Senior Director", "Director", "Senior Manager", "Manager", "Team Lead",
]
LOCATIONS = [
    ("New York, US", 14), ("San Francisco, US", 10), ("Austin, US", 8), ("Chicago, US", 6), ("Toronto, CA", 5),
    ("London, UK", 10), ("Dublin, IE", 5), ("Berlin, DE", 6), ("Paris, FR", 5), ("Amsterdam, NL", 4),
    ("Warsaw, PL", 4), ("Bangalore, IN", 9), ("Singapore, SG", 4), ("Tokyo, JP", 3), ("Sydney, AU", 3),
    ("Sao Paulo, BR", 3), ("Remote", 8),
]
STATUSES = [("active", 94), ("suspended", 2), ("terminated", 3), ("pending", 1)]
ACCOUNT_STATUSES = [("active", 93), ("disabled", 5), ("deleted", 2)]
EMPLOYMENT_TYPES = [("employee", 85), ("contractor", 10), ("intern", 2), ("temporary", 2), ("other", 1)]

APP_BASE_NAMES = _words(
    "Active Directory|Entra ID|Okta|Workday|SAP S/4HANA|Oracle E-Business Suite|Salesforce|ServiceNow|"
    "Microsoft 365|Google Workspace|Slack|Zoom|GitHub|GitLab|Jira|Confluence|AWS|Google Cloud|Azure|"
    "Snowflake|Tableau|Power BI|Databricks|Coupa|Concur|NetSuite|HubSpot|Marketo|Zendesk|Box|Dropbox|"
    "DocuSign|Adobe Creative Cloud|Figma|Miro|Splunk|Datadog|PagerDuty|CrowdStrike|Palo Alto Prisma|"
    "CyberArk|HashiCorp Vault|Kubernetes|Jenkins|Artifactory|SonarQube|Epic EHR|Cerner|Temenos|Murex|"
    "Bloomberg Terminal|Kronos|ADP|SuccessFactors|Ariba|Veeva|Guidewire|Mainframe RACF|Oracle Database|"
    "PostgreSQL Fleet|File Share NAS",
    sep="|",
)
APP_VARIANTS = ["", " EU", " US", " APAC", " Sandbox", " Staging", " DR", " Legacy"]
APP_KINDS = ["directory", "saas", "database", "file share", "erp", "cloud", "mainframe"]
ENT_WORDS = ["Readers", "Writers", "Admins", "Operators", "Approvers", "Auditors", "Developers", "Support",
             "Finance", "Payroll", "Reporting", "Billing", "Deploy", "Owners", "Guests", "Analysts"]
ENT_TYPES = [("group", 55), ("permission", 25), ("license", 8), ("role", 10), ("other", 2)]
RISKS = [("low", 60), ("medium", 25), ("high", 12), ("critical", 3)]
ROLE_FUNCTIONS = ["Analyst", "Engineer", "Administrator", "Approver", "Auditor", "Operator", "Lead",
                  "Contributor", "Reviewer", "Power User", "Support", "Specialist"]


_CUMULATIVE: dict[int, tuple[list, list[float]]] = {}


def weighted(rng: random.Random, pairs):
    """One value of ``pairs`` [(value, weight), ...] at random, in proportion to its weight."""
    key = id(pairs)
    if key not in _CUMULATIVE:
        _CUMULATIVE[key] = ([v for v, _ in pairs], list(itertools.accumulate(w for _, w in pairs)))
    values, cumulative = _CUMULATIVE[key]
    return values[bisect_left(cumulative, rng.random() * cumulative[-1])]


def uuid_hex(rng: random.Random) -> str:
    """A version-4 UUID as 32 hex digits, from the seeded generator (PostgreSQL accepts this form)."""
    value = rng.getrandbits(128)
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)
    value = (value & ~(0xF000 << 64)) | (4 << 76)
    return f"{value:032x}"


def coprime_step(rng: random.Random, n: int) -> int:
    """A step coprime to n: (start + j * step) % n for j < n visits n distinct values."""
    if n <= 2:
        return 1
    while True:
        step = rng.randrange(1, n)
        if math.gcd(step, n) == 1:
            return step


# --------------------------------------------------------------------------------------------
# Settings and small helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    identities: int
    depth: int
    applications: int
    accounts: int
    entitlements: int
    roles: int
    grants: int


@dataclass
class Timing:
    rows: list[tuple[str, int, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str, rows_ref: list[int] | None = None):
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        rows = rows_ref[0] if rows_ref else 0
        self.rows.append((name, rows, elapsed))
        if rows_ref is None:
            print(f"  {name:<44} {'':>16} {elapsed:>8.2f} s", flush=True)
        else:
            rate = f"{rows / elapsed:>10,.0f} rows/s" if elapsed > 0 else ""
            print(f"  {name:<44} {rows:>11,} rows {elapsed:>8.2f} s {rate}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply every default size (e.g. 0.05 for a quick run).")
    for name in FULL:
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"Override the size ({'depth of the manager tree' if name == 'depth' else 'rows'};"
                            f" full: {FULL[name]:,}).")
    parser.add_argument("--requests", type=int, default=300, help="Measured requests per endpoint (default 300).")
    parser.add_argument("--warmup", type=int, default=20, help="Unmeasured requests per endpoint first (default 20).")
    parser.add_argument("--access-identities", type=int, default=50,
                        help="How many grant-heavy identities (c) cycles through (default 50).")
    parser.add_argument("--max-offset", type=int, default=1000, help="Random offsets for (a)/(b) go up to this.")
    parser.add_argument("--target-ms", type=float, default=50.0, help="p99 target in milliseconds (default 50).")
    parser.add_argument("--series-timeout", type=float, default=600.0,
                        help="Stop a series after this many seconds and report what was measured (default 600).")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2).")
    parser.add_argument("--seed", type=int, default=20261128, help="Seed of the data generator.")
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help="Slug of the benchmark tenant (default bench).")
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark tenant afterwards.")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse the bench tenant if it exists with data (skip generation); implies --keep.")
    parser.add_argument("--no-migrate", action="store_true", help="Skip migrate_schemas (already migrated).")
    parser.add_argument("--explain", action="store_true",
                        help="Afterwards, replay one request per endpoint in-process and print EXPLAIN (ANALYZE, "
                        "BUFFERS) of its slowest SQL statements.")
    args = parser.parse_args(argv)
    if args.reuse:
        args.keep = True
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    def size(name: str, minimum: int) -> int:
        explicit = getattr(args, name)
        if explicit is not None:
            return explicit
        if name == "depth":
            return FULL["depth"]
        return max(minimum, round(FULL[name] * args.scale))

    sizes = Sizes(
        identities=size("identities", 50), depth=size("depth", 1), applications=size("applications", 5),
        accounts=size("accounts", 10), entitlements=size("entitlements", 20), roles=size("roles", 10),
        grants=size("grants", 100),
    )
    if sizes.identities < sizes.depth + 2:
        raise SystemExit(f"--identities must be at least depth + 2 = {sizes.depth + 2}")
    if sizes.entitlements < sizes.applications:
        raise SystemExit("--entitlements must be at least --applications")
    return sizes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Tenant
# --------------------------------------------------------------------------------------------


def prepare_tenant(args: argparse.Namespace):
    """Return (tenant, reused): the bench tenant, recreated unless --reuse finds it with data."""
    from django.db import connection
    from django_tenants.utils import tenant_context

    from identities.models import Identity
    from rapidvalue.tenancy.models import Tenant, schema_name_for
    from rapidvalue.tenancy.services import delete_tenant, provision_tenant

    slug = args.tenant
    connection.set_schema_to_public()
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is not None and args.reuse:
        with tenant_context(tenant):
            has_data = Identity.objects.exists()
        if has_data:
            print(f"reusing tenant '{slug}' (schema {tenant.schema_name}); generation skipped")
            return tenant, True
    if tenant is not None:
        started = time.perf_counter()
        delete_tenant(tenant)
        print(f"deleted the previous tenant '{slug}' in {time.perf_counter() - started:.1f} s")
    schema = schema_name_for(slug)
    with connection.cursor() as cursor:  # leftovers of an interrupted run: a schema without tenant
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if cursor.fetchone():
            cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # migrate_schemas prints every migration
        result = provision_tenant(slug, name="Benchmark", admin_email=ADMIN_EMAIL,
                                  admin_password=ADMIN_PASSWORD)
    print(f"provisioned tenant '{slug}' (schema {result.tenant.schema_name}) "
          f"in {time.perf_counter() - started:.1f} s")
    return result.tenant, False


def lift_rate_limit(tenant) -> None:
    from rapidvalue.tenancy.models import Tenant

    Tenant.objects.filter(pk=tenant.pk).update(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000)


# --------------------------------------------------------------------------------------------
# Data generation with COPY
# --------------------------------------------------------------------------------------------


class Loader:
    """COPY rows into the tenant's tables through Django's connection (psycopg 3 cursor)."""

    def __init__(self, schema: str):
        from django.db import connection

        self.schema = schema
        self.connection = connection
        self.connection.ensure_connection()

    def execute(self, sql: str, params=None):
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def copy(self, table: str, columns: list[str], rows) -> int:
        extra_columns, extra_values = self.defaults_for_missing(table, columns)
        names = ", ".join([*columns, *extra_columns])
        sql = f'COPY "{self.schema}"."{table}" ({names}) FROM STDIN'
        count = 0
        with self.connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
            write = copy.write_row
            if extra_values:
                for row in rows:
                    write(row + extra_values)
                    count += 1
            else:
                for row in rows:
                    write(row)
                    count += 1
        return count

    def defaults_for_missing(self, table: str, columns: list[str]) -> tuple[list[str], tuple]:
        """NOT NULL columns without a database default that this script does not know (added by a
        later migration) get their model field's default, so the benchmark survives additive
        migrations; a column without a default stops the run with a clear message."""
        from django.apps import apps

        missing = [name for (name,) in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' "
            "AND NOT (column_name = ANY(%s)) ORDER BY ordinal_position",
            [self.schema, table, columns],
        )]
        if not missing:
            return [], ()
        model = next((m for m in apps.get_models(include_auto_created=True) if m._meta.db_table == table), None)
        fields = {f.column: f for f in model._meta.concrete_fields} if model else {}
        values = []
        for name in missing:
            field = fields.get(name)
            if field is None or not field.has_default():
                raise SystemExit(f"bench/scoping.py does not fill the NOT NULL column {table}.{name}, which has "
                                 "no default: add it to the generator")
            value = field.get_default()
            values.append(json.dumps(value) if isinstance(value, dict | list) else value)
            print(f"  note: {table}.{name} is not generated; every row gets its default {value!r}")
        return missing, tuple(values)

    @contextlib.contextmanager
    def without_secondary_indexes(self, tables: list[str], timing: Timing):
        """Drop secondary indexes, unique and foreign-key constraints; rebuild them after the load.

        One sorted index build and one set-based FK validation per constraint are much faster than
        maintaining eight indexes and running foreign-key triggers for each of millions of rows.
        """
        saved_indexes: list[str] = []
        saved_constraints: list[tuple[str, str, str]] = []  # (table, name, definition), FKs last
        for table in tables:
            qualified = f'"{self.schema}"."{table}"'
            for name, definition, _kind in self.execute(
                "SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype IN ('u', 'f') ORDER BY contype DESC, conname",
                [qualified],
            ):
                saved_constraints.append((table, name, definition))
            for (definition,) in self.execute(
                "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "WHERE i.indrelid = %s::regclass AND NOT i.indisprimary "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) "
                "ORDER BY 1",
                [qualified],
            ):
                saved_indexes.append(definition)
        for table, name, _definition in sorted(saved_constraints, key=lambda c: c[2].startswith("UNIQUE")):
            self.execute(f'ALTER TABLE "{self.schema}"."{table}" DROP CONSTRAINT "{name}"')
        for definition in saved_indexes:
            index_name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0]
            self.execute(f'DROP INDEX "{self.schema}".{index_name}')
        yield
        label = f"  + {len(saved_indexes)} indexes, {len(saved_constraints)} unique/FK constraints"
        with timing.step(label):
            self.execute("SET maintenance_work_mem = '512MB'")
            for definition in saved_indexes:
                self.execute(definition)
            # Unique constraints before foreign keys.
            for table, name, definition in sorted(saved_constraints,
                                                  key=lambda c: not c[2].startswith("UNIQUE")):
                self.execute(f'ALTER TABLE "{self.schema}"."{table}" ADD CONSTRAINT "{name}" {definition}')
            self.execute("RESET maintenance_work_mem")


@dataclass
class Generated:
    identity_ids: list[str]
    identity_depths: list[int]


def level_sizes(total: int, depth: int, top: int) -> list[int]:
    """Sizes of levels 0..depth: one root, ``top`` executives under it, then a constant growth factor.

    With 100k identities, depth 10 and 8 executives each executive leads about 12.5k people.
    """
    top = max(1, min(top, total - depth))
    rest = total - 1 - top  # people in levels 2..depth
    lo, hi = 1.0, float(total)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(top * mid**k for k in range(1, depth)) < rest:
            lo = mid
        else:
            hi = mid
    sizes = [1, top] + [max(1, round(top * lo**k)) for k in range(1, depth)]
    sizes[-1] = max(1, total - sum(sizes[:-1]))
    while sum(sizes) > total:  # rounding overshoot on tiny trees
        for k in range(depth - 1, 1, -1):
            if sizes[k] > 1 and sum(sizes) > total:
                sizes[k] -= 1
    return sizes[: depth + 1]


def generate(tenant, sizes: Sizes, seed: int, timing: Timing) -> None:
    rng = random.Random(seed)
    loader = Loader(tenant.schema_name)
    now = datetime.now(UTC).replace(microsecond=0)
    stamps = [(now - timedelta(seconds=rng.randrange(3 * 365 * 86400))).isoformat() for _ in range(4096)]
    recent = [(now - timedelta(seconds=rng.randrange(365 * 86400))).isoformat() for _ in range(4096)]
    today = date.today()

    # ---------------- identities: a tree of exactly `depth` levels below one root ----------------
    levels = level_sizes(sizes.identities, sizes.depth, top=max(2, min(8, sizes.identities // 12_500)))
    ids: list[str] = []
    paths: list[str] = []
    depths: list[int] = []
    ext_ids: list[str] = []
    parents: list[int] = []
    departments: list[str] = []
    level_members: list[list[int]] = []
    for depth, count in enumerate(levels):
        members = []
        previous = level_members[depth - 1] if depth else []
        # Upper levels are balanced (every executive and senior leader has a similar span),
        # deeper levels pick a random manager (spans vary, some leaders have no reports).
        balanced = rng.sample(previous, len(previous)) if depth <= 3 else []
        for position in range(count):
            index = len(ids)
            if not previous:
                parent = -1
            elif balanced:
                parent = balanced[position % len(balanced)]
            else:
                parent = previous[rng.randrange(len(previous))]
            ident = uuid_hex(rng)
            ids.append(ident)
            paths.append((paths[parent] if parent >= 0 else "") + ident + "/")
            depths.append(depth)
            ext_ids.append(f"E{index + 1:07d}")
            parents.append(parent)
            if depth == 0:
                departments.append("Executive Office")
            elif depth <= 2 or rng.random() < 0.08:
                departments.append(rng.choice(DEPARTMENTS))
            else:
                departments.append(departments[parent])
            members.append(index)
        level_members.append(members)
    assert all(p.count("/") - 1 == d for p, d in zip(paths, depths, strict=True))
    identity_columns = [
        "id", "external_id", "email", "first_name", "last_name", "display_name", "department", "title",
        "location", "employment_type", "status", "start_date", "end_date", "manager_id", "manager_external_id",
        "path", "depth", "attributes", "created_at", "updated_at",
    ]

    cost_centers = {dept: f"CC{1100 + 37 * k}" for k, dept in enumerate(DEPARTMENTS)}

    def identity_rows():
        for i, ident in enumerate(ids):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            depth = depths[i]
            dept = departments[i]
            if depth < len(LEVEL_TITLES) - 1 or (depth == len(LEVEL_TITLES) - 1 and depth < sizes.depth):
                title = LEVEL_TITLES[min(depth, len(LEVEL_TITLES) - 1)]
                if 2 <= depth <= 5:
                    title = f"{title}, {dept}"
            else:
                base = rng.choice(IC_TITLES.get(dept, GENERIC_IC_TITLES))
                title = f"Senior {base}" if rng.random() < 0.3 else base
            status = weighted(rng, STATUSES) if depth > 1 else "active"
            start = today - timedelta(days=rng.randrange(30, 15 * 365))
            end = (today - timedelta(days=rng.randrange(1, 400))) if status == "terminated" else None
            if end is not None and end < start:
                end = start + timedelta(days=30)
            parent = parents[i]
            created = stamps[i & 4095]
            attributes = json.dumps({"cost_center": cost_centers.get(dept, "CC1000"), "badge": f"B{i + 100000}"})
            yield (
                ident, ext_ids[i], f"{first}.{last}.{i + 1}@bench.example".lower(), first, last,
                f"{first} {last}", dept, title, weighted(rng, LOCATIONS), weighted(rng, EMPLOYMENT_TYPES),
                status, start.isoformat(), end.isoformat() if end else None,
                ids[parent] if parent >= 0 else None, ext_ids[parent] if parent >= 0 else "",
                paths[i], depth, attributes, created, created,
            )

    n = [0]
    with loader.without_secondary_indexes(["identities_identity"], timing), timing.step("identities_identity", n):
        n[0] = loader.copy("identities_identity", identity_columns, identity_rows())

    # Owners come from the middle of the tree (depth 3..8), never from depth 0-2, so the manager
    # measured in (b) owns nothing and sees exactly their subtree.
    owner_pool = [i for i, d in enumerate(depths) if 3 <= d <= 8] or list(range(len(ids)))

    # ---------------- applications and their owners ----------------
    app_names = [base + variant for variant in APP_VARIANTS for base in APP_BASE_NAMES]
    while len(app_names) < sizes.applications:
        app_names.extend(f"{base} Instance {len(app_names) + k}" for k, base in enumerate(APP_BASE_NAMES))
    app_names = app_names[: sizes.applications]
    app_ids = [uuid_hex(rng) for _ in app_names]
    app_codes = ["".join(ch for ch in name.lower() if ch.isalnum())[:12] + f"{k}" for k, name in enumerate(app_names)]
    n = [0]
    with timing.step("access_application", n):
        n[0] = loader.copy(
            "access_application", ["id", "name", "description", "kind", "created_at"],
            ((app_ids[k], name, f"{name}: governed by RapidValue.", rng.choice(APP_KINDS), stamps[k & 4095])
             for k, name in enumerate(app_names)),
        )
    n = [0]
    with timing.step("access_application_owners", n):
        n[0] = loader.copy(
            "access_application_owners", ["application_id", "identity_id"],
            ((app_ids[k], ids[owner]) for k in range(len(app_ids))
             for owner in rng.sample(owner_pool, min(len(owner_pool), rng.choice((1, 1, 2, 3))))),
        )

    # ---------------- entitlements (power-law spread over applications) ----------------
    weights = [rng.paretovariate(1.3) for _ in app_ids]
    total_weight = sum(weights)
    spare = sizes.entitlements - len(app_ids)  # every application has at least one
    per_app = [1 + int(spare * w / total_weight) for w in weights]
    for k in rng.sample(range(len(app_ids)), sizes.entitlements - sum(per_app)):
        per_app[k] += 1
    ent_ids: list[str] = []
    ent_apps: list[int] = []
    app_ents: list[list[int]] = [[] for _ in app_ids]
    for k, count in enumerate(per_app):
        for _ in range(count):
            app_ents[k].append(len(ent_ids))
            ent_ids.append(uuid_hex(rng))
            ent_apps.append(k)

    def entitlement_rows():
        for e, ent in enumerate(ent_ids):
            k = ent_apps[e]
            word = rng.choice(ENT_WORDS)
            dept = rng.choice(DEPARTMENTS)
            code = dept.split()[0].replace("&", "and")
            if e % 3 == 0:  # directory-style group DNs for a third, flat names for the rest
                value = f"CN=GRP-{code}-{word}-{e:05d},OU=Groups,DC=corp,DC=example"
            else:
                value = f"{code.lower()}_{word.lower()}_{e:05d}"
            yield (
                ent, app_ids[k], value, f"{app_names[k]} {dept} {word}", weighted(rng, ENT_TYPES),
                f"{word} access to {app_names[k]} for {dept}.", weighted(rng, RISKS),
                ids[rng.choice(owner_pool)] if rng.random() < 0.7 else None, rng.random() < 0.8,
                stamps[e & 4095],
            )

    entitlement_columns = ["id", "application_id", "value", "display_name", "type", "description", "risk_level",
                           "owner_id", "requestable", "created_at"]
    n = [0]
    with timing.step("access_entitlement", n):
        n[0] = loader.copy("access_entitlement", entitlement_columns, entitlement_rows())

    # ---------------- roles: entitlements, owners, inclusions (a DAG by construction) ----------------
    role_ids = [uuid_hex(rng) for _ in range(sizes.roles)]
    role_names = [f"{rng.choice(DEPARTMENTS)} {rng.choice(ROLE_FUNCTIONS)} {r + 1:04d}" for r in range(sizes.roles)]
    n = [0]
    with timing.step("access_role", n):
        n[0] = loader.copy(
            "access_role", ["id", "name", "description", "requestable", "created_at"],
            ((role_ids[r], role_names[r], f"Business role {role_names[r]}.", rng.random() < 0.7, stamps[r & 4095])
             for r in range(sizes.roles)),
        )

    def role_entitlement_rows():
        for r in range(sizes.roles):
            apps = rng.sample(range(len(app_ids)), min(len(app_ids), rng.randint(1, 3)))
            candidates = [e for k in apps for e in app_ents[k]]
            for e in rng.sample(candidates, min(len(candidates), rng.randint(3, 8))):
                yield role_ids[r], ent_ids[e]

    n = [0]
    with timing.step("access_role_entitlements", n):
        n[0] = loader.copy("access_role_entitlements", ["role_id", "entitlement_id"], role_entitlement_rows())
    n = [0]
    with timing.step("access_role_owners", n):
        n[0] = loader.copy(
            "access_role_owners", ["role_id", "identity_id"],
            ((role_ids[r], ids[o]) for r in range(sizes.roles)
             for o in rng.sample(owner_pool, min(len(owner_pool), rng.choice((1, 1, 2))))),
        )
    order = list(range(sizes.roles))
    rng.shuffle(order)  # a role may only include roles after it in this order: no cycles

    def inclusion_rows():
        for position, parent in enumerate(order[:-1]):
            if rng.random() < 0.3:
                later = order[position + 1:]
                for child in rng.sample(later, min(len(later), rng.choice((1, 1, 2)))):
                    yield role_ids[parent], role_ids[child]

    n = [0]
    with timing.step("access_roleinclusion", n):
        n[0] = loader.copy("access_roleinclusion", ["parent_id", "child_id"], inclusion_rows())

    # ---------------- accounts: ~2 per identity, ~2% orphans ----------------
    account_ids: list[str] = []
    account_apps: list[int] = []
    account_identities: list[int] = []
    app_cum = list(itertools.accumulate(math.sqrt(c) for c in per_app))  # big directories get more accounts

    def account_rows():
        for a in range(sizes.accounts):
            k = min(bisect_left(app_cum, rng.random() * app_cum[-1]), len(app_ids) - 1)
            orphan = rng.random() < 0.02
            i = -1 if orphan else rng.randrange(len(ids))
            ident = uuid_hex(rng)
            account_ids.append(ident)
            account_apps.append(k)
            account_identities.append(i)
            if orphan:
                username = rng.choice(("svc_", "old_", "tmp_", "test_")) + f"{a:06d}"
            else:
                username = f"{rng.choice(FIRST_NAMES)[0]}{rng.choice(LAST_NAMES)}{a}".lower()
            status = weighted(rng, ACCOUNT_STATUSES)
            last_login = None if rng.random() < 0.15 else recent[a & 4095]
            created = stamps[(a * 7) & 4095]
            yield (ident, app_ids[k], None if orphan else ids[i], f"{app_codes[k]}-{a:07d}", username, status,
                   last_login, "{}", created, created)

    account_columns = ["id", "application_id", "identity_id", "native_id", "username", "status", "last_login_at",
                       "attributes", "created_at", "updated_at"]
    n = [0]
    with loader.without_secondary_indexes(["access_account"], timing), timing.step("access_account", n):
        n[0] = loader.copy("access_account", account_columns, account_rows())

    # ---------------- grants ----------------
    # 8% account -> entitlement (sync), 4% identity -> role, the rest identity -> entitlement.
    # Identities have a gamma-distributed appetite (mean ~15 grants); 1% are power users with
    # 150-400, the identities (c) measures. Grants arrive in random order (as syncs deliver them),
    # so an identity's grants are spread over the table. Distinct per holder by a coprime stride.
    n_account = round(sizes.grants * 0.08)
    n_role = round(sizes.grants * 0.04) if sizes.roles else 0
    n_direct = sizes.grants - n_account - n_role
    appetite = [rng.uniform(150, 400) if rng.random() < 0.01 else rng.gammavariate(2.0, 7.5) for _ in ids]
    cum_appetite = list(itertools.accumulate(appetite))
    n_ents = len(ent_ids)
    ent_start = [rng.randrange(n_ents) for _ in ids]
    ent_step = [coprime_step(rng, n_ents) for _ in ids]
    ent_used = [0] * len(ids)
    grant_columns = ["id", "identity_id", "account_id", "entitlement_id", "role_id", "source", "source_reference",
                     "granted_by", "valid_from", "valid_until", "state", "ended_at", "created_at"]
    sources = [("sync", 55), ("direct", 25), ("birthright", 15), ("request", 5)]
    source_values = [s for s, _ in sources]
    source_cum = list(itertools.accumulate(w for _, w in sources))
    granted_by = {"sync": "sync", "direct": ADMIN_EMAIL, "birthright": "policy", "request": "workflow"}

    def state_and_end(created: str):
        roll = rng.random()
        if roll < 0.97:
            return "active", None
        if roll < 0.99:
            return "ended", created
        return "pending", None

    def pick_identity() -> int:
        return min(bisect_left(cum_appetite, rng.random() * cum_appetite[-1]), len(ids) - 1)

    def direct_rows():
        emitted = 0
        while emitted < n_direct:
            i = pick_identity()
            j = ent_used[i]
            if j >= n_ents:
                continue
            ent_used[i] = j + 1
            e = (ent_start[i] + j * ent_step[i]) % n_ents
            source = source_values[bisect_left(source_cum, rng.random() * source_cum[-1])]
            created = stamps[emitted & 4095]
            state, ended = state_and_end(created)
            valid_until = recent[emitted & 4095] if source == "request" and rng.random() < 0.2 else None
            emitted += 1
            yield (uuid_hex(rng), ids[i], None, ent_ids[e], None, source, f"{source}-{emitted % 997}",
                   granted_by[source], None, valid_until, state, ended, created)

    n_roles = len(role_ids)
    role_start = {}
    role_used: dict[int, int] = {}

    def role_rows():
        emitted = 0
        attempts = 0
        while emitted < n_role and attempts < n_role * 20:
            attempts += 1
            i = pick_identity()
            j = role_used.get(i, 0)
            if j >= n_roles:
                continue
            role_used[i] = j + 1
            start, step = role_start.setdefault(i, (rng.randrange(n_roles), coprime_step(rng, n_roles)))
            r = (start + j * step) % n_roles
            source = rng.choice(("direct", "direct", "birthright", "birthright", "request"))
            created = stamps[emitted & 4095]
            state, ended = state_and_end(created)
            emitted += 1
            yield (uuid_hex(rng), ids[i], None, None, role_ids[r], source, f"{source}-{emitted % 997}",
                   granted_by[source], None, None, state, ended, created)

    account_used: dict[int, int] = {}
    account_stride: dict[int, tuple[int, int]] = {}

    def account_grant_rows():
        emitted = 0
        attempts = 0
        while emitted < n_account and attempts < n_account * 20:
            attempts += 1
            a = rng.randrange(len(account_ids))
            pool = app_ents[account_apps[a]]
            j = account_used.get(a, 0)
            if j >= len(pool):
                continue
            account_used[a] = j + 1
            start, step = account_stride.setdefault(a, (rng.randrange(len(pool)), coprime_step(rng, len(pool))))
            e = pool[(start + j * step) % len(pool)]
            created = stamps[emitted & 4095]
            state, ended = state_and_end(created)
            emitted += 1
            yield (uuid_hex(rng), None, account_ids[a], ent_ids[e], None, "sync", f"sync-{account_apps[a]}",
                   "sync", None, None, state, ended, created)

    with loader.without_secondary_indexes(["access_grant"], timing):
        for name, rows in (("identity->entitlement", direct_rows()), ("identity->role", role_rows()),
                           ("account->entitlement", account_grant_rows())):
            n = [0]
            with timing.step(f"access_grant {name}", n):
                n[0] = loader.copy("access_grant", grant_columns, rows)

    # ---------------- statistics and visibility map ----------------
    with timing.step("VACUUM ANALYZE (big) + ANALYZE (rest)"):
        for table in ("identities_identity", "access_account", "access_grant", "access_entitlement"):
            loader.execute(f'VACUUM (ANALYZE) "{tenant.schema_name}"."{table}"')
        for table in ("access_application", "access_application_owners", "access_role", "access_role_owners",
                      "access_role_entitlements", "access_roleinclusion"):
            loader.execute(f'ANALYZE "{tenant.schema_name}"."{table}"')


# --------------------------------------------------------------------------------------------
# Users, selection of the measured principals and identities
# --------------------------------------------------------------------------------------------


@dataclass
class Subjects:
    manager_id: str
    manager_external_id: str
    manager_depth: int
    manager_subtree: int  # including the manager
    identity_count: int
    heavy: list[tuple[str, int]]  # (identity id, grants held)


def pick_subjects(tenant, seed: int, how_many: int) -> Subjects:
    from django_tenants.utils import tenant_context

    from access.models import Application, Entitlement, Grant, Role
    from identities.models import Identity

    rng = random.Random(seed + 1)
    with tenant_context(tenant):
        total = Identity.objects.count()
        best = None
        for identity in Identity.objects.filter(depth=1).only("id", "path", "external_id", "depth"):
            owns = (Application.objects.filter(owners=identity.pk).exists()
                    or Role.objects.filter(owners=identity.pk).exists()
                    or Entitlement.objects.filter(owner=identity.pk).exists())
            if owns:
                continue
            size = Identity.objects.filter(path__startswith=identity.path).count()
            if best is None or size > best[1]:
                best = (identity, size)
        if best is None:
            raise SystemExit("No identity at depth 1 that owns nothing: cannot pick the manager")
        from django.db.models import Count

        top = list(
            Grant.objects.filter(identity__isnull=False).values("identity_id")
            .annotate(n=Count("id")).order_by("-n")[: max(how_many * 20, 200)]
        )
    heavy = rng.sample(top, min(how_many, len(top)))
    return Subjects(
        manager_id=str(best[0].pk), manager_external_id=best[0].external_id, manager_depth=best[0].depth,
        manager_subtree=best[1], identity_count=total,
        heavy=[(str(row["identity_id"]), row["n"]) for row in heavy],
    )


def ensure_users(tenant, subjects: Subjects) -> None:
    from django_tenants.utils import tenant_context

    from rapidvalue.users.models import User

    with tenant_context(tenant):
        admin = User.objects.filter(email=ADMIN_EMAIL).first()
        if admin is None:
            User.objects.create_user(ADMIN_EMAIL, ADMIN_PASSWORD, is_admin=True, is_staff=True)
        else:
            admin.set_password(ADMIN_PASSWORD)
            admin.is_active = admin.is_admin = True
            admin.save()
        User.objects.filter(identity_id=subjects.manager_id).exclude(email=MANAGER_EMAIL).update(identity_id=None)
        manager = User.objects.filter(email=MANAGER_EMAIL).first()
        if manager is None:
            User.objects.create_user(MANAGER_EMAIL, MANAGER_PASSWORD, identity_id=subjects.manager_id,
                                     full_name="Benchmark manager")
        else:
            manager.set_password(MANAGER_PASSWORD)
            manager.identity_id = subjects.manager_id
            manager.is_active, manager.is_admin, manager.is_auditor = True, False, False
            manager.save()


# --------------------------------------------------------------------------------------------
# HTTP: server, login, measurement
# --------------------------------------------------------------------------------------------


def server_env(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RAPIDVALUE_DEBUG": "0",
        "SECRET_KEY": os.environ["SECRET_KEY"],
        "RAPIDVALUE_ALLOWED_HOSTS": "127.0.0.1,localhost,.localhost",
        "RAPIDVALUE_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "rapidvalue.settings",
    })
    return env


def start_server(port: int, workers: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "rapidvalue.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--log-level", "warning", "--timeout", "120"]
    log = log_path.open("wb")
    return subprocess.Popen(command, cwd=REPO, env=server_env(port), stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(client, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if client.get("/health").status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer /health within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Session:
    """A user's bearer token, renewed by logging in again before it expires."""

    def __init__(self, client, email: str, password: str, tenant: str):
        self.client, self.email, self.password, self.tenant = client, email, password, tenant
        self.token = ""
        self.issued = 0.0

    def headers(self) -> dict[str, str]:
        if not self.token or time.monotonic() - self.issued > TOKEN_MAX_AGE:
            response = self.client.post("/api/v1/auth/login",
                                        json={"email": self.email, "password": self.password, "tenant": self.tenant})
            if response.status_code != 200:
                raise SystemExit(f"login of {self.email} failed: {response.status_code} {response.text[:500]}")
            self.token = response.json()["access"]
            self.issued = time.monotonic()
        return {"Authorization": f"Bearer {self.token}"}


class CheckFailed(Exception):
    pass


@dataclass
class Series:
    label: str
    times_ms: list[float]
    note: str = ""

    def quantile(self, q: float) -> float:
        ordered = sorted(self.times_ms)
        if len(ordered) == 1:
            return ordered[0]
        position = q * (len(ordered) - 1)  # linear interpolation between closest ranks
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_series(client, session: Session, label: str, urls, check, n: int, warmup: int,
               timeout: float) -> Series:
    times: list[float] = []
    started = time.monotonic()
    for index in range(warmup + n):
        url = urls(index)
        headers = session.headers()
        t0 = time.perf_counter()
        response = client.get(url, headers=headers)
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status_code != 200:
            raise CheckFailed(f"{label}: GET {url} answered {response.status_code}: {response.text[:500]}")
        check(url, response.json())
        if index >= warmup:
            times.append(elapsed)
        if time.monotonic() - started > timeout and len(times) >= 10:
            return Series(label, times, note=f"stopped after {len(times)} requests ({timeout:.0f} s budget)")
    return Series(label, times)


# --------------------------------------------------------------------------------------------
# EXPLAIN of the SQL behind one request (in-process replay)
# --------------------------------------------------------------------------------------------


def explain_request(tenant, label: str, url: str, token: str, top: int = 3) -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings

    with override_settings(ALLOWED_HOSTS=["*"]), CaptureQueriesContext(connection) as captured:
        response = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
    queries = [(float(q["time"]) * 1000, q["sql"]) for q in captured.captured_queries]
    print(f"\n=== {label}: GET {url} -> {response.status_code}, {len(queries)} SQL statements, "
          f"{sum(t for t, _ in queries):.1f} ms in SQL")
    for elapsed, sql in queries:
        print(f"  {elapsed:8.2f} ms  {sql[:160]}{'...' if len(sql) > 160 else ''}")
    connection.set_tenant(tenant)
    try:
        for elapsed, sql in sorted(queries, reverse=True)[:top]:
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            print(f"\n--- {elapsed:.2f} ms:\n{sql}\n")
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)  # no params: % is not a placeholder
                print("\n".join(row[0] for row in cursor.fetchall()))
    finally:
        connection.set_schema_to_public()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def machine_info() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: nproc={nproc} ({cpu or platform.machine()}), Python {platform.python_version()}, "
            f"PostgreSQL {pg_version} (shared_buffers {shared_buffers}), {platform.system()} {platform.release()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)

    import django

    django.setup()
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    logging.getLogger("rapidvalue.tenancy").setLevel(logging.WARNING)  # we say it ourselves
    from django.core.management import call_command
    from django.db import connection

    if not args.no_migrate:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            call_command("migrate_schemas", "--noinput", verbosity=0)
        print(f"migrate_schemas: {time.perf_counter() - started:.1f} s")

    tenant, reused = prepare_tenant(args)
    lift_rate_limit(tenant)
    proc = None
    keep = args.keep
    log_path = Path(tempfile.gettempdir()) / f"rv-bench-gunicorn-{os.getpid()}.log"
    try:
        if not reused:
            print(f"generating (seed {args.seed}): {sizes}")
            timing = Timing()
            started = time.perf_counter()
            generate(tenant, sizes, args.seed, timing)
            print(f"generation total: {time.perf_counter() - started:.1f} s")
        subjects = pick_subjects(tenant, args.seed, args.access_identities)
        ensure_users(tenant, subjects)
        counts = {}
        with connection.cursor() as cursor:
            for table in ("identities_identity", "access_application", "access_account", "access_entitlement",
                          "access_role", "access_roleinclusion", "access_grant"):
                cursor.execute(f'SELECT count(*) FROM "{tenant.schema_name}"."{table}"')
                counts[table] = cursor.fetchone()[0]
            cursor.execute(f'SELECT max(depth) FROM "{tenant.schema_name}".identities_identity')
            max_depth = cursor.fetchone()[0]
        print("data: " + ", ".join(f"{k.split('_', 1)[1]}={v:,}" for k, v in counts.items())
              + f"; max depth {max_depth}")
        print(f"manager: {MANAGER_EMAIL} -> identity {subjects.manager_external_id} at depth {subjects.manager_depth},"
              f" {subjects.manager_subtree - 1:,} identities under them (expects total {subjects.manager_subtree:,})")
        held = [n for _, n in subjects.heavy]
        print(f"access: {len(held)} identities holding {min(held)}-{max(held)} grants each (median "
              f"{statistics.median(held):.0f})")

        port = free_port()
        proc = start_server(port, args.workers, log_path)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=120.0) as client:
            wait_healthy(client, proc, log_path)
            admin = Session(client, ADMIN_EMAIL, ADMIN_PASSWORD, tenant.slug)
            manager = Session(client, MANAGER_EMAIL, MANAGER_PASSWORD, tenant.slug)
            admin.headers()
            manager.headers()
            rng = random.Random(args.seed + 2)
            offsets = [rng.randint(0, args.max_offset) for _ in range(args.warmup + args.requests)]

            def list_check(expected_total: int):
                def check(url: str, body: dict) -> None:
                    if body["total"] != expected_total:
                        raise CheckFailed(f"GET {url}: total {body['total']}, expected {expected_total}")
                    offset = body["offset"]
                    if len(body["items"]) != max(0, min(50, expected_total - offset)):
                        raise CheckFailed(f"GET {url}: {len(body['items'])} items at offset {offset}")
                return check

            def access_check(url: str, body: dict) -> None:
                if not body["items"] or body["total"] < 1:
                    raise CheckFailed(f"GET {url}: no effective access for a grant-heavy identity")

            heavy_ids = [i for i, _ in subjects.heavy]
            def me_check(url: str, body: dict) -> None:
                if body.get("email") != ADMIN_EMAIL:
                    raise CheckFailed(f"GET {url}: not the admin: {body}")

            plan = [
                ("GET /auth/me (admin; reference: the per-request floor)", admin,
                 lambda i: "/api/v1/auth/me", me_check),
                ("GET /identities?limit=50 (admin)", admin,
                 lambda i: f"/api/v1/identities?limit=50&offset={offsets[i]}", list_check(subjects.identity_count)),
                (f"GET /identities?limit=50 (manager, {subjects.manager_subtree:,} visible)", manager,
                 lambda i: f"/api/v1/identities?limit=50&offset={offsets[i]}", list_check(subjects.manager_subtree)),
                ("GET /identities/{id}/access (admin)", admin,
                 lambda i: f"/api/v1/identities/{heavy_ids[i % len(heavy_ids)]}/access", access_check),
            ]
            load_before = os.getloadavg()
            results = []
            for label, session, urls, check in plan:
                print(f"measuring {label}: {args.warmup} warm-up + {args.requests} requests ...", flush=True)
                results.append(run_series(client, session, label, urls, check, args.requests, args.warmup,
                                          args.series_timeout))

            load_after = os.getloadavg()
        stop_server(proc)
        proc = None
        print()
        print(machine_info())
        print(f"load average (1 min) before/after measuring: {load_before[0]:.2f} / {load_after[0]:.2f}"
              + ("  WARNING: other processes were using the CPUs; figures are pessimistic"
                 if max(load_before[0], load_after[0]) > 1.0 else ""))
        print(f"server: gunicorn {args.workers} sync workers, RAPIDVALUE_DEBUG=0; client: httpx, sequential; "
              f"offsets 0..{args.max_offset} for the lists; {len(heavy_ids)} identities cycled for access")
        print(f"{'endpoint':<58} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  target")
        failed = False
        for series in results:
            p99 = series.quantile(0.99)
            reference = series.label.startswith("GET /auth/me")
            ok = p99 < args.target_ms
            failed |= not ok and not reference
            verdict = "(no target)" if reference else f"p99<{args.target_ms:.0f}ms {'PASS' if ok else 'FAIL'}"
            print(f"{series.label:<58} {len(series.times_ms):>4} {series.quantile(0.5):>6.1f}ms "
                  f"{series.quantile(0.95):>6.1f}ms {p99:>6.1f}ms {max(series.times_ms):>6.1f}ms  {verdict}"
                  + (f"  ({series.note})" if series.note else ""))
        print("correctness: all responses 200; admin total = "
              f"{subjects.identity_count:,}; manager total = {subjects.manager_subtree:,} (subtree + self)")

        if args.explain:
            admin_token, manager_token = admin.token, manager.token
            explain_request(tenant, "admin list", "/api/v1/identities?limit=50&offset=500", admin_token)
            explain_request(tenant, "manager list", "/api/v1/identities?limit=50&offset=500", manager_token)
            explain_request(tenant, "effective access", f"/api/v1/identities/{heavy_ids[0]}/access", admin_token)
        return 1 if failed else 0
    except CheckFailed as exc:
        print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
        return 2
    finally:
        stop_server(proc)
        with contextlib.suppress(OSError):
            log_path.unlink()
        if not keep:
            from rapidvalue.tenancy.services import delete_tenant

            connection.set_schema_to_public()
            tenant.refresh_from_db()
            delete_tenant(tenant)
            print(f"deleted tenant '{tenant.slug}' (use --keep to keep it, --reuse to reuse it)")


if __name__ == "__main__":
    sys.exit(main())
