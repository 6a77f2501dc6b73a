"""The Celery application: tenant-aware, so a task runs in the schema it was sent from.

``tenant_schemas_celery`` puts the sender's schema into the message headers and switches the
worker's connection to it before the task runs.
"""

import os

from tenant_schemas_celery.app import CeleryApp as TenantAwareCeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rapidvalue.settings")

app = TenantAwareCeleryApp("rapidvalue")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["rapidvalue.api", "rapidvalue.tenancy", "rapidvalue.webhooks"])
