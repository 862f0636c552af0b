"""The Celery application. Tasks live in each app's tasks.py and wrap plain functions."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")

app = Celery("lyticsops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
