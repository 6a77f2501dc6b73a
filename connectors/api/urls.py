from django.urls import path
from rest_framework.routers import SimpleRouter

from rapidvalue.api.views import UUID_LOOKUP

from .views import ConnectorViewSet, IdentitySyncView, SyncRunViewSet

router = SimpleRouter(trailing_slash=False)
router.register("connectors", ConnectorViewSet, basename="connector")
router.register(rf"connectors/(?P<connector_pk>{UUID_LOOKUP})/sync-runs", SyncRunViewSet, basename="sync-run")

urlpatterns = [path("identities/sync", IdentitySyncView.as_view(), name="identities-sync"), *router.urls]
