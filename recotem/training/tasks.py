"""Celery tasks for training (default queue). Thin: take ids, call services."""

from __future__ import annotations

from celery import shared_task

from recotem.training import services
from recotem.training.outbox import TRAIN_TASK


@shared_task(name=TRAIN_TASK, acks_late=True)
def train_model(trained_model_id: int) -> str:
    return services.trained_model_train(trained_model_id=trained_model_id).status
