from rapidvalue.tenancy import services
from rapidvalue.tenancy.models import Tenant

from ._base import TenantCommand


class Command(TenantCommand):
    help = "Suspend a tenant (its tokens and console answer 403), or reactivate it with --reactivate."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--reactivate", action="store_true")

    def handle(self, *args, **options):
        tenant = services.get_tenant(options["slug"])
        status = Tenant.Status.ACTIVE if options["reactivate"] else Tenant.Status.SUSPENDED
        services.set_tenant_status(tenant, status)
        self.stdout.write(f"Tenant '{tenant.slug}' is now {status}.")
