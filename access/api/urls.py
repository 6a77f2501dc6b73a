from rest_framework.routers import SimpleRouter

from .views import AccountViewSet, ApplicationViewSet, EntitlementViewSet, GrantViewSet, RoleViewSet

router = SimpleRouter(trailing_slash=False)
# The sub-collections first: "applications" must not be read as an entitlement id.
router.register("entitlements/applications", ApplicationViewSet, basename="application")
router.register("entitlements/roles", RoleViewSet, basename="role")
router.register("entitlements/grants", GrantViewSet, basename="grant")
router.register("entitlements", EntitlementViewSet, basename="entitlement")
router.register("accounts", AccountViewSet, basename="account")

urlpatterns = router.urls
