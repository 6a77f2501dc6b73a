"""``/api/v1/agents`` (admins manage agents) and ``/api/v1/agent/*`` (the agent's own endpoints).

The agent endpoints accept agent tokens and nothing else (AgentTokenAuthentication); the agent
endpoints hold no business logic: enrollment, presence and jobs live in ``agentspine.services``.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from pydantic import ValidationError as PydanticValidationError
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from agentspine.models import Agent, AgentJob
from agentspine.services import enrollment, jobs, presence
from connectors.protocol.v1 import ResultChunk
from rapidvalue.api.views import UUID_LOOKUP, PlatformAPIView, PlatformGenericViewSet
from rapidvalue.authn.api import IsAgent
from rapidvalue.authn.authentication import AgentTokenAuthentication

from .serializers import (
    AgentCreatedSerializer,
    AgentJobSerializer,
    AgentSerializer,
    ChunkSerializer,
    ChunkStoredSerializer,
    CompleteSerializer,
    EnrollmentCodeSerializer,
    FailSerializer,
    HeartbeatAckSerializer,
    HeartbeatSerializer,
    JobStateSerializer,
    LeasedJobSerializer,
    LeaseRefSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    TokenSerializer,
)


@extend_schema(tags=["agents"])
class AgentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                   mixins.UpdateModelMixin, PlatformGenericViewSet):
    """Agents of the tenant. Creating one returns its one-time enrollment code."""

    queryset = Agent.objects.order_by("name", "id")
    serializer_class = AgentSerializer
    read_roles = ("admin", "auditor")
    filterset_fields = ["online"]
    lookup_value_regex = UUID_LOOKUP
    secret_response_fields = ("enrollment_code",)

    @extend_schema(responses={201: AgentCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        agent, issued = enrollment.create_agent(tenant=request.tenant, name=data["name"],
                                                connector_ids=data.get("connector_ids", []),
                                                created_by=request.user.label)
        body = AgentSerializer(agent).data
        body.update(enrollment_code=issued.code, enrollment_code_expires_at=issued.expires_at)
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        data = serializer.validated_data
        serializer.instance = enrollment.update_agent(serializer.instance, name=data.get("name"),
                                                      connector_ids=data.get("connector_ids"))

    @extend_schema(request=None, responses={201: EnrollmentCodeSerializer})
    @action(detail=True, methods=["post"], url_path="enrollment-code")
    def enrollment_code(self, request, pk=None):
        """A new one-time code (re-enrollment: the agent's current tokens are revoked when it is used)."""
        issued = enrollment.issue_code(self.get_object(), request.tenant)
        return Response({"enrollment_code": issued.code, "enrollment_code_expires_at": issued.expires_at},
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: AgentSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the agent: its tokens are refused from the next request on; its open jobs fail."""
        return Response(AgentSerializer(enrollment.revoke_agent(self.get_object())).data)

    @extend_schema(responses={200: AgentJobSerializer(many=True)})
    @action(detail=True, methods=["get"], filterset_fields=[])
    def jobs(self, request, pk=None):
        page = self.paginate_queryset(AgentJob.objects.filter(agent=self.get_object()).order_by("-created_at", "id"))
        return self.get_paginated_response(AgentJobSerializer(page, many=True).data)


class RegisterView(PlatformAPIView):
    """Trade a one-time enrollment code for an agent token (no other credential needed)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    requires_tenant = False
    secret_response_fields = ("token",)

    @extend_schema(request=RegisterSerializer, responses={201: RegisteredSerializer}, tags=["agent"], auth=[])
    def post(self, request):
        body = RegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        registration = enrollment.register(code=body.validated_data["code"],
                                           host_tenant=getattr(request._request, "host_tenant", None),
                                           version=body.validated_data["version"],
                                           hostname=body.validated_data["hostname"])
        return Response({"token": registration.token, "agent_id": registration.agent.pk,
                         "name": registration.agent.name, "tenant": registration.tenant.slug,
                         "heartbeat_seconds": settings.AGENT_HEARTBEAT_SECONDS}, status=status.HTTP_201_CREATED)


class AgentEndpoint(PlatformAPIView):
    """Base of ``/api/v1/agent/*``: agent tokens only; ``self.agent`` is the caller."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.agent = Agent.objects.filter(pk=request.user.extra.get("agent_id"), revoked_at__isnull=True).first()
        if self.agent is None:
            raise NotFound("This agent no longer exists.")


@extend_schema(tags=["agent"])
class RotateTokenView(AgentEndpoint):
    secret_response_fields = ("token",)

    @extend_schema(request=None, responses={201: TokenSerializer})
    def post(self, request):
        """A new agent token; the one used for this call stops working at once."""
        raw = enrollment.rotate_token(tenant=request.tenant, agent=self.agent, current_token_id=request.user.token_id)
        return Response({"token": raw}, status=status.HTTP_201_CREATED)


@extend_schema(tags=["agent"])
class HeartbeatView(AgentEndpoint):
    @extend_schema(request=HeartbeatSerializer, responses={200: HeartbeatAckSerializer})
    def post(self, request):
        body = HeartbeatSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        running = [str(j) for j in data["running_jobs"]]
        agent = presence.heartbeat(self.agent.pk, version=data["version"], hostname=data["hostname"],
                                   capabilities=data["capabilities"], running_jobs=running)
        return Response({"state": agent.state, "heartbeat_seconds": settings.AGENT_HEARTBEAT_SECONDS,
                         "server_time": timezone.now(),
                         "released_jobs": presence.jobs_no_longer_held(agent, running[:100])})


def leased_job_body(job: AgentJob) -> dict:
    return {
        "id": job.pk, "kind": job.kind, "attempt": job.attempt,
        "connector": {"id": job.connector_id, "name": job.connector.name, "type": job.connector.type},
        "request": job.request,
        "lease": {"id": job.lease_id, "expires_at": job.leased_until, "seconds": settings.AGENT_LEASE_SECONDS},
    }


class WaitSerializer(serializers.Serializer):
    wait = serializers.IntegerField(required=False, min_value=0, max_value=25,
                                    help_text="Seconds to hold the request open (default 25).")


@extend_schema(tags=["agent"])
class NextJobView(AgentEndpoint):
    @extend_schema(
        parameters=[WaitSerializer],
        responses={200: LeasedJobSerializer, 204: None},
    )
    def get(self, request):
        """Long poll: the next job with a lease, at once if one is waiting; 204 when none came in time."""
        raw = request.query_params.get("wait") or str(settings.AGENT_LONG_POLL_SECONDS)
        if not re.fullmatch(r"[0-9]{1,2}", raw) or int(raw) > min(25, settings.AGENT_LONG_POLL_SECONDS):
            raise ValidationError({"wait": [f"An integer from 0 to {min(25, settings.AGENT_LONG_POLL_SECONDS)}."]})
        job = jobs.wait_for_next(self.agent, int(raw))
        if job is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        job = AgentJob.objects.select_related("connector").get(pk=job.pk)
        return Response(leased_job_body(job))


class JobEndpoint(AgentEndpoint):
    body_serializer = LeaseRefSerializer

    def body(self, request) -> dict:
        body = self.body_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data


def _state(job: AgentJob) -> dict:
    return {"id": job.pk, "status": job.status, "lease_expires_at": job.leased_until}


@extend_schema(tags=["agent"])
class JobChunkView(JobEndpoint):
    body_serializer = ChunkSerializer

    @extend_schema(request=ChunkSerializer, responses={200: ChunkStoredSerializer})
    def post(self, request, job_id):
        """One chunk of the job's result; re-sending a sequence number is harmless (stored: false)."""
        data = self.body(request)
        try:
            chunk = ResultChunk.model_validate(data["payload"])
        except PydanticValidationError as exc:
            raise ValidationError({"payload": [f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                               for e in exc.errors()[:20]]}) from exc
        if chunk.record_count + len(chunk.record_errors) > settings.AGENT_CHUNK_MAX_RECORDS:
            raise ValidationError({"payload": [f"At most {settings.AGENT_CHUNK_MAX_RECORDS} records per chunk."]})
        stored, job = jobs.store_chunk(self.agent, job_id, data["lease_id"], data["sequence"],
                                       chunk.model_dump(mode="json", exclude_defaults=True))
        return Response({"sequence": data["sequence"], "stored": stored, "lease_expires_at": job.leased_until})


@extend_schema(tags=["agent"])
class JobCompleteView(JobEndpoint):
    body_serializer = CompleteSerializer

    @extend_schema(request=CompleteSerializer, responses={200: JobStateSerializer})
    def post(self, request, job_id):
        """Finish the job; every chunk 0..chunk_count-1 of this lease's attempt must have arrived."""
        data = self.body(request)
        if any(data["result"].get(k) for k in jobs.CHUNK_KEYS):
            # Dropping them would turn a full sync's page into "nothing there" (and deletions).
            raise ValidationError({"result": ["Records travel as chunks: no record lists in the result."]})
        result = {k: v for k, v in data["result"].items() if k not in jobs.CHUNK_KEYS}
        return Response(_state(jobs.complete(self.agent, job_id, data["lease_id"], chunk_count=data["chunk_count"],
                                             result=result)))


@extend_schema(tags=["agent"])
class JobFailView(JobEndpoint):
    body_serializer = FailSerializer

    @extend_schema(request=FailSerializer, responses={200: JobStateSerializer})
    def post(self, request, job_id):
        data = self.body(request)
        return Response(_state(jobs.fail(self.agent, job_id, data["lease_id"], error=data["error"])))


@extend_schema(tags=["agent"])
class JobReleaseView(JobEndpoint):
    @extend_schema(request=LeaseRefSerializer, responses={200: JobStateSerializer})
    def post(self, request, job_id):
        """Hand the job back (shutdown): it is queued again at once and its chunks are dropped."""
        data = self.body(request)
        return Response(_state(jobs.release(self.agent, job_id, data["lease_id"])))


@extend_schema(tags=["agent"])
class JobLeaseView(JobEndpoint):
    @extend_schema(request=LeaseRefSerializer, responses={200: JobStateSerializer})
    def post(self, request, job_id):
        """Extend the lease while working without uploading."""
        data = self.body(request)
        return Response(_state(jobs.extend_lease(self.agent, job_id, data["lease_id"])))
