"""The Celery application (`celery -A recotem worker|beat`)."""

from __future__ import annotations

import os

from celery import Celery

from recotem import broker

broker.register()  # before any connection: the default broker URL uses its scheme
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")

app = Celery("recotem")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
