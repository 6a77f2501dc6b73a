from __future__ import annotations

from rest_framework import serializers

from identities.models import Identity, LifecycleEvent
from rapidvalue.api.serializers import FastRepresentationMixin, PlatformModelSerializer, PlatformSerializer


class IdentitySerializer(FastRepresentationMixin, PlatformModelSerializer):
    """Pattern 1 of the API contract: ``manager_external_id`` names the manager, in any order.

    Read through :class:`FastRepresentationMixin`: identity lists are the hottest read of the API.
    """

    manager_external_id = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    manager_id = serializers.UUIDField(required=False, allow_null=True,
                                       help_text="The manager by RapidValue id (alternative to manager_external_id).")
    external_id = serializers.CharField(max_length=200)

    class Meta:
        model = Identity
        fields = ["id", "external_id", "email", "first_name", "last_name", "display_name", "department", "title",
                  "location", "employment_type", "status", "start_date", "end_date", "manager_id",
                  "manager_external_id", "attributes", "depth", "created_at", "updated_at"]
        read_only_fields = ["id", "depth", "created_at", "updated_at"]

    def validate_external_id(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("external_id must not be blank.")
        return value

    def validate_attributes(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("attributes must be a JSON object.")
        return value

    def validate(self, attrs):
        if "manager_id" in attrs:
            manager_id = attrs.pop("manager_id")
            manager = None if manager_id is None else Identity.objects.filter(pk=manager_id).first()
            if manager_id is not None and manager is None:
                raise serializers.ValidationError({"manager_id": ["No identity with this id."]})
            attrs["manager"] = manager
        start, end = attrs.get("start_date"), attrs.get("end_date")
        if start and end and end < start:
            raise serializers.ValidationError({"end_date": ["end_date is before start_date."]})
        return attrs


class LifecycleEventSerializer(PlatformModelSerializer):
    class Meta:
        model = LifecycleEvent
        fields = ["id", "kind", "identity", "changes", "source", "occurred_at"]
        read_only_fields = fields


class AccessItemSerializer(PlatformSerializer):
    """One entitlement or role an identity holds, and how (``path``)."""

    kind = serializers.ChoiceField(choices=["entitlement", "role"])
    entitlement = serializers.DictField(allow_null=True)
    role = serializers.DictField(allow_null=True)
    grant_id = serializers.UUIDField()
    account_id = serializers.UUIDField(allow_null=True)
    source = serializers.CharField()
    path = serializers.ChoiceField(choices=["direct", "role", "birthright", "request", "sync", "role_mining"])
    via_roles = serializers.ListField(child=serializers.DictField())

    def to_representation(self, instance):
        """Items from ``access.effective`` are built in their JSON form (string ids, plain dicts and
        lists of JSON values): DRF's per-field pass would copy them unchanged at ~2 ms per page."""
        names = self._declared_fields.keys()
        if isinstance(instance, dict) and instance.keys() == names:
            return {name: instance[name] for name in names}
        return super().to_representation(instance)
