from __future__ import annotations

from rest_framework import serializers

from connectors.base import connector_types
from connectors.dispatcher import agent_exists
from connectors.models import ConnectorInstance, SyncRecordError, SyncRun
from connectors.sync.engine import CORRELATION_ACCOUNT, CORRELATION_IDENTITY
from rapidvalue.api.serializers import PlatformModelSerializer, PlatformSerializer


class ConnectorSerializer(PlatformModelSerializer):
    type = serializers.ChoiceField(choices=connector_types())
    auth_config = serializers.DictField(write_only=True, required=False,
                                        help_text="Credentials: encrypted at rest, never returned.")
    config = serializers.DictField(required=False)
    correlation_rules = serializers.ListField(child=serializers.DictField(), required=False)
    schedule_minutes = serializers.IntegerField(required=False, allow_null=True, min_value=5, max_value=10080)

    class Meta:
        model = ConnectorInstance
        fields = ["id", "name", "type", "mode", "agent_id", "application", "config", "auth_config",
                  "correlation_rules", "authoritative", "schedule_minutes", "enabled", "last_success_at",
                  "created_at", "updated_at"]
        read_only_fields = ["id", "application", "last_success_at", "created_at", "updated_at"]

    def validate_correlation_rules(self, rules):
        for rule in rules:
            account, identity = rule.get("account", ""), rule.get("identity", "")
            if (account not in CORRELATION_ACCOUNT and not str(account).startswith("attributes.")) or (
                    identity not in CORRELATION_IDENTITY):
                raise serializers.ValidationError(
                    f"Each rule is {{'account': one of {sorted(CORRELATION_ACCOUNT)} or 'attributes.<name>', "
                    f"'identity': one of {sorted(CORRELATION_IDENTITY)}}}.")
        return rules

    def validate(self, attrs):
        mode = attrs.get("mode", getattr(self.instance, "mode", "hosted"))
        agent = attrs.get("agent_id", getattr(self.instance, "agent_id", None))
        if mode == "agent" and not agent:
            raise serializers.ValidationError({"agent_id": ["Agent mode needs the agent that runs the connector."]})
        # Checked when the agent is chosen: a connector whose agent was revoked since can still be
        # edited (disabled, renamed) until it is moved to another agent or back to hosted mode.
        chosen = self.instance is None or str(agent) != str(self.instance.agent_id) or mode != self.instance.mode
        if agent and chosen and not agent_exists(agent):
            raise serializers.ValidationError({"agent_id": ["No agent with this id."]})
        if self.instance is not None and "type" in attrs and attrs["type"] != self.instance.type:
            raise serializers.ValidationError({"type": ["The type of a connector cannot change."]})
        return attrs


class SyncStartSerializer(PlatformSerializer):
    """Pattern 3 of the API contract."""

    incremental = serializers.BooleanField(default=False)
    max_records = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    chunk_size = serializers.IntegerField(default=1000, min_value=1, max_value=50000)
    callback_url = serializers.URLField(required=False, allow_blank=True, allow_null=True, max_length=2000)


class SyncRunSerializer(PlatformModelSerializer):
    class Meta:
        model = SyncRun
        fields = ["id", "connector", "status", "incremental", "max_records", "chunk_size", "callback_url",
                  "requested_by", "counts", "processed", "total_estimate", "progress", "cancel_requested",
                  "status_detail", "error", "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class SyncStartedSerializer(SyncRunSerializer):
    callback_secret = serializers.CharField(allow_null=True, read_only=True,
                                            help_text="Verifies callback signatures; shown once.")

    class Meta(SyncRunSerializer.Meta):
        fields = [*SyncRunSerializer.Meta.fields, "callback_secret"]
        read_only_fields = fields


class SyncRecordErrorSerializer(PlatformModelSerializer):
    class Meta:
        model = SyncRecordError
        fields = ["id", "kind", "key", "location", "error"]
        read_only_fields = fields


class TestResultSerializer(PlatformSerializer):
    success = serializers.BooleanField()
    message = serializers.CharField(allow_blank=True)
    details = serializers.DictField()
