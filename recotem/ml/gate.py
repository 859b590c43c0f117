"""Fair quality gate for auto-deploy: score two configurations on the same holdout.

The deployed (incumbent) artifact was fitted on nearly all of the data; scoring it on a
holdout of new data would let it grade its own homework. Instead both configurations are
refitted on the same training part of one split of the new data and scored on the same
held-out interactions.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .evaluation import EvalSpec, make_evaluator, metrics_of
from .registry import canonical_name, recommender_class, validate_parameters
from .split import SplitSpec, split_interactions


@dataclass(frozen=True)
class GateScores:
    candidate: dict[str, float]
    incumbent: dict[str, float]
    target_metric: str
    cutoff: int


def _fit(X: Any, class_name: str, parameters: dict[str, Any]) -> Any:
    name = canonical_name(class_name)
    params = validate_parameters(name, dict(parameters or {}))
    with contextlib.redirect_stdout(io.StringIO()):
        return recommender_class(name)(X, **params).learn()


def compare_configurations(
    df: pd.DataFrame,
    *,
    candidate: tuple[str, dict[str, Any]],
    incumbent: tuple[str, dict[str, Any]],
    split: SplitSpec,
    evaluation: EvalSpec,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
) -> GateScores:
    """Refit both ``(class_name, parameters)`` on the same train part and score on the same holdout.

    Uses the test users of ``split`` (validation users when the split has none).
    Raises ValueError when the data is too small to split.
    """
    data = split_interactions(
        df, split, user_column=user_column, item_column=item_column, time_column=time_column
    )
    if data.test_train is not None and data.test_truth is not None:
        X, truth, offset = data.test_train, data.test_truth, data.test_offset
    else:
        X, truth, offset = data.tune_train, data.val_truth, data.val_offset
    evaluator = make_evaluator(truth, offset=offset, spec=evaluation)
    scores = [
        metrics_of(evaluator, _fit(X, name, params)) for name, params in (candidate, incumbent)
    ]
    return GateScores(
        candidate=scores[0],
        incumbent=scores[1],
        target_metric=evaluation.target_metric,
        cutoff=evaluation.cutoff,
    )


def gate_passes(candidate: float, incumbent: float, tolerance: float) -> bool:
    """True unless the candidate is worse than the incumbent by more than ``tolerance`` (relative).

    ``tolerance=0.02`` lets a candidate through at 98 % of the incumbent's score; relative so
    one setting means the same for ndcg@10 ≈ 0.4 and map@100 ≈ 0.05.
    """
    return candidate >= incumbent * (1.0 - tolerance)
