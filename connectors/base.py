"""The base class every connector implements, and the connector registry. No Django here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from .protocol.v1 import (
    Capabilities,
    OperationResult,
    ProvisioningRequest,
    ProvisioningResponse,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)


class ConnectorError(Exception):
    """A connector failure the caller can act on; ``transient`` ones are worth retrying."""

    transient = False


class TransientConnectorError(ConnectorError):
    transient = True


class ConfigurationError(ConnectorError):
    """The connector's config or credentials are wrong: fix them, retrying will not help."""


class SyncCancelled(ConnectorError):
    """The run was cancelled while the connector (or its agent) was working on it."""


class Connector(ABC):
    """A plain class in the protocol: it receives protocol requests and returns protocol responses."""

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: Config keys that decide where credentials are sent or which local files are read (connection
    #: targets and their TLS protection). On an agent these come only from its local config.
    local_only_config: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def sync(self, request: SyncRequest) -> SyncResponse:
        """Return one chunk of records, starting at ``request.cursor``."""

    @abstractmethod
    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        """Check that config and credentials work, without changing anything."""

    def provision(self, request: ProvisioningRequest) -> ProvisioningResponse:
        """Apply write-back operations; connectors without write-back refuse each one."""
        return ProvisioningResponse(results=[
            OperationResult(operation_id=op.operation_id, success=False,
                            error=f"{self.type} connector does not support {op.kind.value}")
            for op in request.operations
        ])

    @classmethod
    def validate_config(cls, config: dict, auth_config: dict) -> None:
        """Raise ConfigurationError when config cannot work; called before anything runs."""
        return None

    @classmethod
    def local_only_paths(cls, config: dict) -> list[tuple[str, ...]]:
        """Key paths in ``config`` the server may not choose for an agent (see ``local_only_config``)."""
        return [(key,) for key in cls.local_only_config]


def has_path(config: dict, path: tuple[str, ...]) -> bool:
    """Whether the nested key ``path`` is set in ``config`` (for local-only keys such as ``("identities", "path")``)."""
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return False
        config = config[key]
    return True


def local_only_set(connector_type: str, config: dict) -> list[str]:
    """The local-only keys (dotted) present in a server-side config: an agent would refuse its jobs."""
    cls = connector_class(connector_type)
    return [".".join(path) for path in cls.local_only_paths(config) if has_path(config, path)]


def without_local_only(connector_type: str, config: dict) -> dict:
    """The config minus its local-only keys: what stays on the server when a connector moves to an agent."""
    cls = connector_class(connector_type)
    result = {key: (dict(value) if isinstance(value, dict) else value) for key, value in config.items()}
    for path in cls.local_only_paths(config):
        parent = result
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return result


_registry: dict[str, type[Connector]] = {}


def register(connector: type[Connector]) -> type[Connector]:
    """Class decorator: make a connector available by its ``type``."""
    _registry[connector.type] = connector
    return connector


def connector_class(connector_type: str) -> type[Connector]:
    from . import builtin  # noqa: F401 - registers the built-in connectors

    try:
        return _registry[connector_type]
    except KeyError:
        raise ConfigurationError(f"unknown connector type: {connector_type}") from None


def connector_types() -> list[str]:
    from . import builtin  # noqa: F401

    return sorted(_registry)
