"""A small organisation inside the acme tenant for identity and scoping tests (rolled back per test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django_tenants.utils import tenant_context

from access.models import Account, Application, Entitlement, Grant, Role
from identities import services as identity_services
from rapidvalue.users.models import User
from tests.conftest import PASSWORD, _issue_user_access


@dataclass
class Org:
    people: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)

    def id(self, name: str) -> str:
        return str(self.people[name].pk)

    def ids(self, *names: str) -> set[str]:
        return {self.id(n) for n in names}


CHAIN = ["ceo", "vp", "d2", "d3", "d4", "d5", "d6", "d7"]


def build_org(world) -> Org:
    """ceo > vp > d2 > ... > d7; ceo > vp2 > owner, holder, both; both > both_report; loner.

    * manager1 (user) is vp (depth 1): sees vp..d7.
    * manager5 is d5 (depth 5): sees d5, d6, d7.
    * owner owns application Payroll: sees holder (grant on Payroll) and acct (account in Payroll).
    * both is a manager (of both_report) and owns role Auditors (held by d3): sees both, both_report, d3.
    * loner has no reports and owns nothing: sees only themself.
    """
    org = Org()
    tenant = world.acme.tenant
    with tenant_context(tenant):
        def person(name: str, manager: str | None = None, **extra):
            org.people[name] = identity_services.create_identity(
                external_id=f"hr-{name}", email=f"{name}@acme.example", first_name=name.title(), last_name="Test",
                department=extra.pop("department", "Engineering"),
                manager_external_id=f"hr-{manager}" if manager else None, **extra,
            )

        previous = None
        for name in CHAIN:
            person(name, previous)
            previous = name
        person("vp2", "ceo", department="Finance")
        for name in ("owner", "holder", "acct", "both", "loner"):
            person(name, "vp2", department="Finance")
        person("both_report", "both", department="Finance")

        payroll = Application.objects.create(name="Payroll")
        payroll.owners.add(org.people["owner"])
        crm = Application.objects.create(name="CRM")
        pay_admin = Entitlement.objects.create(application=payroll, value="payroll-admins", risk_level="high")
        crm_user = Entitlement.objects.create(application=crm, value="crm-users")
        auditors = Role.objects.create(name="Auditors")
        auditors.owners.add(org.people["both"])
        auditors.entitlements.add(crm_user)
        Grant.objects.create(identity=org.people["holder"], entitlement=pay_admin, source="direct")
        Grant.objects.create(identity=org.people["d3"], role=auditors, source="request")
        Grant.objects.create(identity=org.people["d6"], entitlement=crm_user, source="birthright")
        account = Account.objects.create(application=payroll, identity=org.people["acct"], native_id="acct-1",
                                         username="acct")
        orphan = Account.objects.create(application=crm, native_id="orphan-1", username="ghost")
        org.objects.update(payroll=payroll, crm=crm, pay_admin=pay_admin, crm_user=crm_user, auditors=auditors,
                           account=account, orphan=orphan)

        for user_name, identity in (("manager1", "vp"), ("manager5", "d5"), ("owner", "owner"), ("both", "both"),
                                    ("loner", "loner"), ("nobody", None)):
            user = User.objects.create_user(
                f"{user_name}.user@acme.test", PASSWORD,
                identity_id=org.people[identity].pk if identity else None,
            )
            org.tokens[user_name] = _issue_user_access(user, tenant)
    return org
