from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from connectors import services
from connectors.models import ConnectorInstance, SyncRecordError, SyncRun
from rapidvalue.api.errors import Conflict
from rapidvalue.api.views import UUID_LOOKUP, PlatformAPIView, PlatformGenericViewSet, PlatformModelViewSet

from .serializers import (
    ConnectorSerializer,
    SyncRecordErrorSerializer,
    SyncRunSerializer,
    SyncStartedSerializer,
    SyncStartSerializer,
    TestResultSerializer,
)

UUID_RE = UUID_LOOKUP


def _started(run: SyncRun, secret: str | None) -> dict:
    data = SyncRunSerializer(run).data
    data["callback_secret"] = secret
    return data


@extend_schema(tags=["connectors"])
class ConnectorViewSet(PlatformModelViewSet):
    queryset = ConnectorInstance.objects.order_by("name", "id")
    serializer_class = ConnectorSerializer
    read_roles = ("admin", "auditor")
    filterset_fields = ["type", "mode", "enabled", "authoritative"]
    lookup_value_regex = UUID_RE
    secret_response_fields = ("callback_secret",)
    # An agent-mode test is a job the agent must see committed while this request waits for it.
    non_transactional_actions = ("test",)

    def perform_create(self, serializer):
        serializer.instance = services.create_connector(**serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.update_connector(serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        from rapidvalue.audit import services as audit

        before = audit.snapshot(instance)
        pk = instance.pk
        instance.delete()
        audit.record("connector.delete", "connector", pk, before=before)

    @extend_schema(request=None, responses={200: TestResultSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Try the connection now (through the agent for agent-mode connectors: up to 30 s)."""
        return Response(services.test_connection(self.get_object()).model_dump())

    @extend_schema(request=SyncStartSerializer, responses={202: SyncStartedSerializer})
    @action(detail=True, methods=["post"])
    def sync(self, request, pk=None):
        body = SyncStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        run, secret = services.start_sync(
            self.get_object(), incremental=data["incremental"], max_records=data.get("max_records"),
            chunk_size=data["chunk_size"], callback_url=data.get("callback_url") or "",
            requested_by=request.user.label,
        )
        return Response(_started(run, secret), status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["connectors"])
class SyncRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PlatformGenericViewSet):
    serializer_class = SyncRunSerializer
    read_roles = ("admin", "auditor")
    filterset_fields = ["status"]
    lookup_value_regex = UUID_RE
    queryset = SyncRun.objects.order_by("-created_at", "id")

    def get_queryset(self):
        return super().get_queryset().filter(connector_id=self.kwargs["connector_pk"])

    @extend_schema(request=None, responses={200: SyncRunSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, connector_pk=None, pk=None):
        return Response(SyncRunSerializer(services.cancel_sync(self.get_object())).data)

    @extend_schema(responses={200: SyncRecordErrorSerializer(many=True)})
    @action(detail=True, methods=["get"], filterset_fields=[])
    def errors(self, request, connector_pk=None, pk=None):
        run = self.get_object()
        page = self.paginate_queryset(SyncRecordError.objects.filter(run=run).order_by("id"))
        return self.get_paginated_response(SyncRecordErrorSerializer(page, many=True).data)


@extend_schema(tags=["identities"])
class IdentitySyncView(PlatformAPIView):
    """Sync every enabled authoritative (HR) source now.

    A source that cannot start (already running, its agent revoked) does not stop the others: it
    is named in the ``X-RapidValue-Skipped`` header (``<connector id>=<error code>``, comma-separated).
    When none can start, the first refusal is the answer (409).
    """

    transactional_writes = True

    @extend_schema(request=SyncStartSerializer, responses={202: SyncStartedSerializer(many=True)})
    def post(self, request):
        body = SyncStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        started, skipped = [], []
        for connector in ConnectorInstance.objects.filter(authoritative=True, enabled=True).order_by("name"):
            try:
                with transaction.atomic():  # a refused source leaves nothing behind, the others go on
                    run, secret = services.start_sync(
                        connector, incremental=data["incremental"], max_records=data.get("max_records"),
                        chunk_size=data["chunk_size"], callback_url=data.get("callback_url") or "",
                        requested_by=request.user.label)
            except Conflict as exc:
                skipped.append((connector, exc))
                continue
            started.append(_started(run, secret))
        if skipped and not started:
            raise skipped[0][1]
        response = Response(started, status=status.HTTP_202_ACCEPTED)
        if skipped:
            response["X-RapidValue-Skipped"] = ",".join(f"{c.pk}={exc.get_codes()}" for c, exc in skipped)
        return response
