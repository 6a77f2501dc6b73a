from __future__ import annotations

import django_filters
from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from access.effective import effective_access_page
from identities import services
from identities.models import Identity
from rapidvalue.api import scoping
from rapidvalue.api.filters import PlatformFilterSet
from rapidvalue.api.pagination import EnvelopePagination
from rapidvalue.api.views import UUID_LOOKUP, PlatformModelViewSet

from .serializers import AccessItemSerializer, IdentitySerializer


class IdentityFilter(PlatformFilterSet):
    status = django_filters.ChoiceFilter(choices=Identity.Status.choices)
    department = django_filters.CharFilter(field_name="department")
    manager = django_filters.UUIDFilter(field_name="manager_id")
    employment_type = django_filters.ChoiceFilter(choices=Identity.EmploymentType.choices)
    q = django_filters.CharFilter(method="search", help_text="Free text: name, email or external id.")

    class Meta:
        model = Identity
        fields: list[str] = []

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(display_name__icontains=value) | Q(email__icontains=value) | Q(external_id__icontains=value)
            | Q(last_name__icontains=value) | Q(first_name__icontains=value)
        )


@extend_schema(tags=["identities"])
class IdentityViewSet(PlatformModelViewSet):
    queryset = Identity.objects.order_by("last_name", "first_name", "id").defer("path")
    serializer_class = IdentitySerializer
    filterset_class = IdentityFilter
    lookup_value_regex = UUID_LOOKUP
    page_by_primary_keys = True  # identity_name_path_idx covers the order and the manager scope

    def perform_create(self, serializer):
        serializer.instance = services.create_identity(**serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.update_identity(serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        from rapidvalue.api.errors import Conflict

        raise Conflict("Identities are deactivated, not deleted: POST /identities/{id}/deactivate.",
                       code="use_deactivate")

    @extend_schema(request=None, responses={200: IdentitySerializer})
    @action(detail=True, methods=["post"])
    def deactivate(self, request, pk=None):
        identity = services.deactivate_identity(self.get_object())
        return Response(IdentitySerializer(identity).data, status=status.HTTP_200_OK)

    @extend_schema(
        parameters=[OpenApiParameter("indirect", bool, description="Include reports at any depth.")],
        responses={200: IdentitySerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filterset_class=None)
    def reports(self, request, pk=None):
        identity = self.get_object()
        indirect = request.query_params.get("indirect", "false").lower()
        if indirect not in {"true", "false", "1", "0"}:
            raise ValidationError({"indirect": ["Must be true or false."]})
        if indirect in {"true", "1"}:
            reports = Identity.objects.filter(path__startswith=identity.path).exclude(pk=identity.pk)
        else:
            reports = Identity.objects.filter(manager=identity)
        reports = scoping.restrict(reports, request.user).order_by("last_name", "first_name", "id")
        page = self.paginate_queryset(reports)
        return self.get_paginated_response(IdentitySerializer(page, many=True).data)

    @extend_schema(responses={200: AccessItemSerializer(many=True)})
    @action(detail=True, methods=["get"], filterset_class=None)
    def access(self, request, pk=None):
        identity = self.get_object()
        paginator = EnvelopePagination()
        page = paginator.paginate_in_sql(lambda limit, offset: effective_access_page(identity.pk, limit, offset),
                                         request)
        return paginator.get_paginated_response(AccessItemSerializer(page, many=True).data)
