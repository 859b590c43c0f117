"""The tuning job's message outbox (kept light: beat loads it without the ML stack)."""

from __future__ import annotations

from typing import Any

from recotem.core.jobs import Outbox, register_outbox
from recotem.tuning.models import ParameterTuningJob

RUN_TUNING_TASK = "recotem.tuning.tasks.run_tuning_job"


def _message(job: ParameterTuningJob) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"job_id": job.pk}, {}


TUNING_OUTBOX = register_outbox(Outbox(ParameterTuningJob, RUN_TUNING_TASK, _message))
