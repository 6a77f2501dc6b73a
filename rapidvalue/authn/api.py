"""Endpoints under ``/api/v1/auth/`` and the agent-spine identity endpoint."""

from __future__ import annotations

from django.db import connection
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response

from rapidvalue.api.errors import Conflict
from rapidvalue.api.serializers import PlatformModelSerializer, PlatformSerializer
from rapidvalue.api.views import PlatformAPIView, PlatformGenericViewSet
from rapidvalue.tenancy.models import Tenant

from . import services
from .authentication import AgentTokenAuthentication
from .models import ApiToken


class LoginSerializer(PlatformSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(write_only=True, max_length=256, trim_whitespace=False)
    tenant = serializers.CharField(
        required=False, allow_null=True, max_length=40,
        help_text="Tenant slug; required unless the request is sent to the tenant's own domain. "
        "Omitted on the base domain, the login is for control-plane staff.",
    )


class TokenPairSerializer(PlatformSerializer):
    access = serializers.CharField()
    refresh = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField()
    tenant = serializers.CharField(allow_null=True)


class RefreshSerializer(PlatformSerializer):
    refresh = serializers.CharField(max_length=4096)


class MeSerializer(PlatformSerializer):
    kind = serializers.CharField()
    tenant = serializers.CharField(allow_null=True)
    id = serializers.CharField()
    label = serializers.CharField()
    email = serializers.EmailField(allow_null=True)
    is_admin = serializers.BooleanField()
    is_auditor = serializers.BooleanField()
    identity_id = serializers.UUIDField(allow_null=True)


class LoginView(PlatformAPIView):
    """Exchange email and password for an access and a refresh token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    transactional_writes = False  # failed attempts must be recorded, not rolled back

    @extend_schema(request=LoginSerializer, responses={200: TokenPairSerializer}, tags=["auth"])
    def post(self, request):
        body = LoginSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        # The host decides, never a bearer token that happens to ride along on a login.
        host_tenant = request._request.host_tenant
        slug = body.validated_data.get("tenant")
        tenant = host_tenant
        if slug:
            named = Tenant.objects.exclude(schema_name="public").filter(slug=slug.lower()).first()
            if host_tenant is not None and (named is None or named.pk != host_tenant.pk):
                return _bad_tenant("The tenant in the body does not match this domain.")
            if named is None:
                # Same answer as a wrong password: do not reveal which tenants exist.
                return Response(
                    {"error": {"code": "invalid_credentials", "message": "Invalid email or password.",
                               "details": {}, "request_id": request._request.request_id}},
                    status=status.HTTP_401_UNAUTHORIZED,
                )
            if named.is_suspended:
                return Response(
                    {"error": {"code": "tenant_suspended", "message": "This tenant is suspended.",
                               "details": {}, "request_id": request._request.request_id}},
                    status=status.HTTP_403_FORBIDDEN,
                )
            tenant = named
        if tenant is None:
            connection.set_schema_to_public()
        else:
            connection.set_tenant(tenant)
        issued = services.login(body.validated_data["email"], body.validated_data["password"], tenant)
        return Response(issued.as_dict())


def _bad_tenant(message: str) -> Response:
    from rapidvalue.api.errors import error_body

    return Response(error_body("tenant_mismatch", message), status=status.HTTP_400_BAD_REQUEST)


def _host_tenant(request) -> Tenant | None:
    return request._request.host_tenant


class RefreshView(PlatformAPIView):
    """Rotate a refresh token into a new access and refresh token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=RefreshSerializer, responses={200: TokenPairSerializer}, tags=["auth"])
    def post(self, request):
        body = RefreshSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(services.refresh_tokens(body.validated_data["refresh"], _host_tenant(request)))


class LogoutView(PlatformAPIView):
    """Revoke a refresh token and end the access tokens of its session."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=RefreshSerializer, responses={204: OpenApiResponse(description="Signed out")},
                   tags=["auth"])
    def post(self, request):
        body = RefreshSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.logout(body.validated_data["refresh"], _host_tenant(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


def describe(principal) -> dict:
    user = principal.user
    return {
        "kind": principal.kind,
        "tenant": principal.tenant.slug if principal.tenant else None,
        "id": principal.subject_id,
        "label": principal.label,
        "email": user.email if user else None,
        "is_admin": principal.is_admin,
        "is_auditor": principal.is_auditor,
        "identity_id": principal.identity_id,
    }


class MeView(PlatformAPIView):
    """Who the bearer token belongs to, and with which roles."""

    requires_tenant = False

    @extend_schema(responses={200: MeSerializer}, tags=["auth"])
    def get(self, request):
        return Response(MeSerializer(describe(request.user)).data)


class ServiceTokenSerializer(PlatformModelSerializer):
    class Meta:
        model = ApiToken
        fields = [
            "id", "name", "role", "created_at", "created_by", "expires_at", "last_used_at", "revoked_at",
            "rate_limit_per_second", "rate_limit_burst",
        ]
        read_only_fields = ["id", "created_at", "created_by", "last_used_at", "revoked_at"]
        extra_kwargs = {
            "rate_limit_per_second": {"min_value": 1, "max_value": 100000},
            "rate_limit_burst": {"min_value": 1, "max_value": 200000},
            "name": {"max_length": 100},
        }

    def validate_name(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Name must not be blank.")
        return value.strip()

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Expiry must be in the future.")
        return value


class CreatedServiceTokenSerializer(ServiceTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once: store it now, it cannot be read again.")

    class Meta(ServiceTokenSerializer.Meta):
        fields = [*ServiceTokenSerializer.Meta.fields, "token"]


@extend_schema(tags=["auth"])
class ServiceTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
    PlatformGenericViewSet,
):
    """Service tokens for integrations: created by admins, shown once, revocable."""

    queryset = ApiToken.objects.filter(kind=ApiToken.Kind.SERVICE).order_by("-created_at", "id")
    serializer_class = ServiceTokenSerializer
    read_roles = ("admin", "auditor")
    secret_response_fields = ("token",)

    @extend_schema(responses={201: CreatedServiceTokenSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = services.create_api_token(
            tenant=request.user.tenant, created_by=request.user.label, **serializer.validated_data
        )
        data = ServiceTokenSerializer(created.token).data
        data["token"] = created.raw
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: OpenApiResponse(description="Revoked")})
    def destroy(self, request, *args, **kwargs):
        token = self.get_object()
        if token.revoked_at is not None:
            raise Conflict("This token is already revoked.", code="already_revoked")
        services.revoke_api_token(token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IsAgent(BasePermission):
    def has_permission(self, request, view) -> bool:
        return getattr(request.user, "kind", None) == "agent"


class AgentWhoAmIView(PlatformAPIView):
    """The agent behind an agent token: lets the agent program check its enrollment."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]

    @extend_schema(
        responses={200: inline_serializer("AgentIdentity", {
            "token_id": serializers.UUIDField(), "name": serializers.CharField(),
            "agent_id": serializers.UUIDField(allow_null=True), "tenant": serializers.CharField(),
        })},
        tags=["agent"],
    )
    def get(self, request):
        principal = request.user
        return Response({
            "token_id": principal.token_id,
            "name": principal.label,
            "agent_id": principal.extra.get("agent_id"),
            "tenant": principal.tenant.slug,
        })
