from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    """Connector instances, sync runs and the sync engine (the protocol itself is Django-free)."""

    name = "connectors"
    default_auto_field = "django.db.models.BigAutoField"
