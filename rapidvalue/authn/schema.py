"""OpenAPI description of our bearer authentication (drf-spectacular extensions)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TenantTokenScheme(OpenApiAuthenticationExtension):
    target_class = "rapidvalue.authn.authentication.TenantTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "User token from /api/v1/auth/login, or a service token. The token names the tenant.",
        }


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "rapidvalue.authn.authentication.AgentTokenAuthentication"
    name = "agentBearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Agent token issued at enrollment; valid only on /api/v1/agent/*.",
        }
