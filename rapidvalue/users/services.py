"""Tenant user management: every change audited, passwords never in the audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from rapidvalue.api.errors import Conflict
from rapidvalue.audit import services as audit

from .models import User

EDITABLE_FIELDS = ("email", "full_name", "is_admin", "is_auditor", "is_active", "identity_id")


def _check_password(password: str, user: User) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc


@transaction.atomic
def create_user(*, email: str, password: str, **fields: Any) -> User:
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise Conflict("A user with this email already exists.", code="duplicate_email")
    user = User(email=email, **{k: v for k, v in fields.items() if k in EDITABLE_FIELDS})
    _check_password(password, user)
    user.set_password(password)
    user.full_clean()
    user.save()
    audit.record("user.create", "user", user.pk, after=audit.snapshot(user))
    return user


@transaction.atomic
def update_user(user: User, *, acting_user_id: int | None = None, **changes: Any) -> User:
    before = audit.snapshot(user)
    if "email" in changes:
        changes["email"] = changes["email"].strip().lower()
        if User.objects.filter(email=changes["email"]).exclude(pk=user.pk).exists():
            raise Conflict("A user with this email already exists.", code="duplicate_email")
    if user.pk == acting_user_id and (changes.get("is_admin") is False or changes.get("is_active") is False):
        raise Conflict("You cannot remove your own admin role or deactivate yourself.", code="self_lockout")
    for name in EDITABLE_FIELDS:
        if name in changes:
            setattr(user, name, changes[name])
    password = changes.get("password")
    if password:
        _check_password(password, user)
        user.set_password(password)
    user.full_clean()
    user.save()
    after = audit.snapshot(user)
    action = "user.password_change" if password and audit.diff(before, after).keys() <= {"password"} else "user.update"
    audit.record(action, "user", user.pk, before=before, after=after)
    return user


@transaction.atomic
def delete_user(user: User, *, acting_user_id: int | None = None) -> None:
    if user.pk == acting_user_id:
        raise Conflict("You cannot delete yourself.", code="self_lockout")
    before = audit.snapshot(user)
    pk = user.pk
    user.delete()
    audit.record("user.delete", "user", pk, before=before)
