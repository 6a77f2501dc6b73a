from django.apps import AppConfig


class AuthnConfig(AppConfig):
    """Tokens: user logins (simplejwt), service and agent tokens (hashed, revocable)."""

    name = "rapidvalue.authn"
    label = "authn"
    verbose_name = "API tokens"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the OpenAPI authentication extensions
