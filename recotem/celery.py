"""The Celery application (`celery -A recotem worker|beat`)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

from recotem import broker

broker.register()  # before any connection: the default broker URL uses its scheme
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")

app = Celery("recotem")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect  # type: ignore[untyped-decorator]  # celery signals are unannotated
def _preload_ml_stack(**_: object) -> None:
    """Import the ML stack once in the worker's main process, before the pool forks.

    Otherwise every pool child pays ~3-8 s of imports (numba, irspack, scipy, optuna) inside its
    first training or tuning task, which the user sees as time nobody accounts for; forked
    children share the imported pages. Only workers do this: beat and web stay lean.
    """
    import importlib

    for module in (
        "recotem.ml.training",
        "recotem.ml.split",
        "recotem.ml.evaluation",
        "recotem.ml.tuning",
        "recotem.ml.artifact",
        "recotem.ml.data",
    ):
        importlib.import_module(module)
