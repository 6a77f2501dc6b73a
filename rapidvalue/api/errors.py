"""The one error shape of the API: ``{"error": {"code", "message", "details", "request_id"}}``.

Every 4xx and 5xx answered by the API uses it: DRF exceptions through :func:`exception_handler`,
middleware refusals through :func:`error_response`, unknown URLs and crashes through the
``handler404``/``handler500`` views.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, transaction
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from rapidvalue.context import request_id_var

logger = logging.getLogger("rapidvalue.api")


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class RefusedTarget(exceptions.APIException):
    """An outbound URL (webhook, callback) that may not be called: scheme, or a private address."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Target URL refused."
    default_code = "unsafe_target"


class Unprocessable(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request cannot be processed."
    default_code = "unprocessable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details if details is not None else {},
            "request_id": request_id_var.get(),
        }
    }


def error_response(status_code: int, code: str, message: str, details: Any = None, **headers) -> JsonResponse:
    """An error in the one shape, for code that runs outside DRF (middleware, Django views)."""
    response = JsonResponse(error_body(code, message, details), status=status_code)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _first_message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    if isinstance(detail, dict) and detail:
        field, value = next(iter(detail.items()))
        inner = _first_message(value)
        return inner if field == "non_field_errors" else f"{field}: {inner}"
    return str(detail)


def _first_code(codes: Any, fallback: str) -> str:
    if isinstance(codes, str):
        return codes
    if isinstance(codes, list) and codes:
        return _first_code(codes[0], fallback)
    if isinstance(codes, dict) and codes:
        return _first_code(next(iter(codes.values())), fallback)
    return fallback


def exception_handler(exc: Exception, context: dict) -> Response:
    """Convert any exception raised in a DRF view into the one error shape.

    Also marks the request's transaction for rollback, so a request that fails changes nothing.
    """
    from rapidvalue.outbound import UnsafeTarget

    if isinstance(exc, UnsafeTarget):
        exc = RefusedTarget(f"Target URL refused: {exc}")
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, DataError):
        logger.info("data error turned into 400: %s", exc)
        exc = exceptions.ValidationError(
            {"non_field_errors": ["A value cannot be stored (out of range, or contains a NUL character)."]})
    elif isinstance(exc, IntegrityError):
        logger.info("integrity error turned into 409: %s", exc)
        exc = Conflict("The change conflicts with existing data (a unique value is already taken).")
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    # Roll back the write transaction the view opened (never an outer one it does not own).
    if getattr(context.get("view"), "owns_transaction", False):
        transaction.set_rollback(True)

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in API view", exc_info=exc)
        return Response(
            error_body("server_error", "An unexpected error occurred; it has been logged."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        # One stable top-level code for all input errors; per-field codes sit in the details.
        details: Any = {"fields": exc.detail} if isinstance(exc.detail, dict) else {"errors": exc.detail}
        details["codes"] = exc.get_codes()
        code = "invalid"
        message = "Invalid input: " + _first_message(exc.detail)
    else:
        details = {}
        code = _first_code(exc.get_codes(), exc.default_code)
        message = _first_message(exc.detail)
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            details = {"retry_after": int(exc.wait + 0.999)}
    response.data = error_body(code, message, details)
    return response


def handler404(request, exception=None) -> JsonResponse:
    return error_response(404, "not_found", "No such resource.")


def handler500(request) -> JsonResponse:
    return error_response(500, "server_error", "An unexpected error occurred; it has been logged.")


def handler403(request, exception=None) -> JsonResponse:
    return error_response(403, "permission_denied", "You do not have permission to perform this action.")


def handler400(request, exception=None) -> JsonResponse:
    return error_response(400, "bad_request", "The request could not be understood.")


def csrf_failure(request, reason: str = "") -> JsonResponse:
    """CSRF refusals (console forms only: the API is token-authenticated) in the one shape."""
    return error_response(403, "csrf_failed", "CSRF verification failed. Reload the page and try again.")


@csrf_exempt
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    """Catch-all for unknown paths under /api/v1/."""
    return error_response(404, "not_found", f"No API endpoint at {request.path}.")
