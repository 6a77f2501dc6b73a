from django.apps import AppConfig


class IdentitiesConfig(AppConfig):
    """People (identities), the org hierarchy and joiner/mover/leaver lifecycle events."""

    name = "identities"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import scoping

        scoping.register()
