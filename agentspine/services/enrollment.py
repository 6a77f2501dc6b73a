"""Creating agents, one-time enrollment codes, registration, token rotation and revocation.

An enrollment code is ``<tenant slug>.<secret>``: the slug lets ``POST /api/v1/agent/register``
find the tenant on any host (the agent knows only a URL and the code); the secret part is stored
as a SHA-256 and works once, before it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import tenant_context
from rest_framework import exceptions

from connectors.base import without_local_only
from connectors.models import ConnectorInstance
from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit
from rapidvalue.authn.models import ApiToken
from rapidvalue.authn.services import create_api_token, revoke_api_token
from rapidvalue.tenancy.models import Tenant

from ..models import Agent, AgentJob, EnrollmentCode


class EnrollmentRefused(exceptions.AuthenticationFailed):
    default_code = "enrollment_code_invalid"


@dataclass
class IssuedCode:
    code: str
    expires_at: datetime


@dataclass
class Registration:
    agent: Agent
    token: str
    tenant: Tenant


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def agent_exists(agent_id: Any) -> bool:
    """For connectors' validation (registered in AppConfig.ready)."""
    try:
        return Agent.objects.filter(pk=uuid.UUID(str(agent_id)), revoked_at__isnull=True).exists()
    except ValueError:
        return False


def _assign_connectors(agent: Agent, connector_ids: list[uuid.UUID]) -> None:
    """The listed connectors run on this agent; connectors it no longer lists go back to hosted mode."""
    found = set(ConnectorInstance.objects.filter(pk__in=connector_ids).values_list("pk", flat=True))
    missing = [str(c) for c in connector_ids if c not in found]
    if missing:
        raise exceptions.ValidationError({"connector_ids": [f"No connector with id {', '.join(missing)}."]})
    for connector in ConnectorInstance.objects.filter(agent_id=agent.pk).exclude(pk__in=connector_ids):
        before = audit.snapshot(connector)
        connector.agent_id, connector.mode = None, ConnectorInstance.Mode.HOSTED
        connector.save(update_fields=["agent_id", "mode", "updated_at"])
        audit.record("connector.update", "connector", connector.pk, before=before, after=audit.snapshot(connector))
    for connector in ConnectorInstance.objects.filter(pk__in=connector_ids):
        if connector.agent_id == agent.pk and connector.mode == ConnectorInstance.Mode.AGENT:
            continue
        before = audit.snapshot(connector)
        connector.agent_id, connector.mode = agent.pk, ConnectorInstance.Mode.AGENT
        # Credentials and connection targets (URLs, TLS, files) now live in the agent's local config.
        connector.auth_config_encrypted = ""
        connector.config = without_local_only(connector.type, connector.config)
        connector.save(update_fields=["agent_id", "mode", "auth_config_encrypted", "config", "updated_at"])
        audit.record("connector.update", "connector", connector.pk, before=before, after=audit.snapshot(connector))


def issue_code(agent: Agent, tenant: Tenant) -> IssuedCode:
    """A fresh one-time code; earlier unused codes of the agent stop working."""
    if agent.revoked_at is not None:
        raise Conflict("This agent has been revoked; create a new one.", code="agent_revoked")
    now = timezone.now()
    EnrollmentCode.objects.filter(agent=agent, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
    code = f"{tenant.slug}.{secrets.token_urlsafe(24)}"
    expires_at = now + timedelta(minutes=settings.AGENT_ENROLLMENT_CODE_TTL_MINUTES)
    EnrollmentCode.objects.create(agent=agent, code_hash=_hash(code), expires_at=expires_at)
    audit.record("agent.enrollment_code", "agent", agent.pk, after={"expires_at": expires_at.isoformat()})
    return IssuedCode(code=code, expires_at=expires_at)


@transaction.atomic
def create_agent(*, tenant: Tenant, name: str, connector_ids: list[uuid.UUID], created_by: str = ""
                 ) -> tuple[Agent, IssuedCode]:
    """An agent waiting for enrollment, and its first one-time code (shown once)."""
    if Agent.objects.filter(name=name).exists():
        raise Conflict("An agent with this name already exists.", code="duplicate_name")
    agent = Agent.objects.create(name=name, created_by=created_by)
    _assign_connectors(agent, connector_ids)
    audit.record("agent.create", "agent", agent.pk,
                 after={**audit.snapshot(agent), "connector_ids": [str(c) for c in connector_ids]})
    return agent, issue_code(agent, tenant)


@transaction.atomic
def update_agent(agent: Agent, *, name: str | None = None, connector_ids: list[uuid.UUID] | None = None) -> Agent:
    before = {**audit.snapshot(agent), "connector_ids": connector_ids_of(agent)}
    if name is not None and name != agent.name:
        if Agent.objects.filter(name=name).exclude(pk=agent.pk).exists():
            raise Conflict("An agent with this name already exists.", code="duplicate_name")
        agent.name = name
        agent.save(update_fields=["name"])
    if connector_ids is not None:
        _assign_connectors(agent, connector_ids)
    audit.record("agent.update", "agent", agent.pk, before=before,
                 after={**audit.snapshot(agent), "connector_ids": connector_ids_of(agent)})
    return agent


def connector_ids_of(agent: Agent) -> list[str]:
    return [str(pk) for pk in ConnectorInstance.objects.filter(agent_id=agent.pk).order_by("name")
            .values_list("pk", flat=True)]


def register(*, code: str, host_tenant: Tenant | None, version: str = "", hostname: str = "") -> Registration:
    """Trade a one-time code for an agent token (JWT-shaped, bound to tenant and agent).

    Unknown, used and expired codes are all refused with 401; re-enrolling an agent (a new code)
    revokes the tokens it had.
    """
    slug, _, secret = code.partition(".")
    if not slug or not secret:
        raise EnrollmentRefused("This enrollment code is not valid.")
    tenant = Tenant.objects.filter(slug=slug.lower()).first()
    if tenant is None or (host_tenant is not None and host_tenant.pk != tenant.pk):
        raise EnrollmentRefused("This enrollment code is not valid.")
    with tenant_context(tenant), transaction.atomic():
        row = (EnrollmentCode.objects.select_for_update().select_related("agent")
               .filter(code_hash=_hash(code)).first())
        if row is None or not hmac.compare_digest(row.code_hash, _hash(code)):
            raise EnrollmentRefused("This enrollment code is not valid.")
        now = timezone.now()
        if row.used_at is not None:
            raise EnrollmentRefused("This enrollment code has already been used.", code="enrollment_code_used")
        if row.expires_at <= now:
            raise EnrollmentRefused("This enrollment code has expired.", code="enrollment_code_expired")
        agent = row.agent
        if agent.revoked_at is not None:
            raise EnrollmentRefused("This agent has been revoked.", code="agent_revoked")
        # Only a holder of a valid code learns that the tenant is suspended (the code stays unused).
        if tenant.is_suspended:
            raise exceptions.PermissionDenied("This tenant is suspended.", code="tenant_suspended")
        row.used_at = now
        row.save(update_fields=["used_at"])
        for token in ApiToken.objects.filter(kind=ApiToken.Kind.AGENT, agent_id=agent.pk, revoked_at__isnull=True):
            revoke_api_token(token)
        issued = create_api_token(tenant=tenant, name=f"agent:{agent.name}", kind=ApiToken.Kind.AGENT,
                                  agent_id=agent.pk, created_by=f"enrollment:{agent.name}")
        before = audit.snapshot(agent)
        agent.enrolled_at = now
        agent.version, agent.hostname = version[:50], hostname[:255]
        agent.save(update_fields=["enrolled_at", "version", "hostname"])
        audit.record("agent.register", "agent", agent.pk, before=before, after=audit.snapshot(agent))
        return Registration(agent=agent, token=issued.raw, tenant=tenant)


@transaction.atomic
def rotate_token(*, tenant: Tenant, agent: Agent, current_token_id: uuid.UUID) -> str:
    """A new token for the agent; the one it used stops working at once.

    The current token is locked first: two rotations racing with one token give one new token, and
    the loser (or a rotation racing a revocation) is refused rather than minting a second one.
    """
    current = ApiToken.objects.select_for_update().filter(pk=current_token_id, revoked_at__isnull=True).first()
    if current is None or Agent.objects.filter(pk=agent.pk, revoked_at__isnull=False).exists():
        raise exceptions.AuthenticationFailed("This token has been revoked or rotated already.", code="token_revoked")
    issued = create_api_token(tenant=tenant, name=f"agent:{agent.name}", kind=ApiToken.Kind.AGENT,
                              agent_id=agent.pk, created_by=f"rotation:{agent.name}")
    revoke_api_token(current)
    audit.record("agent.token_rotate", "agent", agent.pk)
    return issued.raw


@transaction.atomic
def revoke_agent(agent: Agent) -> Agent:
    """Revoke the agent and every token it holds (refused on the next request); fail its open jobs."""
    if agent.revoked_at is not None:
        return agent
    before = audit.snapshot(agent)
    now = timezone.now()
    for token in ApiToken.objects.filter(kind=ApiToken.Kind.AGENT, agent_id=agent.pk, revoked_at__isnull=True):
        revoke_api_token(token)
    EnrollmentCode.objects.filter(agent=agent, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
    agent.revoked_at, agent.online = now, False
    agent.save(update_fields=["revoked_at", "online"])
    from .jobs import finish_open_jobs

    finish_open_jobs(agent, AgentJob.Status.FAILED, "the agent was revoked")
    audit.record("agent.revoke", "agent", agent.pk, before=before, after=audit.snapshot(agent))
    return agent
