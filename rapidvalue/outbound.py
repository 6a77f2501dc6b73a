"""All outbound HTTP (webhooks, sync callbacks, later SCIM) goes through here.

One place for timeouts and the server-side request forgery guard: targets that resolve to
loopback, link-local, private, multicast or reserved addresses are refused unless
``RAPIDVALUE_ALLOW_PRIVATE_TARGETS=1`` (development and on-premises test set-ups). The check runs
when a target is configured and again before every request, because DNS can change in between.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

import certifi
import httpx
from django.conf import settings

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class UnsafeTarget(ValueError):
    """The URL may not be called: wrong scheme, unresolvable, or a private address."""


def _is_private(address: str) -> bool:
    """Anything but a globally routable unicast address (CGNAT, 6to4/Teredo wrappers included)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        wrapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if wrapped is not None and _is_private(str(wrapped)):
            return True
    return not ip.is_global or ip.is_multicast


def check_target(url: str) -> None:
    """Raise UnsafeTarget unless ``url`` is an http(s) URL we are allowed to call."""
    parts = urlsplit(url)
    allow_private = settings.ALLOW_PRIVATE_TARGETS
    allowed_schemes = {"https", "http"} if (allow_private or settings.DEBUG) else {"https"}
    if parts.scheme not in allowed_schemes:
        raise UnsafeTarget(f"URL scheme must be {' or '.join(sorted(allowed_schemes))}")
    if not parts.hostname:
        raise UnsafeTarget("URL has no host")
    if parts.username or parts.password:
        raise UnsafeTarget("URL must not carry credentials")
    if allow_private:
        return
    check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def check_host(hostname: str, port: int) -> None:
    """Refuse a host that resolves to a loopback, link-local or private address (any scheme).

    Used for hosted connectors too (LDAP, SCIM): an agent reaches private directories, the
    cloud workers must not, unless ``RAPIDVALUE_ALLOW_PRIVATE_TARGETS=1``.
    """
    if settings.ALLOW_PRIVATE_TARGETS:
        return
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTarget(f"Host {hostname!r} does not resolve") from exc
    for info in infos:
        if _is_private(info[4][0]):
            raise UnsafeTarget(f"Host {hostname!r} resolves to a private or local address")


MAX_RESPONSE_BYTES = 4096


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verified TLS context per process: building it loads the CA bundle (~34 ms a time,
    measured by bench/webhooks.py), which dominated every delivery."""
    return ssl.create_default_context(cafile=certifi.where())


def post(url: str, content: bytes, headers: dict[str, str], timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Response:
    """POST after the SSRF check; redirects are not followed (a redirect could point anywhere).

    The response body is streamed and cut at ``MAX_RESPONSE_BYTES``: a hostile receiver cannot
    make us read gigabytes; callers only keep a short excerpt anyway.
    """
    check_target(url)
    with httpx.Client(timeout=timeout, follow_redirects=False, verify=_tls_context()) as client, client.stream(
        "POST", url, content=content, headers=headers
    ) as response:
        body = b""
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= MAX_RESPONSE_BYTES:
                break
        # Raw (undecoded) bytes: keep only the content type so nothing tries to decompress them.
        content_type = response.headers.get("content-type", "application/octet-stream")
        return httpx.Response(response.status_code, content=body[:MAX_RESPONSE_BYTES], request=response.request,
                              headers={"content-type": content_type})
