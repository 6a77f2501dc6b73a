from django.apps import AppConfig


class AccessConfig(AppConfig):
    """Applications, accounts, the entitlement catalog, roles and grants."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import scoping, subscribers

        scoping.register()
        subscribers.register()
