from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import ConnectorViewSet, IdentitySyncView, SyncRunViewSet

router = SimpleRouter(trailing_slash=False)
router.register("connectors", ConnectorViewSet, basename="connector")
router.register(r"connectors/(?P<connector_pk>[0-9a-fA-F-]{32,36})/sync-runs", SyncRunViewSet, basename="sync-run")

urlpatterns = [path("identities/sync", IdentitySyncView.as_view(), name="identities-sync"), *router.urls]
