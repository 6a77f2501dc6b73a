"""What identities can reach: applications, accounts, entitlements, roles and grants.

A grant always records its ``source`` (direct, birthright, request, sync, ...) so that later
features (certification, birthright recalculation, remediation) know why access exists.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from identities.models import Identity


class Application(models.Model):
    """A connected system or resource whose access RapidValue governs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=50, blank=True, help_text="e.g. directory, saas, database, file share")
    owners = models.ManyToManyField(Identity, blank=True, related_name="owned_applications")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Account(models.Model):
    """An identity's login in an application; an account without identity is an orphan."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"
        DELETED = "deleted", "Deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of their own: account_app_native_uniq leads with application_id, account_identity_idx
    # with identity_id, and each serves those lookups (and the FK cascades) as well.
    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="accounts", db_index=False)
    identity = models.ForeignKey(Identity, null=True, blank=True, on_delete=models.SET_NULL, related_name="accounts",
                                 db_index=False)
    native_id = models.CharField(max_length=500, help_text="The account's id in the application.")
    username = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)  # Meta: no LIKE twin
    last_login_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["application_id", "username", "id"]
        constraints = [models.UniqueConstraint(fields=["application", "native_id"], name="account_app_native_uniq")]
        indexes = [models.Index(fields=["identity", "application"], name="account_identity_idx"),
                   models.Index(fields=["status"], name="account_status_idx")]

    def __str__(self) -> str:
        return self.username or self.native_id


class Entitlement(models.Model):
    """Something grantable in an application: a group, a permission, a licence."""

    class Type(models.TextChoices):
        GROUP = "group", "Group"
        PERMISSION = "permission", "Permission"
        LICENSE = "license", "License"
        ROLE = "role", "Application role"
        OTHER = "other", "Other"

    class Risk(models.TextChoices):
        LOW = "low", "Low"
        MEDIUM = "medium", "Medium"
        HIGH = "high", "High"
        CRITICAL = "critical", "Critical"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="entitlements")
    value = models.CharField(max_length=500, help_text="The entitlement's id in the application (e.g. group DN).")
    display_name = models.CharField(max_length=300, blank=True)
    type = models.CharField(max_length=20, choices=Type.choices, default=Type.GROUP)
    description = models.TextField(blank=True)
    risk_level = models.CharField(max_length=10, choices=Risk.choices, default=Risk.LOW, db_index=True)
    owner = models.ForeignKey(Identity, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_entitlements")
    requestable = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["application_id", "value", "id"]
        constraints = [models.UniqueConstraint(fields=["application", "value"], name="entitlement_app_value_uniq")]

    def __str__(self) -> str:
        return self.display_name or self.value


class Role(models.Model):
    """A business role: a bundle of entitlements, possibly including other roles (no cycles)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    requestable = models.BooleanField(default=True)
    owners = models.ManyToManyField(Identity, blank=True, related_name="owned_roles")
    entitlements = models.ManyToManyField(Entitlement, blank=True, related_name="roles")
    includes = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="included_in",
                                      through="RoleInclusion")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class RoleInclusion(models.Model):
    parent = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="child_links")
    child = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="parent_links")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["parent", "child"], name="role_inclusion_uniq"),
            models.CheckConstraint(condition=~Q(parent=models.F("child")), name="role_inclusion_not_self"),
        ]

    def __str__(self) -> str:
        return f"{self.parent_id} > {self.child_id}"

    def clean(self) -> None:
        """Refuse a link that would make a role include itself (console and API alike)."""
        from django.core.exceptions import ValidationError

        from .services import _descendants

        if self.parent_id and self.child_id and (
            self.parent_id == self.child_id or self.parent_id in _descendants([self.child_id])
        ):
            raise ValidationError({"child": "A role cannot include itself, directly or through other roles."})


class Grant(models.Model):
    """An identity (or one of its accounts) holds an entitlement or a role."""

    class Source(models.TextChoices):
        DIRECT = "direct", "Direct assignment"
        BIRTHRIGHT = "birthright", "Birthright policy"
        REQUEST = "request", "Access request"
        SYNC = "sync", "Discovered by sync"
        ROLE_MINING = "role_mining", "Role mining"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        PENDING = "pending", "Pending provisioning"
        ENDED = "ended", "Ended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # identity, role, source and state are indexed in Meta (partial or without the LIKE twin), not
    # by db_index: every index is maintained for each of the 1M rows a sync writes.
    identity = models.ForeignKey(Identity, null=True, blank=True, on_delete=models.CASCADE, related_name="grants",
                                 db_index=False)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.CASCADE, related_name="grants")
    entitlement = models.ForeignKey(Entitlement, null=True, blank=True, on_delete=models.CASCADE,
                                    related_name="grants")
    role = models.ForeignKey(Role, null=True, blank=True, on_delete=models.CASCADE, related_name="grants",
                             db_index=False)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.DIRECT)
    source_reference = models.CharField(max_length=200, blank=True,
                                        help_text="The request, policy or sync run that made the grant.")
    granted_by = models.CharField(max_length=254, blank=True)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(entitlement__isnull=False, role__isnull=True) | Q(entitlement__isnull=True,
                                                                               role__isnull=False)),
                name="grant_entitlement_xor_role",
            ),
            models.CheckConstraint(condition=Q(identity__isnull=False) | Q(account__isnull=False),
                                   name="grant_has_holder"),
            # A sync discovers a membership once: repeated syncs find it, never duplicate it.
            models.UniqueConstraint(fields=["account", "entitlement"], name="grant_sync_account_uniq",
                                    condition=Q(source="sync", state="active", account__isnull=False)),
            models.UniqueConstraint(fields=["identity", "entitlement"], name="grant_sync_identity_uniq",
                                    condition=Q(source="sync", state="active", account__isnull=True)),
        ]
        indexes = [
            # Partial: most grants are held through an account (identity NULL) or hold an entitlement
            # (role NULL); ``identity_id = x`` and ``role_id IN (...)`` imply NOT NULL, so every lookup,
            # the FK cascades included, still uses them. The first serves identity_id alone too.
            models.Index(fields=["identity", "state"], name="grant_identity_state_idx",
                         condition=Q(identity__isnull=False)),
            models.Index(fields=["role"], name="grant_role_idx", condition=Q(role__isnull=False)),
            # Filters of the grants list (?source=, ?state=), for the values an index helps with: most
            # grants are active and come from a sync, and a scan finds those faster than a B-tree of
            # a million copies of one word (which every sync write and first-load rebuild paid for).
            # ``state = 'pending'`` implies ``state <> 'active'``, so the planner uses them.
            models.Index(fields=["source"], name="grant_source_other_idx", condition=~Q(source="sync")),
            models.Index(fields=["state"], name="grant_state_other_idx", condition=~Q(state="active")),
        ]

    def __str__(self) -> str:
        return f"{self.identity_id or self.account_id} -> {self.entitlement_id or self.role_id}"
