"""OpenAPI post-processing: the conventions every operation shares, documented once.

drf-spectacular describes each view's own success responses; this hook adds what the base
classes do for all of them: the one error shape for each error status an operation can answer,
the ``Idempotency-Key`` header on writes, and ``X-Tenant-Id`` for control-plane staff.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code.", "example": "invalid"},
                "message": {"type": "string", "description": "What went wrong, for humans."},
                "details": {"type": "object", "additionalProperties": True},
                "request_id": {"type": "string"},
            },
        }
    },
}

ERROR_DESCRIPTIONS = {
    "400": "Invalid input (code `invalid`, field errors in `details.fields`) or malformed JSON.",
    "401": "Missing, invalid, expired or revoked token, or a token of another tenant or kind.",
    "403": "The role may not do this (auditors never write), X-Tenant-Id not allowed, or tenant suspended.",
    "404": "No such object, or not visible to the caller.",
    "405": "Method not allowed on this path.",
    "409": "Conflicts with current state (duplicate, already revoked, self-lockout).",
    "415": "Body is not JSON.",
    "422": "Idempotency-Key reused with a different request.",
    "429": "Rate limit or sign-in throttle; see Retry-After.",
}
WRITE_METHODS = {"post", "put", "patch", "delete"}


def add_platform_conventions(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOK: error responses and shared headers on every operation."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_DESCRIPTIONS.items():
                content = {"application/json": {"schema": ref}}
                responses.setdefault(code, {"description": description, "content": content})
            if path == "/health":
                continue
            parameters = operation.setdefault("parameters", [])
            for parameter in parameters:
                # An empty query value means "not given" everywhere (pagination, cursor, filters).
                if parameter.get("in") == "query" and not parameter.get("required"):
                    parameter.setdefault("allowEmptyValue", True)
            names = {p.get("name") for p in parameters}
            if method in WRITE_METHODS and "Idempotency-Key" not in names:
                parameters.append({
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "Repeat-safe writes: a repeat within 24 h returns the first response.",
                    "schema": {"type": "string", "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
                })
    return result
