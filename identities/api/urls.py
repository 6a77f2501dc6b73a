from rest_framework.routers import SimpleRouter

from .views import IdentityViewSet

router = SimpleRouter(trailing_slash=False)
router.register("identities", IdentityViewSet, basename="identity")

urlpatterns = router.urls
