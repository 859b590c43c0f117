"""Shared fixtures: a small clustered interaction log and fast tuning settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ML100K  # the repository root's conftest: finds shared/data from a worktree too
from recotem.ml.evaluation import EvalSpec
from recotem.ml.split import SplitData, SplitSpec, split_interactions

REPO_ROOT = Path(__file__).resolve().parents[3]
__all__ = ["ML100K", "REPO_ROOT"]


def make_clustered_log(n_users: int = 120, n_items: int = 60, seed: int = 0) -> pd.DataFrame:
    """Users in 4 taste clusters, so a personalised model clearly beats popularity."""
    rng = np.random.default_rng(seed)
    rows = []
    per_cluster = n_items // 4
    for u in range(n_users):
        cluster = u % 4
        own = np.arange(cluster * per_cluster, (cluster + 1) * per_cluster)
        picks = rng.choice(own, size=12, replace=False).tolist()
        others = np.setdiff1d(np.arange(n_items), own)
        picks += rng.choice(others, size=2, replace=False).tolist()
        for t, i in enumerate(picks):
            rows.append((f"u{u}", f"i{i}", 1000 * u + t))
    rows.append(rows[0])  # a duplicate: must count once
    return pd.DataFrame(rows, columns=["user", "item", "ts"])


@pytest.fixture()
def log() -> pd.DataFrame:
    return make_clustered_log()


@pytest.fixture()
def split(log: pd.DataFrame) -> SplitData:
    return split_interactions(
        log,
        SplitSpec(scheme="RG", heldout_ratio=0.3, val_user_ratio=0.3, test_user_ratio=0.2),
        user_column="user",
        item_column="item",
    )


@pytest.fixture()
def eval_spec() -> EvalSpec:
    return EvalSpec(cutoff=5, target_metric="ndcg")
