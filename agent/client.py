"""HTTP calls to RapidValue's agent spine, with reconnection and backoff.

Only the agent calls out; the server never connects to it. Network errors and 5xx answers are
retried with capped exponential backoff and jitter (the server may be restarting); 4xx answers are
the server's final word and surface as :class:`ServerRefused`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from . import __version__, log


class ServerRefused(Exception):
    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.code = error.get("code", "")
        super().__init__(f"{status} {self.code}: {error.get('message', body)}")


class Stopped(Exception):
    """Raised instead of retrying once the agent is shutting down."""


class Client:
    def __init__(self, base_url: str, token: str | None = None, *, verify: bool | str = True,
                 max_backoff: float = 30.0, stop: threading.Event | None = None,
                 token_source: Callable[[], str | None] | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        # Where a newer token may appear (the state file, after ``rotate-token``): read again on a 401.
        self.token_source = token_source
        self.max_backoff = max_backoff
        self.stop = stop or threading.Event()
        self._http = httpx.Client(base_url=self.base_url, verify=verify, timeout=httpx.Timeout(30.0, connect=10.0),
                                  headers={"User-Agent": f"rapidvalue-agent/{__version__}"})

    def close(self) -> None:
        self._http.close()

    def _reload_token(self) -> bool:
        """True when the token source holds a different token than the one just refused."""
        fresh = (self.token_source or _no_source)()
        if fresh and fresh != self.token:
            log.info("token.reloaded")
            self.token = fresh
            return True
        return False

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                timeout: float | None = None, retry: bool = True) -> httpx.Response:
        """One call; retried on network errors, 5xx and 429 (after Retry-After) until it works or the agent stops."""
        delay = 1.0
        reloaded = False
        while True:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers,
                                              timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
                if response.status_code == 401 and not reloaded and self._reload_token():
                    reloaded = True
                    continue
                throttled = response.status_code == 429
                if response.status_code < 500 and not throttled:
                    if response.status_code >= 400:
                        raise ServerRefused(response.status_code, _body(response))
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem, throttled = f"{exc.__class__.__name__}: {exc}", False
            if not retry or self.stop.is_set():
                raise Stopped(problem)
            wait = min(self.max_backoff, delay) * random.uniform(0.7, 1.3)  # noqa: S311 - jitter, not crypto
            if throttled:  # rate-limited: not a refusal; wait as long as the server asks (within reason)
                wait = max(wait, min(_retry_after(response), self.max_backoff * 4))
            log.warning("server.unreachable", path=path, problem=problem, retry_in=round(wait, 2))
            if self.stop.wait(wait):
                raise Stopped(problem)
            delay = min(self.max_backoff, delay * 2)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _no_source() -> None:
    return None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def sleep_unless_stopped(stop: threading.Event, seconds: float) -> bool:
    """True when the agent was asked to stop while waiting."""
    return stop.wait(seconds) if seconds > 0 else stop.is_set()


__all__ = ["Client", "ServerRefused", "Stopped", "sleep_unless_stopped", "time"]
