from __future__ import annotations

from rest_framework import serializers

from access.models import Account, Application, Entitlement, Grant, Role
from identities.models import Identity
from rapidvalue.api.serializers import PlatformModelSerializer, PlatformSerializer


class ApplicationSerializer(PlatformModelSerializer):
    owners = serializers.PrimaryKeyRelatedField(many=True, queryset=Identity.objects.all(), required=False)

    class Meta:
        model = Application
        fields = ["id", "name", "description", "kind", "owners", "created_at"]
        read_only_fields = ["id", "created_at"]


class AccountSerializer(PlatformModelSerializer):
    application = serializers.PrimaryKeyRelatedField(queryset=Application.objects.all())
    identity = serializers.PrimaryKeyRelatedField(queryset=Identity.objects.all(), required=False, allow_null=True)
    is_orphan = serializers.SerializerMethodField()

    class Meta:
        model = Account
        fields = ["id", "application", "identity", "native_id", "username", "status", "last_login_at",
                  "attributes", "is_orphan", "created_at", "updated_at"]
        read_only_fields = ["id", "status", "is_orphan", "created_at", "updated_at"]

    def get_is_orphan(self, obj: Account) -> bool:
        return obj.identity_id is None


class LinkSerializer(PlatformSerializer):
    identity_id = serializers.PrimaryKeyRelatedField(queryset=Identity.objects.all())


class EntitlementSerializer(PlatformModelSerializer):
    application = serializers.PrimaryKeyRelatedField(queryset=Application.objects.all())
    owner = serializers.PrimaryKeyRelatedField(queryset=Identity.objects.all(), required=False, allow_null=True)

    class Meta:
        model = Entitlement
        fields = ["id", "application", "value", "display_name", "type", "description", "risk_level", "owner",
                  "requestable", "created_at"]
        read_only_fields = ["id", "created_at"]


class RoleSerializer(PlatformModelSerializer):
    owners = serializers.PrimaryKeyRelatedField(many=True, queryset=Identity.objects.all(), required=False)
    entitlements = serializers.PrimaryKeyRelatedField(many=True, queryset=Entitlement.objects.all(), required=False)
    includes = serializers.PrimaryKeyRelatedField(many=True, queryset=Role.objects.all(), required=False)

    class Meta:
        model = Role
        fields = ["id", "name", "description", "requestable", "owners", "entitlements", "includes", "created_at"]
        read_only_fields = ["id", "created_at"]

    def _save_includes(self, role: Role, includes) -> None:
        from access.services import set_role_includes

        if includes is not None:
            set_role_includes(role, includes)

    def create(self, validated_data):
        includes = validated_data.pop("includes", None)
        role = super().create(validated_data)
        self._save_includes(role, includes)
        return role

    def update(self, instance, validated_data):
        includes = validated_data.pop("includes", None)
        role = super().update(instance, validated_data)
        self._save_includes(role, includes)
        return role


class GrantSerializer(PlatformModelSerializer):
    identity = serializers.PrimaryKeyRelatedField(queryset=Identity.objects.all(), required=False, allow_null=True)
    account = serializers.PrimaryKeyRelatedField(queryset=Account.objects.all(), required=False, allow_null=True)
    entitlement = serializers.PrimaryKeyRelatedField(queryset=Entitlement.objects.all(), required=False,
                                                     allow_null=True)
    role = serializers.PrimaryKeyRelatedField(queryset=Role.objects.all(), required=False, allow_null=True)

    class Meta:
        model = Grant
        fields = ["id", "identity", "account", "entitlement", "role", "source", "source_reference", "granted_by",
                  "valid_from", "valid_until", "state", "ended_at", "created_at"]
        read_only_fields = ["id", "granted_by", "state", "ended_at", "created_at"]
        # The model's unique constraints only cover grants discovered by sync; DRF would turn
        # them into "required" fields for every grant.
        validators: list = []

    def validate(self, attrs):
        identity, account = attrs.get("identity"), attrs.get("account")
        if identity and account and account.identity_id not in (None, identity.pk):
            raise serializers.ValidationError({"account": ["The account belongs to another identity."]})
        if bool(attrs.get("entitlement")) == bool(attrs.get("role")):
            raise serializers.ValidationError({"entitlement": ["Give exactly one of entitlement and role."]})
        if not attrs.get("identity") and not attrs.get("account"):
            raise serializers.ValidationError({"identity": ["Give an identity or an account."]})
        account, entitlement = attrs.get("account"), attrs.get("entitlement")
        if account and entitlement and account.application_id != entitlement.application_id:
            raise serializers.ValidationError({"account": ["The account is in another application."]})
        if attrs.get("valid_from") and attrs.get("valid_until") and attrs["valid_until"] <= attrs["valid_from"]:
            raise serializers.ValidationError({"valid_until": ["valid_until must be after valid_from."]})
        return attrs
