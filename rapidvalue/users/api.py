"""``/api/v1/users``: tenant users, managed by tenant admins."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from rapidvalue.api.serializers import PlatformModelSerializer
from rapidvalue.api.views import PlatformModelViewSet

from . import services
from .models import User


class UserSerializer(PlatformModelSerializer):
    password = serializers.CharField(
        write_only=True, required=False, max_length=256, trim_whitespace=False, style={"input_type": "password"},
        help_text="Required on create; on update, sets a new password.",
    )
    email = serializers.EmailField(max_length=254)

    class Meta:
        model = User
        fields = ["id", "email", "full_name", "password", "is_admin", "is_auditor", "is_active", "identity_id",
                  "date_joined", "last_login"]
        read_only_fields = ["id", "date_joined", "last_login"]

    def validate_identity_id(self, value):
        """The identity must exist in this tenant (looked up through the app registry: the
        platform does not import the identities app)."""
        from django.apps import apps

        if value is not None and apps.is_installed("identities"):
            identity_model = apps.get_model("identities", "Identity")
            if not identity_model.objects.filter(pk=value).exists():
                raise serializers.ValidationError("No identity with this id.")
        return value

    def validate(self, attrs):
        if self.instance is None and not attrs.get("password"):
            raise serializers.ValidationError({"password": ["This field is required."]})
        is_admin = attrs.get("is_admin", getattr(self.instance, "is_admin", False))
        is_auditor = attrs.get("is_auditor", getattr(self.instance, "is_auditor", False))
        if is_admin and is_auditor:
            raise serializers.ValidationError(
                {"is_auditor": ["A user is either an admin or an auditor: an auditor can never write."]}
            )
        return attrs


@extend_schema(tags=["users"])
class UserViewSet(PlatformModelViewSet):
    queryset = User.objects.order_by("id")
    serializer_class = UserSerializer
    read_roles = ("admin", "auditor")
    filterset_fields = ["is_admin", "is_auditor", "is_active"]

    def _acting_user_id(self) -> int | None:
        user = getattr(self.request.user, "user", None)
        return user.pk if user is not None and self.request.user.kind == "user" else None

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.create_user(email=data.pop("email"), password=data.pop("password"), **data)

    def perform_update(self, serializer):
        serializer.instance = services.update_user(
            serializer.instance, acting_user_id=self._acting_user_id(), **serializer.validated_data
        )

    def perform_destroy(self, instance):
        services.delete_user(instance, acting_user_id=self._acting_user_id())
