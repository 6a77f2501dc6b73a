from django.apps import AppConfig


class TenancyConfig(AppConfig):
    """Control plane: tenants, their domains and the control-plane audit log (public schema)."""

    name = "rapidvalue.tenancy"
    label = "tenancy"
    verbose_name = "Control plane"
