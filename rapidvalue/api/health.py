"""``/health``: liveness of the database and Redis, without authentication."""

from __future__ import annotations

from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from rapidvalue.redis_client import get_redis


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "down"; the reason goes to the response
        return f"error: {exc.__class__.__name__}"
    return "ok"


def check_redis() -> str:
    try:
        get_redis().ping()
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
    return "ok"


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        responses={
            200: inline_serializer("Health", {
                "status": serializers.CharField(help_text="ok or degraded"),
                "database": serializers.CharField(), "redis": serializers.CharField(),
            }),
            503: inline_serializer("HealthDown", {
                "status": serializers.CharField(help_text="ok or degraded"),
                "database": serializers.CharField(), "redis": serializers.CharField(),
            }),
        },
        tags=["health"],
        auth=[],
    )
    def get(self, request):
        checks = {"database": check_database(), "redis": check_redis()}
        healthy = all(value == "ok" for value in checks.values())
        return Response({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)
