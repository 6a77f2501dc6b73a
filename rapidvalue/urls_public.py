"""URLs on the base domain: the API (tenant from the token) and the control-plane console."""

from django.urls import path

from rapidvalue.admin_sites import control_plane_site
from rapidvalue.urls_common import urlpatterns as common

urlpatterns = [*common, path("admin/", control_plane_site.urls)]

handler400 = "rapidvalue.api.errors.handler400"
handler403 = "rapidvalue.api.errors.handler403"
handler404 = "rapidvalue.api.errors.handler404"
handler500 = "rapidvalue.api.errors.handler500"
