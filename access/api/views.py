from __future__ import annotations

from datetime import timedelta

import django_filters
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.response import Response

from access import services
from access.models import Account, Application, Entitlement, Grant, Role
from rapidvalue.api.filters import PlatformFilterSet, StrictBooleanFilter
from rapidvalue.api.pagination import CursorEnvelopePagination
from rapidvalue.api.views import UUID_LOOKUP, AuditedWritesMixin, PlatformGenericViewSet, PlatformModelViewSet

from .serializers import (
    AccountSerializer,
    ApplicationSerializer,
    EntitlementSerializer,
    GrantSerializer,
    LinkSerializer,
    RoleSerializer,
)

UUID_RE = UUID_LOOKUP


@extend_schema(tags=["entitlements"])
class ApplicationViewSet(AuditedWritesMixin, PlatformModelViewSet):
    queryset = Application.objects.prefetch_related("owners").order_by("name", "id")
    serializer_class = ApplicationSerializer
    filterset_fields = ["kind"]
    lookup_value_regex = UUID_RE


class EntitlementFilter(PlatformFilterSet):
    q = django_filters.CharFilter(method="search")
    # Ids filter as plain UUIDs: an unknown id is an empty result, not a 400.
    application = django_filters.UUIDFilter(field_name="application_id")
    owner = django_filters.UUIDFilter(field_name="owner_id")

    class Meta:
        model = Entitlement
        fields = ["type", "risk_level", "requestable"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(value__icontains=value) | Q(display_name__icontains=value))


@extend_schema(tags=["entitlements"])
class EntitlementViewSet(AuditedWritesMixin, PlatformModelViewSet):
    queryset = Entitlement.objects.order_by("application_id", "value", "id")
    serializer_class = EntitlementSerializer
    filterset_class = EntitlementFilter
    lookup_value_regex = UUID_RE


@extend_schema(tags=["entitlements"])
class RoleViewSet(AuditedWritesMixin, PlatformModelViewSet):
    queryset = Role.objects.prefetch_related("owners", "entitlements", "includes").order_by("name", "id")
    serializer_class = RoleSerializer
    filterset_fields = ["requestable"]
    lookup_value_regex = UUID_RE


class AccountFilter(PlatformFilterSet):
    orphan = StrictBooleanFilter(field_name="identity", lookup_expr="isnull",
                                 help_text="true: accounts linked to no identity.")
    dormant_days = django_filters.NumberFilter(method="dormant", min_value=0, max_value=36500,
                                               help_text="No login for at least this many days (or never).")

    application = django_filters.UUIDFilter(field_name="application_id")
    identity = django_filters.UUIDFilter(field_name="identity_id")

    class Meta:
        model = Account
        fields = ["status"]

    @extend_schema_field({"type": "number", "minimum": 0, "maximum": 36500})
    def dormant(self, queryset, name, value):
        cutoff = timezone.now() - timedelta(days=int(value))
        return queryset.filter(Q(last_login_at__lt=cutoff) | Q(last_login_at__isnull=True))


@extend_schema(tags=["accounts"])
class AccountViewSet(AuditedWritesMixin, PlatformModelViewSet):
    queryset = Account.objects.order_by("application_id", "username", "id")
    serializer_class = AccountSerializer
    filterset_class = AccountFilter
    lookup_value_regex = UUID_RE

    def perform_destroy(self, instance):
        services.delete_account(instance)

    def _act(self, operation, *args):
        account = operation(self.get_object(), *args)
        return Response(AccountSerializer(account).data)

    @extend_schema(request=None, responses={200: AccountSerializer})
    @action(detail=True, methods=["post"])
    def enable(self, request, pk=None):
        return self._act(services.enable_account)

    @extend_schema(request=None, responses={200: AccountSerializer})
    @action(detail=True, methods=["post"])
    def disable(self, request, pk=None):
        return self._act(services.disable_account)

    @extend_schema(request=None, responses={200: AccountSerializer})
    @action(detail=True, methods=["post"], url_path="delete")
    def mark_deleted(self, request, pk=None):
        return self._act(services.delete_account)

    @extend_schema(request=LinkSerializer, responses={200: AccountSerializer})
    @action(detail=True, methods=["post"])
    def link(self, request, pk=None):
        body = LinkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._act(services.link_account, body.validated_data["identity_id"])

    @extend_schema(request=None, responses={200: AccountSerializer})
    @action(detail=True, methods=["post"])
    def unlink(self, request, pk=None):
        return self._act(services.unlink_account)


class GrantFilter(PlatformFilterSet):
    identity = django_filters.UUIDFilter(field_name="identity_id")
    account = django_filters.UUIDFilter(field_name="account_id")
    entitlement = django_filters.UUIDFilter(field_name="entitlement_id")
    role = django_filters.UUIDFilter(field_name="role_id")

    class Meta:
        model = Grant
        fields = ["state", "source"]


@extend_schema(tags=["entitlements"])
class GrantViewSet(AuditedWritesMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                   PlatformGenericViewSet):
    """Grants (2M per tenant is normal): keyset pagination with ``?cursor=``."""

    queryset = Grant.objects.all()
    serializer_class = GrantSerializer
    filterset_class = GrantFilter
    pagination_class = CursorEnvelopePagination
    cursor_field = "id"
    cursor_descending = False
    lookup_value_regex = UUID_RE

    def perform_create(self, serializer):
        serializer.validated_data["granted_by"] = self.request.user.label
        super().perform_create(serializer)

    @extend_schema(request=None, responses={200: GrantSerializer})
    @action(detail=True, methods=["post"])
    def end(self, request, pk=None):
        return Response(GrantSerializer(services.end_grant(self.get_object())).data)
