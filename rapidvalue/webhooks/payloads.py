"""Versioned payload shapes of each event type (version 1), documented in the OpenAPI document.

They describe what ``emit`` callers put in ``data``; the envelope around it is
``{id, type, version, tenant, occurred_at, data}``.
"""

from __future__ import annotations

from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework import serializers


class IdentityData(serializers.Serializer):
    id = serializers.UUIDField()
    external_id = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    first_name = serializers.CharField(allow_blank=True)
    last_name = serializers.CharField(allow_blank=True)
    display_name = serializers.CharField(allow_blank=True)
    department = serializers.CharField(allow_blank=True)
    title = serializers.CharField(allow_blank=True)
    location = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    manager_id = serializers.UUIDField(allow_null=True)
    manager_external_id = serializers.CharField(allow_blank=True)


class IdentityEventData(serializers.Serializer):
    identity = IdentityData()
    changes = serializers.DictField(required=False, help_text="identity.updated: field -> [before, after].")


class RequestEventData(serializers.Serializer):
    request = serializers.DictField(help_text="id, status, requested_for_identity_id, external_reference.")


class CertificationEventData(serializers.Serializer):
    certification = serializers.DictField(help_text="id, name, completed_at.")


class AgentEventData(serializers.Serializer):
    agent = serializers.DictField(help_text="id, name, last_heartbeat_at.")


class PingData(serializers.Serializer):
    subscription_id = serializers.UUIDField()


def _envelope(name: str, data_serializer) -> type[serializers.Serializer]:
    return type(name, (serializers.Serializer,), {
        "id": serializers.UUIDField(help_text="Event id: the same on every attempt; de-duplicate on it."),
        "type": serializers.CharField(),
        "version": serializers.IntegerField(),
        "tenant": serializers.CharField(),
        "occurred_at": serializers.DateTimeField(),
        "data": data_serializer(),
        "__doc__": f"Webhook event body ({name}).",
    })


IdentityEvent = _envelope("IdentityWebhookEvent", IdentityEventData)
RequestEvent = _envelope("RequestWebhookEvent", RequestEventData)
CertificationEvent = _envelope("CertificationWebhookEvent", CertificationEventData)
AgentEvent = _envelope("AgentWebhookEvent", AgentEventData)
PingEvent = _envelope("PingWebhookEvent", PingData)

EVENT_BODY = PolymorphicProxySerializer(
    component_name="WebhookEventBody",
    serializers={
        "identity.created": IdentityEvent, "identity.updated": IdentityEvent, "identity.deactivated": IdentityEvent,
        "request.submitted": RequestEvent, "request.approved": RequestEvent, "request.rejected": RequestEvent,
        "certification.completed": CertificationEvent,
        "agent.online": AgentEvent, "agent.offline": AgentEvent,
        "webhook.ping": PingEvent,
    },
    resource_type_field_name="type",
)
