"""The training message's outbox (kept light: beat loads it without the ML stack)."""

from __future__ import annotations

from typing import Any

from recotem.core.jobs import Outbox, register_outbox
from recotem.training.models import TrainedModel

TRAIN_TASK = "recotem.training.tasks.train_model"


def _message(model: TrainedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"trained_model_id": model.pk}, {}


TRAIN_OUTBOX = register_outbox(Outbox(TrainedModel, TRAIN_TASK, _message))
