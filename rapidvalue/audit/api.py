"""``/api/v1/audit-events``: read-only, admin and auditor only, cursor-paginated."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from rapidvalue.api.filters import IsoDateTimeFilter, PlatformFilterSet
from rapidvalue.api.pagination import CursorEnvelopePagination
from rapidvalue.api.views import PlatformReadOnlyViewSet

from .models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "occurred_at", "tenant", "actor_type", "actor_id", "actor_label", "token_kind", "action",
                  "object_type", "object_id", "before", "after", "changes", "request_id", "ip"]
        read_only_fields = fields


class AuditEventFilter(PlatformFilterSet):
    actor = django_filters.CharFilter(method="filter_actor", help_text="Actor id or label (email, token name).")
    action = django_filters.CharFilter(field_name="action")
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith")
    object_type = django_filters.CharFilter(field_name="object_type")
    object_id = django_filters.CharFilter(field_name="object_id")
    since = IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields: list[str] = []

    def filter_actor(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(actor_id=value) | Q(actor_label__iexact=value))


@extend_schema(tags=["audit"])
class AuditEventViewSet(PlatformReadOnlyViewSet):
    queryset = AuditEvent.objects.order_by("-id")
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    pagination_class = CursorEnvelopePagination
    read_roles = ("admin", "auditor")
    cursor_field = "id"
    cursor_descending = True
