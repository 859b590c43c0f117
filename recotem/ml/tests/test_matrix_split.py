from __future__ import annotations

import pandas as pd
import pytest

from recotem.ml.matrix import build_interaction_matrix
from recotem.ml.split import SplitSpec, split_interactions


def test_it_counts_duplicates_once_and_sorts_ids() -> None:
    df = pd.DataFrame({"u": ["b", "a", "a", "a"], "i": [2, 1, 1, 10]})
    m = build_interaction_matrix(df, user_column="u", item_column="i")
    assert m.user_ids == ["a", "b"]
    assert m.item_ids == ["1", "10", "2"]
    assert m.X.nnz == 3 and m.X.max() == 1.0


def test_it_drops_ids_outside_a_given_order() -> None:
    df = pd.DataFrame({"u": ["a", "z"], "i": ["x", "x"]})
    m = build_interaction_matrix(
        df, user_column="u", item_column="i", user_ids=["a"], item_ids=["x"]
    )
    assert m.X.shape == (1, 1) and m.X.nnz == 1


def test_it_rejects_time_schemes_without_a_time_column(log: pd.DataFrame) -> None:
    for scheme in ("TG", "TU"):
        with pytest.raises(ValueError, match="no time column"):
            split_interactions(
                log, SplitSpec(scheme=scheme), user_column="user", item_column="item"
            )


def test_it_rejects_bad_split_settings(log: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="heldout_ratio"):
        split_interactions(
            log, SplitSpec(heldout_ratio=1.5), user_column="user", item_column="item"
        )
    with pytest.raises(ValueError, match="unknown split scheme"):
        SplitSpec(scheme="XX").validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["RG", "TU", "TG"])
def test_it_keeps_validation_and_test_parts_disjoint(log: pd.DataFrame, scheme: str) -> None:
    spec = SplitSpec(scheme=scheme, heldout_ratio=0.3, val_user_ratio=0.3, test_user_ratio=0.2)  # type: ignore[arg-type]
    s = split_interactions(log, spec, user_column="user", item_column="item", time_column="ts")
    n_val = s.val_truth.shape[0]
    assert s.val_truth.nnz > 0 and s.test_truth is not None and s.test_truth.nnz > 0
    # hidden validation interactions are not in the tuning matrix
    val_rows = s.tune_train[s.val_offset : s.val_offset + n_val]
    assert val_rows.multiply(s.val_truth).nnz == 0
    assert s.test_train is not None
    test_rows = s.test_train[s.test_offset :]
    assert test_rows.multiply(s.test_truth).nnz == 0
    assert s.X_all.nnz == 14 * 120  # the duplicate row counted once


def test_it_holds_out_the_latest_interactions_with_TU(log: pd.DataFrame) -> None:
    spec = SplitSpec(scheme="TU", heldout_ratio=0.3, val_user_ratio=0.3, test_user_ratio=0.2)
    s = split_interactions(log, spec, user_column="user", item_column="item", time_column="ts")
    by_user = (
        log.drop_duplicates(["user", "item"]).sort_values("ts").groupby("user")["item"].apply(list)
    )
    # every validation user's hidden items are its last 4 (floor(14 * 0.3))
    rows = s.tune_train[s.val_offset :]
    for r in range(s.val_truth.shape[0]):
        hidden = {s.item_ids[c] for c in s.val_truth[r].indices}
        seen = {s.item_ids[c] for c in rows[r].indices}
        user = next(u for u, items in by_user.items() if set(items) == hidden | seen)
        assert hidden == set(by_user[user][-4:])


def test_it_splits_the_same_way_for_the_same_seed(log: pd.DataFrame) -> None:
    spec = SplitSpec(heldout_ratio=0.3, val_user_ratio=0.3, random_seed=7)
    a = split_interactions(log, spec, user_column="user", item_column="item")
    b = split_interactions(
        log.sample(frac=1.0, random_state=1), spec, user_column="user", item_column="item"
    )
    assert (a.val_truth != b.val_truth).nnz == 0
    assert (a.tune_train != b.tune_train).nnz == 0
