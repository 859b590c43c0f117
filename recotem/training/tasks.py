"""Celery tasks for training (default queue). Thin: take ids, call services."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="recotem.training.tasks.train_model", acks_late=True)
def train_model(trained_model_id: int) -> str:
    from recotem.training import services

    return services.trained_model_train(trained_model_id=trained_model_id).status
