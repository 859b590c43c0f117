"""Fit a recommender on all interactions of a project.

Kept separate from tuning: retraining on a schedule fits a known
configuration on fresh data without any search.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

import irspack
import pandas as pd
from irspack.recommenders import BaseRecommender

from .matrix import InteractionMatrix, build_interaction_matrix
from .registry import canonical_name, recommender_class, validate_parameters
from .timing import PhaseTimer


@dataclass
class FittedModel:
    """A fitted recommender plus everything needed to serve it later.

    ``user_ids``/``item_ids`` are the row/column order of the matrix the
    recommender was fitted on; without them its indices mean nothing.
    """

    recommender: BaseRecommender
    user_ids: list[str]
    item_ids: list[str]
    class_name: str
    parameters: dict[str, Any]
    irspack_version: str = field(default_factory=lambda: str(irspack.__version__))  # type: ignore[attr-defined]  # irspack imports it without re-exporting
    fit_seconds: float = 0.0


def fit_matrix(
    matrix: InteractionMatrix,
    class_name: str,
    parameters: dict[str, Any] | None = None,
    *,
    quiet: bool = True,
) -> FittedModel:
    """Fit ``class_name`` with ``parameters`` on ``matrix``.

    Parameters are validated first (ValueError names the bad one); the
    learnt ``train_epochs`` from tuning is an ordinary parameter here.
    """
    name = canonical_name(class_name)
    params = validate_parameters(name, dict(parameters or {}))
    if matrix.X.nnz == 0:
        raise ValueError("cannot train on an empty interaction matrix")
    start = time.perf_counter()
    sink = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with sink:
        rec = recommender_class(name)(matrix.X, **params).learn()
    return FittedModel(
        recommender=rec,
        user_ids=list(matrix.user_ids),
        item_ids=list(matrix.item_ids),
        class_name=name,
        parameters=params,
        fit_seconds=time.perf_counter() - start,
    )


def train_model(
    df: pd.DataFrame,
    class_name: str,
    parameters: dict[str, Any] | None = None,
    *,
    user_column: str,
    item_column: str,
    quiet: bool = True,
    timer: PhaseTimer | None = None,
) -> FittedModel:
    """Build the implicit matrix from ``df`` and fit on all of it (phases ``matrix``, ``fit``)."""
    timer = timer or PhaseTimer()
    with timer.phase("matrix"):
        matrix = build_interaction_matrix(df, user_column=user_column, item_column=item_column)
    with timer.phase("fit"):
        return fit_matrix(matrix, class_name, parameters, quiet=quiet)
