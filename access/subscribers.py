"""Access consequences of lifecycle events."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from identities import lifecycle
from rapidvalue.audit import services as audit

from .models import Account, Grant


def remove_leaver_access(event: lifecycle.Event) -> None:
    """A leaver's accounts are disabled and grants ended now, in the leaver's transaction."""
    identity = event.identity
    now = timezone.now()
    disabled = Account.objects.filter(identity=identity, status=Account.Status.ACTIVE).update(
        status=Account.Status.DISABLED, updated_at=now
    )
    ended = Grant.objects.filter(
        Q(identity=identity) | Q(account__identity=identity),
        state__in=[Grant.State.ACTIVE, Grant.State.PENDING],
    ).update(state=Grant.State.ENDED, ended_at=now)
    audit.record("identity.leaver_access_removed", "identity", identity.pk,
                 after={"accounts_disabled": disabled, "grants_ended": ended})


def register() -> None:
    lifecycle.subscribe(lifecycle.LEAVER, remove_leaver_access)
