import json

from rapidvalue.tenancy.models import Tenant

from ._base import TenantCommand


class Command(TenantCommand):
    help = "List tenants as a table, or as JSON with --json."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        rows = [
            {"id": t.pk, "slug": t.slug, "name": t.name, "status": t.status, "poc": t.is_poc,
             "schema": t.schema_name, "domain": t.primary_domain, "created_at": t.created_at.isoformat()}
            for t in Tenant.objects.exclude(schema_name="public").order_by("slug")
        ]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        columns = ["id", "slug", "name", "status", "poc", "domain"]
        widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
        self.stdout.write("  ".join(c.upper().ljust(widths[c]) for c in columns))
        for row in rows:
            self.stdout.write("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
