from django.apps import AppConfig


class ApiConfig(AppConfig):
    """API conventions: envelope, errors, idempotency, rate limits, scoping, base viewsets."""

    name = "rapidvalue.api"
    label = "api"
    verbose_name = "API conventions"
