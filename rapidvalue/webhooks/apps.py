from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outbound webhooks: subscriptions, the transactional outbox, signed delivery with retries."""

    name = "rapidvalue.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
