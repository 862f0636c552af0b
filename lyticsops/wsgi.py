import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")
application = get_wsgi_application()

from lyticsops.checks import ensure_production_ready  # noqa: E402  (needs settings loaded)

ensure_production_ready()
