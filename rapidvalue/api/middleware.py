"""Request context: a request id on every response, the client address for audit and logs."""

from __future__ import annotations

import re
import uuid

from django.http import HttpRequest, HttpResponse

from rapidvalue.context import actor_var, client_ip_var, request_id_var

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address as the WSGI server saw it.

    X-Forwarded-For is deliberately not trusted here: a proxy deployment sets REMOTE_ADDR
    correctly (gunicorn ``--forwarded-allow-ips``), whereas trusting the header would let any
    caller choose the address that login throttling and audit see.
    """
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Assigns the request id (the caller's ``X-Request-Id`` when well-formed) and the client ip."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-Id", "")
        request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        tokens = (
            request_id_var.set(request_id),
            client_ip_var.set(client_ip(request)),
            actor_var.set(None),
        )
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(tokens[0])
            client_ip_var.reset(tokens[1])
            actor_var.reset(tokens[2])
        response["X-Request-Id"] = request_id
        return response
