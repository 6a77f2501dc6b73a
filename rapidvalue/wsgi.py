"""WSGI entry point (gunicorn ``rapidvalue.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rapidvalue.settings")

application = get_wsgi_application()
