import json

from rapidvalue.tenancy import services

from ._base import TenantCommand


class Command(TenantCommand):
    help = "Create a tenant: schema (migrated), domain <slug>.<base domain> and its first admin user."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--admin-password", default=None, help="Generated and printed once when omitted.")
        parser.add_argument("--poc", action="store_true", help="Create the tenant in POC mode.")

    def handle(self, *args, **options):
        result = services.provision_tenant(
            options["slug"], name=options["name"], admin_email=options["admin_email"],
            admin_password=options["admin_password"], is_poc=options["poc"],
        )
        self.stdout.write(json.dumps(result.summary(), indent=2))
