"""``/api/v1/`` routes: the platform's own, then each installed app's ``api/urls.py`` or ``api_urls.py``.

Domain apps register their endpoints by shipping such a module; the platform never imports a
domain app by name, so the dependency direction stays ``rapidvalue`` <- domains.
"""

from __future__ import annotations

from importlib import import_module

from django.apps import apps
from django.urls import include, path, re_path
from django.utils.module_loading import module_has_submodule
from rest_framework.routers import SimpleRouter

from rapidvalue.api.errors import api_not_found
from rapidvalue.api.views import UUID_LOOKUP
from rapidvalue.audit.api import AuditEventViewSet
from rapidvalue.authn.api import AgentWhoAmIView, LoginView, LogoutView, MeView, RefreshView, ServiceTokenViewSet
from rapidvalue.users.api import UserViewSet
from rapidvalue.webhooks.api import DeliveryViewSet, WebhookViewSet

router = SimpleRouter(trailing_slash=False)
router.register("auth/service-tokens", ServiceTokenViewSet, basename="service-token")
router.register("users", UserViewSet, basename="user")
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register(rf"webhooks/(?P<subscription_pk>{UUID_LOOKUP})/deliveries", DeliveryViewSet,
                basename="webhook-delivery")

urlpatterns = [
    path("auth/login", LoginView.as_view(), name="auth-login"),
    path("auth/refresh", RefreshView.as_view(), name="auth-refresh"),
    path("auth/logout", LogoutView.as_view(), name="auth-logout"),
    path("auth/me", MeView.as_view(), name="auth-me"),
    path("agent/whoami", AgentWhoAmIView.as_view(), name="agent-whoami"),
    *router.urls,
]

for app_config in apps.get_app_configs():
    if app_config.name.startswith("rapidvalue"):
        continue
    for candidate in ("api.urls", "api_urls"):
        if module_has_submodule(app_config.module, candidate.split(".")[0]):
            try:
                module = import_module(f"{app_config.name}.{candidate}")
            except ModuleNotFoundError:
                continue
            urlpatterns.append(path("", include(module)))
            break

# Anything else under /api/v1/ is a JSON 404 in the one error shape, also with DEBUG on.
urlpatterns.append(re_path(r"^.*$", api_not_found))
