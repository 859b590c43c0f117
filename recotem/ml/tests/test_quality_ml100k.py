"""Real-data check: the tuned engine must clearly beat popularity on a holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recotem.ml.evaluation import EvalSpec
from recotem.ml.recommend import LoadedModel
from recotem.ml.split import SplitSpec, split_interactions
from recotem.ml.training import train_model
from recotem.ml.tuning import TuningSpec, tune

from .conftest import ML100K


def _holdout(df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """20 % of each user's items (users with >= 5) hidden, as in holdout_protocol."""
    rng = np.random.default_rng(seed)
    df = df.drop_duplicates(["user_id", "item_id"]).sort_values(["user_id", "item_id"])
    test: dict[str, set[str]] = {}
    keep = np.ones(len(df), dtype=bool)
    pos = 0
    for user, group in df.groupby("user_id", sort=True):
        n = len(group)
        if n >= 5:
            picked = rng.choice(n, size=max(1, min(n - 1, int(0.2 * n + 0.5))), replace=False)
            keep[pos + picked] = False
            test[str(user)] = set(group["item_id"].to_numpy()[picked])
        pos += n
    return df[keep], test


def _ndcg(
    recs: dict[str, list[tuple[str, float]]], test: dict[str, set[str]], k: int = 10
) -> float:
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for user, truth in test.items():
        rel = np.array([item in truth for item, _ in recs.get(user, [])[:k]], dtype=float)
        total += float((rel * disc[: len(rel)]).sum()) / disc[: min(len(truth), k)].sum()
    return total / len(test)


@pytest.mark.skipif(not ML100K.exists(), reason=f"MovieLens-100k not found at {ML100K}")
def test_it_beats_toppop_clearly_on_movielens_100k() -> None:
    df = pd.read_csv(
        ML100K, sep="\t", header=None, names=["user_id", "item_id", "r", "t"], dtype=str
    )
    visible, test = _holdout(df)
    split = split_interactions(
        visible,
        SplitSpec(heldout_ratio=0.2, val_user_ratio=0.5, test_user_ratio=0.1),
        user_column="user_id",
        item_column="item_id",
    )
    spec = TuningSpec(
        algorithms=("IALS", "RP3beta", "TopPop"),
        n_trials=12,
        random_seed=42,
        fixed_params={"RP3beta": {"n_threads": 1}},
    )
    result = tune(split, EvalSpec(cutoff=10), spec)
    users = sorted(test)

    def score(class_name: str, params: dict[str, object]) -> float:
        fitted = train_model(
            visible, class_name, params, user_column="user_id", item_column="item_id"
        )
        return _ndcg(LoadedModel.from_fitted(fitted).recommend_batch(users, 10), test)

    tuned, toppop = score(result.best_class_name, result.best_params), score("TopPop", {})
    assert result.test_metrics["ndcg@10"] > 0.15
    assert tuned > 1.7 * toppop, (tuned, toppop, result.best_class_name)
