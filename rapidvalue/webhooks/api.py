"""``/api/v1/webhooks``: subscriptions (admin), test ping, secret rotation, delivery log."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from rapidvalue.api.serializers import PlatformModelSerializer, PlatformSerializer
from rapidvalue.api.views import UUID_LOOKUP, PlatformGenericViewSet, PlatformModelViewSet

from . import services
from .delivery import envelope
from .events import EVENT_TYPES
from .models import WebhookDelivery, WebhookSubscription
from .payloads import EVENT_BODY


class SubscriptionSerializer(PlatformModelSerializer):
    url = serializers.URLField(max_length=2000)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(EVENT_TYPES)), allow_empty=False,
        help_text="Any of: " + ", ".join(sorted(EVENT_TYPES)),
    )

    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "description", "event_types", "enabled", "created_by", "created_at", "updated_at"]
        read_only_fields = ["id", "created_by", "created_at", "updated_at"]


class SubscriptionWithSecretSerializer(SubscriptionSerializer):
    secret = serializers.CharField(read_only=True, help_text="Signing secret: shown once, store it now.")

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "secret"]


@extend_schema_field(EVENT_BODY)
class EventBodyField(serializers.Field):
    def to_representation(self, value):
        return envelope(value)


class DeliverySerializer(PlatformModelSerializer):
    event = EventBodyField(read_only=True)
    event_type = serializers.CharField(source="event.type", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "event_type", "event", "status", "attempts", "next_attempt_at", "last_status_code",
                  "last_error", "last_latency_ms", "response_excerpt", "delivered_at", "created_at"]
        read_only_fields = fields


class PingResultSerializer(PlatformSerializer):
    event_id = serializers.UUIDField()


def _with_secret(result) -> dict:
    data = SubscriptionSerializer(result.subscription).data
    data["secret"] = result.secret
    return data


@extend_schema(tags=["webhooks"])
class WebhookViewSet(PlatformModelViewSet):
    queryset = WebhookSubscription.objects.order_by("created_at", "id")
    serializer_class = SubscriptionSerializer
    read_roles = ("admin", "auditor")
    lookup_value_regex = UUID_LOOKUP
    secret_response_fields = ("secret",)

    @extend_schema(responses={201: SubscriptionWithSecretSerializer})
    def create(self, request, *args, **kwargs):
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.create_subscription(created_by=request.user.label, **body.validated_data)
        return Response(_with_secret(result), status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        serializer.instance = services.update_subscription(serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        services.delete_subscription(instance)

    @extend_schema(request=None, responses={200: SubscriptionWithSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        return Response(_with_secret(services.rotate_secret(self.get_object())))

    @extend_schema(request=None, responses={202: PingResultSerializer})
    @action(detail=True, methods=["post"])
    def ping(self, request, pk=None):
        event = services.ping(self.get_object())
        return Response({"event_id": str(event.id)}, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["webhooks"])
class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PlatformGenericViewSet):
    """The delivery log of one subscription: status, attempts, response code and latency."""

    serializer_class = DeliverySerializer
    read_roles = ("admin", "auditor")
    filterset_fields = ["status"]
    lookup_value_regex = "[0-9]+"
    queryset = WebhookDelivery.objects.select_related("event").order_by("-id")

    def get_queryset(self):
        return super().get_queryset().filter(subscription_id=self.kwargs["subscription_pk"])

    @extend_schema(request=None, responses={202: DeliverySerializer, 409: OpenApiResponse(description="In progress")})
    @action(detail=True, methods=["post"])
    def redeliver(self, request, subscription_pk=None, pk=None):
        delivery = services.redeliver(self.get_object())
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
