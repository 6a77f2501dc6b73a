from __future__ import annotations

from rest_framework import serializers

from agentspine.models import Agent, AgentJob
from agentspine.services.enrollment import connector_ids_of
from rapidvalue.api.serializers import PlatformModelSerializer, PlatformSerializer


class AgentSerializer(PlatformModelSerializer):
    connector_ids = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=500,
                                          help_text="Connectors this agent runs (they switch to agent mode).")
    state = serializers.ChoiceField(choices=Agent.State.choices, read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "name", "connector_ids", "state", "online", "last_heartbeat_at", "online_since",
                  "offline_since", "version", "hostname", "capabilities", "running_jobs", "enrolled_at",
                  "revoked_at", "created_at", "created_by"]
        read_only_fields = [f for f in fields if f not in ("name", "connector_ids")]
        # A duplicate name is a 409 from the service (like other conflicts), not a field error.
        extra_kwargs = {"name": {"validators": []}}

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["connector_ids"] = connector_ids_of(instance)
        return data


class EnrollmentCodeSerializer(PlatformSerializer):
    enrollment_code = serializers.CharField(read_only=True, help_text="One-time code; shown once.")
    enrollment_code_expires_at = serializers.DateTimeField(read_only=True)


class AgentCreatedSerializer(AgentSerializer):
    enrollment_code = serializers.CharField(read_only=True, help_text="One-time code; shown once.")
    enrollment_code_expires_at = serializers.DateTimeField(read_only=True)

    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "enrollment_code", "enrollment_code_expires_at"]


class AgentJobSerializer(PlatformModelSerializer):
    class Meta:
        model = AgentJob
        fields = ["id", "agent", "connector", "sync_run", "kind", "status", "attempt", "leased_until", "chunk_count",
                  "error", "created_at", "leased_at", "finished_at"]
        read_only_fields = fields


# -- the agent's side ------------------------------------------------------------------------

class RegisterSerializer(PlatformSerializer):
    code = serializers.CharField(max_length=200)
    version = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    hostname = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class RegisteredSerializer(PlatformSerializer):
    token = serializers.CharField(help_text="The agent token: valid only on /api/v1/agent/*; shown once.")
    agent_id = serializers.UUIDField()
    name = serializers.CharField()
    tenant = serializers.CharField()
    heartbeat_seconds = serializers.IntegerField()


class TokenSerializer(PlatformSerializer):
    token = serializers.CharField(help_text="The new agent token; the previous one stopped working.")


class HeartbeatSerializer(PlatformSerializer):
    version = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    hostname = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    capabilities = serializers.DictField(required=False, default=dict)
    running_jobs = serializers.ListField(child=serializers.UUIDField(), required=False, default=list, max_length=100)


class HeartbeatAckSerializer(PlatformSerializer):
    state = serializers.CharField()
    heartbeat_seconds = serializers.IntegerField()
    server_time = serializers.DateTimeField()
    released_jobs = serializers.ListField(
        child=serializers.UUIDField(),
        help_text="Jobs from running_jobs this agent no longer holds (cancelled, timed out): stop working on them.")


class LeaseSerializer(PlatformSerializer):
    id = serializers.UUIDField()
    expires_at = serializers.DateTimeField()
    seconds = serializers.IntegerField()


class JobConnectorSerializer(PlatformSerializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    type = serializers.CharField()


class LeasedJobSerializer(PlatformSerializer):
    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=AgentJob.Kind.choices)
    attempt = serializers.IntegerField()
    connector = JobConnectorSerializer()
    request = serializers.DictField(help_text="The protocol request without auth_config (the agent adds its own).")
    lease = LeaseSerializer()


class LeaseRefSerializer(PlatformSerializer):
    lease_id = serializers.UUIDField()


class ChunkSerializer(LeaseRefSerializer):
    sequence = serializers.IntegerField(min_value=0, max_value=1_000_000)
    payload = serializers.DictField(help_text="A ResultChunk of the connector protocol (record lists).")


class ChunkStoredSerializer(PlatformSerializer):
    sequence = serializers.IntegerField()
    stored = serializers.BooleanField(help_text="False when this sequence number had already been received.")
    lease_expires_at = serializers.DateTimeField()


class CompleteSerializer(LeaseRefSerializer):
    chunk_count = serializers.IntegerField(min_value=0, max_value=1_000_000)
    result = serializers.DictField(help_text="The protocol response without its record lists (sent as chunks).")


class FailSerializer(LeaseRefSerializer):
    error = serializers.CharField(max_length=5000)


class JobStateSerializer(PlatformSerializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)
