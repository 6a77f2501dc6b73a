"""Structured log lines: one JSON object per line on stderr (ts, level, event, fields)."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any

_lock = threading.Lock()
SECRET_HINTS = ("token", "password", "secret", "auth_config", "credential")
SECRET_NAMES = {"code", "enrollment_code"}


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[redacted]" if k in SECRET_NAMES or any(h in k.lower() for h in SECRET_HINTS) else v)
            for k, v in fields.items()}


def log(level: str, event: str, **fields: Any) -> None:
    """Write one line; fields whose name suggests a secret are redacted, whatever their value."""
    line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level, "event": event,
            **_clean(fields)}
    with _lock:
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()


def info(event: str, **fields: Any) -> None:
    log("info", event, **fields)


def warning(event: str, **fields: Any) -> None:
    log("warning", event, **fields)


def error(event: str, **fields: Any) -> None:
    log("error", event, **fields)
