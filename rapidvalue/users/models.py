"""The one user model, whose table exists in every schema.

In the public schema a row is a control-plane staff member; in a tenant schema it is that
tenant's user. Role flags are explicit (admin, auditor); manager and resource-owner rights are
derived from the linked identity by the scoping hook in ``rapidvalue.api.scoping``.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        """Create a user with a normalised email and a hashed (or unusable) password."""
        if not email:
            raise ValueError("Users need an email address")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        extra.setdefault("is_admin", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        default=False, help_text="May sign in to the Django admin console of this schema."
    )
    is_admin = models.BooleanField(default=False, help_text="Tenant administrator: reads and writes everything.")
    is_auditor = models.BooleanField(default=False, help_text="Reads everything in the tenant, writes nothing.")
    # The Identity model arrives with the identities app; until then this holds its id, and the
    # identities migration turns it into a foreign key without renaming the column.
    identity_id = models.UUIDField(null=True, blank=True, unique=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = (self.email or "").lower()
        if self.is_admin and self.is_auditor:
            raise ValidationError(
                {"is_auditor": "A user is either an admin or an auditor: an auditor can never write."}
            )
