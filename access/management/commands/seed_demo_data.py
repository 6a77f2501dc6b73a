import json

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import tenant_context

from access import demo
from rapidvalue.context import Actor, acting_as
from rapidvalue.tenancy.models import Tenant


class Command(BaseCommand):
    help = "Fill a tenant with a realistic demo organisation and its access (once; idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--people", type=int, default=150)

    def handle(self, *args, **options):
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['slug']}'", returncode=1)
        with tenant_context(tenant), acting_as(Actor(type="system", id="demo", label="seed_demo_data")):
            summary = demo.seed(people=options["people"])
            from rapidvalue.users.models import User

            head = demo.Identity.objects.filter(title="Head of Engineering").first()
            manager_email = "manager@demo.rapidvalue.local"
            if head and not User.objects.filter(email=manager_email).exists():
                User.objects.create_user(manager_email, "demo-admin-pass", identity_id=head.pk,
                                         full_name=str(head))
        self.stdout.write(json.dumps({"tenant": tenant.slug, **summary.__dict__,
                                      "manager_login": {"email": manager_email, "password": "demo-admin-pass"}}))
