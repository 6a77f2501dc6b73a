from django.apps import AppConfig


class AgentSpineConfig(AppConfig):
    """Agent enrollment, agent tokens, presence, the job queue and the AgentProxyConnector."""

    name = "agentspine"
    verbose_name = "On-premises agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # connectors never imports agentspine: the spine registers itself as connectors' agent proxy.
        from connectors.dispatcher import register_agent_proxy_factory

        from .proxy import AgentProxyConnector
        from .services.enrollment import agent_exists

        register_agent_proxy_factory(AgentProxyConnector.for_connector, agent_exists)
