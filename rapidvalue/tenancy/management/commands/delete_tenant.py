from django.core.management.base import CommandError

from rapidvalue.tenancy import services

from ._base import TenantCommand


class Command(TenantCommand):
    help = "Delete a tenant and drop its schema with all its data. Requires --yes."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--yes", action="store_true", help="Confirm the irreversible deletion.")

    def handle(self, *args, **options):
        tenant = services.get_tenant(options["slug"])
        if not options["yes"]:
            raise CommandError(
                f"Refusing to delete tenant '{tenant.slug}' and all its data without --yes.", returncode=1
            )
        services.delete_tenant(tenant)
        self.stdout.write(f"Tenant '{options['slug']}' deleted.")
