"""Shared plumbing of the tenant commands: errors become a message and exit code 1."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from rapidvalue.context import Actor, acting_as
from rapidvalue.tenancy.services import ProvisioningError

CLI_ACTOR = Actor(type="system", id="cli", label="manage.py")


class TenantCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            with acting_as(CLI_ACTOR):
                return super().execute(*args, **options)
        except ProvisioningError as exc:
            raise CommandError(str(exc), returncode=1) from exc
