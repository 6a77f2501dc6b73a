import json

from django_tenants.utils import schema_context, tenant_context

from rapidvalue.authn.models import ApiToken
from rapidvalue.tenancy import services
from rapidvalue.tenancy.models import Tenant
from rapidvalue.users.models import User

from ._base import TenantCommand

DEMO_PASSWORD = "demo-admin-pass"
STAFF_EMAIL = "staff@rapidvalue.local"


class Command(TenantCommand):
    help = "Idempotently provision the 'demo' tenant and a control-plane staff user; print the logins."

    def handle(self, *args, **options):
        tenant = Tenant.objects.filter(slug="demo").first()
        if tenant is None:
            result = services.provision_tenant(
                "demo", name="Demo Corporation", admin_email="admin@demo.rapidvalue.local",
                admin_password=DEMO_PASSWORD, is_poc=True,
            )
            tenant = result.tenant
        with tenant_context(tenant):
            if not User.objects.filter(email="auditor@demo.rapidvalue.local").exists():
                from rapidvalue.users.services import create_user

                create_user(email="auditor@demo.rapidvalue.local", password=DEMO_PASSWORD, is_auditor=True,
                            full_name="Demo auditor", is_staff=True)
            has_token = ApiToken.objects.filter(name="demo-hr-integration", revoked_at=None).exists()
        with schema_context("public"):
            if not User.objects.filter(email=STAFF_EMAIL).exists():
                User.objects.create_superuser(STAFF_EMAIL, DEMO_PASSWORD, full_name="Control-plane staff")
        summary = {
            "tenant": tenant.slug,
            "api": f"http://{tenant.primary_domain}:8000/api/v1/",
            "tenant_console": f"http://{tenant.primary_domain}:8000/admin/",
            "control_plane_console": "http://localhost:8000/admin/",
            "admin_login": {"email": "admin@demo.rapidvalue.local", "password": DEMO_PASSWORD},
            "auditor_login": {"email": "auditor@demo.rapidvalue.local", "password": DEMO_PASSWORD},
            "control_plane_login": {"email": STAFF_EMAIL, "password": DEMO_PASSWORD},
        }
        if not has_token:
            from rapidvalue.authn.services import create_api_token

            with tenant_context(tenant):
                created = create_api_token(tenant=tenant, name="demo-hr-integration", role="admin",
                                           created_by="provision_demo")
            summary["service_token"] = created.raw
        self.stdout.write(json.dumps(summary, indent=2))
