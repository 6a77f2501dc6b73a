"""ConnectorDispatcher: the one way to call a connector, hosted or through an agent.

Hosted mode calls the connector class in the worker process; agent mode hands the same
protocol request to an ``AgentProxy`` (the agent spine makes that real: a job for the agent,
results streamed back). Callers never know which: same methods, same protocol types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .base import ConfigurationError, connector_class
from .protocol.v1 import (
    ProvisioningRequest,
    ProvisioningResponse,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)


class AgentProxy(Protocol):
    """What the agent spine provides for agent-mode connectors (AgentProxyConnector)."""

    def sync(self, connector_type: str, agent_id: str, request: SyncRequest) -> SyncResponse: ...

    def test_connection(self, connector_type: str, agent_id: str,
                        request: TestConnectionRequest) -> TestConnectionResponse: ...

    def provision(self, connector_type: str, agent_id: str, request: ProvisioningRequest) -> ProvisioningResponse: ...

    def waiting_reason(self, agent_id: str) -> str | None:
        """Why a call now would only wait (agent offline, not enrolled), or None when it can run.

        Raises ConnectorError when it can never run (the agent was revoked or removed)."""
        ...


AgentProxyFactory = Callable[..., AgentProxy]
_agent_proxy_factory: AgentProxyFactory | None = None
_agent_exists: Callable[[Any], bool] | None = None


def register_agent_proxy_factory(factory: AgentProxyFactory, exists: Callable[[Any], bool]) -> None:
    """Called once by the agent spine at start-up; connectors never import the spine itself."""
    global _agent_proxy_factory, _agent_exists
    _agent_proxy_factory = factory
    _agent_exists = exists


def agent_exists(agent_id: Any) -> bool:
    """Whether an agent of the current tenant has this id (False without the agent spine)."""
    return _agent_exists is not None and _agent_exists(agent_id)


def agent_proxy_for(*args: Any, **kwargs: Any) -> AgentProxy:
    """An AgentProxy from the registered factory (the arguments are the factory's: connector, run)."""
    if _agent_proxy_factory is None:
        raise ConfigurationError("agent mode needs the agent spine, which is not installed")
    return _agent_proxy_factory(*args, **kwargs)


class ConnectorDispatcher:
    def __init__(self, connector_type: str, mode: str = "hosted", agent_id: str | None = None,
                 agent_proxy: AgentProxy | None = None):
        self.connector_type = connector_type
        self.mode = mode
        self.agent_id = agent_id
        self.agent_proxy = agent_proxy
        if mode not in {"hosted", "agent"}:
            raise ConfigurationError(f"unknown connector mode: {mode}")
        if mode == "agent" and (agent_proxy is None or not agent_id):
            raise ConfigurationError("agent mode needs an agent and the agent spine")
        self._class = connector_class(connector_type)

    @property
    def capabilities(self):
        return self._class.capabilities

    def waiting_reason(self) -> str | None:
        """None when a call can run now; else why it would wait (so a sync run can wait without a worker)."""
        if self.mode == "agent":
            return self.agent_proxy.waiting_reason(self.agent_id)
        return None

    def validate(self, config: dict, auth_config: dict) -> None:
        """Check config before anything runs (also in agent mode: the shape is the same)."""
        if self.mode == "hosted":
            self._class.validate_config(config, auth_config)

    def sync(self, request: SyncRequest) -> SyncResponse:
        if self.mode == "agent":
            return self.agent_proxy.sync(self.connector_type, self.agent_id, request)
        return self._class().sync(request)

    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        if self.mode == "agent":
            return self.agent_proxy.test_connection(self.connector_type, self.agent_id, request)
        return self._class().test_connection(request)

    def provision(self, request: ProvisioningRequest) -> ProvisioningResponse:
        if self.mode == "agent":
            return self.agent_proxy.provision(self.connector_type, self.agent_id, request)
        return self._class().provision(request)
