"""Realistic, deterministic demo content for a tenant: an organisation and its access.

Used by ``seed_demo_data`` (called by ``scripts/run`` for the demo tenant). Identities go
through the identity services (paths, audit, joiner events); access data is created in bulk.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from identities import services as identity_services
from identities.models import Identity

from .models import Account, Application, Entitlement, Grant, Role

FIRST = ["Alice", "Bram", "Chloé", "Dries", "Emma", "Femke", "Gilles", "Hanne", "Ilse", "Jonas", "Karel", "Lotte",
         "Maarten", "Nora", "Olivier", "Pieter", "Quinten", "Ruben", "Sofie", "Thomas", "Ulla", "Vince", "Wout",
         "Xavier", "Yana", "Zoë"]
LAST = ["Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Goossens", "Wouters", "De Smet",
        "Dubois", "Lambert", "Dupont", "Martin", "Simon", "Laurent", "Leclercq", "Hermans", "Michiels", "Lemmens"]
DEPARTMENTS = {
    "Engineering": ["Software Engineer", "Senior Engineer", "SRE", "QA Engineer"],
    "Sales": ["Account Executive", "Sales Engineer", "SDR"],
    "Finance": ["Accountant", "Controller", "Payroll Specialist"],
    "HR": ["HR Partner", "Recruiter"],
    "Support": ["Support Agent", "Support Lead"],
}
LOCATIONS = ["Brussels", "Ghent", "Antwerp", "Leuven", "Liège"]
APPS = {
    "Active Directory": ("directory", ["Domain Users", "VPN Users", "Engineering", "Finance", "Domain Admins"]),
    "Salesforce": ("saas", ["Sales User", "Sales Manager", "Report Builder", "System Administrator"]),
    "GitHub": ("saas", ["Developers", "Maintainers", "Owners"]),
    "Workday": ("saas", ["Employee Self Service", "HR Administrator", "Payroll Processor"]),
    "NetSuite": ("saas", ["AP Clerk", "AR Clerk", "Controller", "Administrator"]),
}
HIGH_RISK = {"Domain Admins", "System Administrator", "Owners", "HR Administrator", "Administrator", "Controller"}


def _email(first: str, last: str, n: int) -> str:
    ascii_name = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode()
    return f"{ascii_name}.{n}@demo.example".lower().replace(" ", "")


@dataclass
class DemoSummary:
    identities: int
    accounts: int
    entitlements: int
    roles: int
    grants: int


@transaction.atomic
def seed(people: int = 150, seed_value: int = 42) -> DemoSummary:
    """Create the demo organisation once; a second call changes nothing."""
    if Application.objects.filter(name="Active Directory").exists():
        return DemoSummary(Identity.objects.count(), Account.objects.count(), Entitlement.objects.count(),
                           Role.objects.count(), Grant.objects.count())
    rng = random.Random(seed_value)  # noqa: S311 - deterministic demo data, not security
    ceo = identity_services.create_identity(external_id="hr-00001", first_name="Sarah", last_name="Vermeulen",
                                            email="sarah.vermeulen@demo.example", department="Executive",
                                            title="Chief Executive Officer", location="Brussels", source="demo")
    heads = {}
    for n, dept in enumerate(DEPARTMENTS, start=2):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        heads[dept] = identity_services.create_identity(
            external_id=f"hr-{n:05d}", first_name=first, last_name=last, department=dept,
            email=_email(first, last, n), title=f"Head of {dept}",
            location=rng.choice(LOCATIONS), manager=ceo, source="demo")
    staff: list[Identity] = []
    for n in range(len(heads) + 2, people + 1):
        dept = rng.choice(list(DEPARTMENTS))
        pool = [p for p in staff if p.department == dept and p.depth < 4]
        manager = rng.choice(pool) if pool and rng.random() < 0.4 else heads[dept]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        staff.append(identity_services.create_identity(
            external_id=f"hr-{n:05d}", first_name=first, last_name=last, department=dept,
            email=_email(first, last, n),
            title=rng.choice(DEPARTMENTS[dept]), location=rng.choice(LOCATIONS), manager=manager,
            employment_type="contractor" if rng.random() < 0.1 else "employee", source="demo"))

    everyone = [ceo, *heads.values(), *staff]
    apps, ents = {}, {}
    for name, (kind, values) in APPS.items():
        apps[name] = Application.objects.create(name=name, kind=kind)
        apps[name].owners.add(heads["Engineering"] if kind == "directory" else rng.choice(list(heads.values())))
        for value in values:
            ents[(name, value)] = Entitlement.objects.create(
                application=apps[name], value=value, display_name=f"{name}: {value}",
                risk_level="high" if value in HIGH_RISK else "low", requestable=value not in HIGH_RISK)

    base = Role.objects.create(name="Employee baseline", description="Everyone's birthright access")
    base.entitlements.add(ents[("Active Directory", "Domain Users")], ents[("Workday", "Employee Self Service")])
    dept_roles = {}
    for dept, entitlements in {
        "Engineering": [("GitHub", "Developers"), ("Active Directory", "Engineering"),
                        ("Active Directory", "VPN Users")],
        "Sales": [("Salesforce", "Sales User")],
        "Finance": [("NetSuite", "AP Clerk"), ("NetSuite", "AR Clerk"), ("Active Directory", "Finance")],
        "HR": [("Workday", "HR Administrator")],
        "Support": [("Salesforce", "Sales User")],
    }.items():
        role = Role.objects.create(name=f"{dept} team")
        role.entitlements.add(*(ents[e] for e in entitlements))
        role.includes.add(base)
        role.owners.add(heads[dept])
        dept_roles[dept] = role

    accounts, grants = [], []
    now = timezone.now()
    for person in everyone:
        for app_name in ("Active Directory", "Workday"):
            accounts.append(Account(application=apps[app_name], identity=person, native_id=person.external_id,
                                    username=person.email.split("@")[0],
                                    last_login_at=now - timezone.timedelta(days=rng.randint(0, 200))))
        role = dept_roles.get(person.department, base)
        grants.append(Grant(identity=person, role=role, source="birthright", granted_by="demo"))
        if rng.random() < 0.15:
            extra = rng.choice(list(ents.values()))
            grants.append(Grant(identity=person, entitlement=extra, source=rng.choice(["request", "direct"]),
                                granted_by="demo"))
    for n in range(6):  # orphans: accounts nobody claims
        accounts.append(Account(application=apps["Salesforce"], native_id=f"sf-orphan-{n}", username=f"old.user{n}"))
    Account.objects.bulk_create(accounts)
    Grant.objects.bulk_create(grants)
    return DemoSummary(len(everyone), len(accounts), len(ents), Role.objects.count(), len(grants))
