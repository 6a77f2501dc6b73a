"""URLs on a tenant's own domain: the API and the tenant's admin console."""

from django.urls import path

from rapidvalue.admin_sites import tenant_site
from rapidvalue.urls_common import urlpatterns as common

urlpatterns = [*common, path("admin/", tenant_site.urls)]

handler400 = "rapidvalue.api.errors.handler400"
handler403 = "rapidvalue.api.errors.handler403"
handler404 = "rapidvalue.api.errors.handler404"
handler500 = "rapidvalue.api.errors.handler500"
