from __future__ import annotations

import pandas as pd
import pytest
import scipy.sparse as sps

from recotem.ml.matrix import build_interaction_matrix, build_interaction_matrix_with_codes
from recotem.ml.split import (
    SplitData,
    SplitSpec,
    _assemble,
    _held_matrix,
    _userwise_split,
    split_interactions,
)


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


def _through_irspack(df: pd.DataFrame, spec: SplitSpec) -> SplitData:
    """RG the way it used to run: irspack's DataFrame function on de-duplicated codes."""
    im, u_codes, i_codes = build_interaction_matrix_with_codes(
        df, user_column="user", item_column="item"
    )
    coded = pd.DataFrame({"u": u_codes, "i": i_codes}).drop_duplicates(["u", "i"])
    role, heldout = _userwise_split(coded, spec, im.n_users)
    return _assemble(im, role, _held_matrix(im, coded, heldout))


def _same_matrix(a: sps.csr_matrix | None, b: sps.csr_matrix | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and (a != b).nnz == 0


@pytest.mark.parametrize(
    "spec",
    [
        SplitSpec(),
        SplitSpec(heldout_ratio=0.3, test_user_ratio=0.4, random_seed=7),
        SplitSpec(n_heldout=2, n_val_users=50, n_test_users=30, random_seed=3),
        SplitSpec(heldout_ratio=0.5, test_user_ratio=0.0, val_user_ratio=0.2),
        SplitSpec(heldout_ratio=0.2, test_user_ratio=0.5, val_user_ratio=0.5),
    ],
)
def test_the_matrix_rg_split_is_irspacks_draw_for_draw(
    ml100k_df: pd.DataFrame, spec: SplitSpec
) -> None:
    """The fast RG path must hold out exactly what irspack's function holds out, so scores,
    tuning results and gate decisions do not move when the implementation does."""
    df = ml100k_df.rename(columns={"user_id": "user", "item_id": "item"})
    df = pd.concat([df, df.head(500)])  # repeated pairs count once in both
    fast = split_interactions(df, spec, user_column="user", item_column="item")
    slow = _through_irspack(df, spec)
    assert fast.val_offset == slow.val_offset and fast.test_offset == slow.test_offset
    for name in ("X_all", "tune_train", "val_truth", "test_train", "test_truth"):
        assert _same_matrix(getattr(fast, name), getattr(slow, name)), name
    assert fast.val_truth.nnz > 0


def test_the_matrix_rg_split_matches_irspack_on_string_ids_and_few_users() -> None:
    rows = [(f"user-{u}", f"item {(u * 7 + k) % 23}") for u in range(9) for k in range(1 + u % 5)]
    df = pd.DataFrame(rows, columns=["user", "item"])
    # 9 users: irspack splits off no test users below ten (0.1 x users < 1).
    spec = SplitSpec(heldout_ratio=0.5, n_val_users=3, n_test_users=2)
    fast = split_interactions(df, spec, user_column="user", item_column="item")
    slow = _through_irspack(df, spec)
    for name in ("X_all", "tune_train", "val_truth", "test_train", "test_truth"):
        assert _same_matrix(getattr(fast, name), getattr(slow, name)), name
