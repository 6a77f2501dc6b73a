"""The agent's config file (TOML, written by the customer) and state file (JSON, written by ``enroll``).

Credentials live here, on premises: ``auth_config`` values may be given inline or, better, as the
names of environment variables (``auth_config_env``) so the file itself holds no secret.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass
class LocalConnector:
    id: str
    type: str
    config: dict[str, Any] = field(default_factory=dict)
    auth_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentConfig:
    path: Path
    state_file: Path
    server_url: str | None = None
    upload_chunk_records: int = 1000
    shutdown_grace_seconds: float = 20.0
    long_poll_seconds: int = 25
    verify_tls: bool | str = True
    max_backoff_seconds: float = 30.0
    connectors: dict[str, LocalConnector] = field(default_factory=dict)


def load_config(path: str | Path) -> AgentConfig:
    """Read and check the config file; refuses unknown keys so a typo is not silently ignored."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    known = {"server_url", "state_file", "upload_chunk_records", "shutdown_grace_seconds", "long_poll_seconds",
             "verify_tls", "ca_bundle", "max_backoff_seconds", "connectors"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    state = Path(raw.get("state_file", "state.json"))
    config = AgentConfig(
        path=path,
        state_file=state if state.is_absolute() else path.parent / state,
        server_url=raw.get("server_url"),
        upload_chunk_records=int(raw.get("upload_chunk_records", 1000)),
        shutdown_grace_seconds=float(raw.get("shutdown_grace_seconds", 20)),
        long_poll_seconds=int(raw.get("long_poll_seconds", 25)),
        verify_tls=raw.get("ca_bundle") or bool(raw.get("verify_tls", True)),
        max_backoff_seconds=float(raw.get("max_backoff_seconds", 30)),
    )
    if not 1 <= config.upload_chunk_records <= 5000:
        raise ConfigError("upload_chunk_records must be between 1 and 5000")
    for connector_id, spec in (raw.get("connectors") or {}).items():
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"connector {connector_id}: a table with at least 'type'")
        auth = dict(spec.get("auth_config") or {})
        for key, variable in (spec.get("auth_config_env") or {}).items():
            if variable not in os.environ:
                raise ConfigError(f"connector {connector_id}: environment variable {variable} is not set")
            auth[key] = os.environ[variable]
        config.connectors[connector_id] = LocalConnector(id=connector_id, type=spec["type"],
                                                         config=dict(spec.get("config") or {}), auth_config=auth)
    return config


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read state file {path}: {exc}") from exc


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically, readable by the agent's user only (it holds the agent token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
