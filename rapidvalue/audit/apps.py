from django.apps import AppConfig


class AuditConfig(AppConfig):
    """Append-only audit events, one table per tenant schema."""

    name = "rapidvalue.audit"
    label = "audit"
    verbose_name = "Audit log"
