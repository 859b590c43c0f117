"""Evaluation settings and irspack ``Evaluator`` helpers returning plain floats.

Plain ``dict[str, float]`` because the results go straight into JSON columns
and Celery messages; numpy scalars do neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import scipy.sparse as sps
from irspack import Evaluator
from irspack.recommenders import BaseRecommender

TargetMetric = Literal["ndcg", "map", "recall", "hit"]
TARGET_METRICS: tuple[str, ...] = ("ndcg", "map", "recall", "hit")
REPORTED_METRICS: tuple[str, ...] = ("ndcg", "map", "recall", "hit", "precision")


@dataclass(frozen=True)
class EvalSpec:
    """What tuning optimises: ``target_metric`` at ``cutoff``."""

    cutoff: int = 10
    target_metric: TargetMetric = "ndcg"

    def validate(self) -> None:
        if self.target_metric not in TARGET_METRICS:
            raise ValueError(
                f"unknown target metric {self.target_metric!r}; use one of {TARGET_METRICS}"
            )
        if not 1 <= self.cutoff <= 1000:
            raise ValueError("cutoff must be between 1 and 1000")


def make_evaluator(
    ground_truth: sps.csr_matrix, *, offset: int, spec: EvalSpec, n_threads: int | None = 1
) -> Evaluator:
    """An irspack Evaluator scoring rows ``offset..offset+len(ground_truth)``.

    Items in the training rows are masked by irspack itself (it ranks with
    ``get_score_remove_seen``), so seen items never count as hits.

    One thread by default: irspack sums per-user metrics per thread, so with several threads
    the last digit of a score depends on scheduling and a fixed seed would not reproduce.
    Scoring is cheap next to fitting, so this costs little.
    """
    spec.validate()
    return Evaluator(
        ground_truth,
        offset=offset,
        cutoff=spec.cutoff,
        target_metric=spec.target_metric,
        n_threads=n_threads,
    )


def metrics_of(evaluator: Evaluator, recommender: BaseRecommender) -> dict[str, float]:
    """ndcg/map/recall/hit/precision at the evaluator's cutoff, as floats keyed with the cutoff
    (``"ndcg@10"``): a score is only comparable with one at the same cutoff, so the key says it."""
    raw = evaluator.get_score(recommender)
    return {f"{name}@{evaluator.cutoff}": float(raw[name]) for name in REPORTED_METRICS}
