"""Validation/test splits for tuning and for an honest test score.

Three schemes (the names Recotem has always used):

* ``RG`` - random per-user holdout: a random subset of users are validation
  users and another disjoint subset test users; each of them has
  ``heldout_ratio`` of its interactions (or ``n_heldout``) hidden at random.
  This is irspack's ``split_dataframe_partial_user_holdout``.
* ``TU`` - the same, but each evaluation user's *latest* interactions are
  hidden (irspack's time-ordered holdout, ``split_last_n_interaction_df``).
* ``TG`` - a global time split: the latest ``heldout_ratio`` of all
  interactions (or the last ``n_heldout``) are the future; users with future
  interactions are divided into validation and test users.  Nothing after the
  cut-off is ever trained on during tuning, so the score reflects deploying
  at that moment.

Why validation *and* test: tuning optimises the validation score, which is
therefore optimistically biased; the test users' hidden interactions are
never looked at during the search and give an unbiased score for the winner.

irspack's splitter orders item columns by ``list(set(ids))``; for strings that
order depends on the process' hash seed, which would make the random holdout
itself differ between processes.  We therefore hand irspack integer codes
(whose set order is stable) and map the result back to our sorted id order.

``RG`` does not go through irspack's DataFrame function: at 20 M interactions
its pandas steps (de-duplication, ``isin``, categorical encoding) took ~47 s
per split. :func:`_random_userwise_split` makes the same random draws in the
same order on the interaction matrix we already have (user shuffles, then
irspack's own row-wise holdout for the validation and then the test users),
so the split is identical to irspack's - a test checks it against
:func:`_userwise_split`, which still serves ``TU``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sps
from irspack import split_dataframe_partial_user_holdout
from irspack.utils import rowwise_train_test_split

from .matrix import InteractionMatrix, build_interaction_matrix_with_codes, codes_to_csr
from .splitspec import SCHEMES, Scheme, SplitSpec, split_spec_from_config

__all__ = [
    "SCHEMES",
    "Scheme",
    "SplitData",
    "SplitSpec",
    "split_interactions",
    "split_spec_from_config",
]


@dataclass(frozen=True)
class SplitData:
    """Matrices for tuning (validation) and for the final test score.

    Rows of ``tune_train`` are ``[other users..., validation users...]`` so an
    irspack ``Evaluator(val_truth, offset=val_offset)`` scores only validation
    users; likewise ``test_train``/``test_truth``/``test_offset``.  Columns
    follow ``item_ids`` everywhere.  ``test_truth`` is None without test users.
    """

    user_ids: list[str]
    item_ids: list[str]
    X_all: sps.csr_matrix
    tune_train: sps.csr_matrix
    val_truth: sps.csr_matrix
    val_offset: int
    test_train: sps.csr_matrix | None
    test_truth: sps.csr_matrix | None
    test_offset: int


def split_interactions(
    df: pd.DataFrame,
    spec: SplitSpec,
    *,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
) -> SplitData:
    """Split ``df`` according to ``spec``.

    Raises ValueError for bad settings, a missing time column with TG/TU, or
    a split that leaves no validation interaction (too little data).
    """
    spec.validate()
    if spec.scheme in ("TG", "TU"):
        if time_column is None:
            raise ValueError(
                f"split scheme {spec.scheme} orders interactions by time, but the project "
                "has no time column; use scheme RG or set a time column"
            )
        if time_column not in df.columns:
            raise ValueError(f"time column {time_column!r} not found in the data")
    # The matrix's own codes: encoding the ids a second time cost as much as building it.
    im, u_codes, i_codes = build_interaction_matrix_with_codes(
        df, user_column=user_column, item_column=item_column
    )
    if spec.scheme == "RG":
        role, held_part = _random_userwise_split(im.X, spec)
        return _assemble(im, role, held_part)
    coded = pd.DataFrame({"u": u_codes, "i": i_codes})
    if spec.scheme in ("TG", "TU"):
        assert time_column is not None
        coded["t"] = _time_values(df[time_column])
        # The first occurrence is when the user met the item; later repeats must not
        # move a known item into the "future".
        coded = coded.sort_values(["u", "i", "t"], kind="mergesort")
        coded = coded.drop_duplicates(["u", "i"], keep="first")
    else:
        coded = coded.drop_duplicates(["u", "i"])

    n_users = im.n_users
    if spec.scheme == "TG":
        role, heldout = _global_time_split(coded, spec, n_users)
    else:
        role, heldout = _userwise_split(coded, spec, n_users)
    return _assemble(im, role, _held_matrix(im, coded, heldout))


def _time_values(col: pd.Series) -> np.ndarray:
    """Comparable float times: numbers as they are, anything else parsed as datetime."""
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=np.float64)
    else:
        try:
            parsed = pd.to_datetime(col, utc=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"time column could not be read as numbers or dates: {exc}") from exc
        values = parsed.astype("int64").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("time column has empty values")
    return values


def _n_users(ratio: float, n: int | None, n_all: int) -> int:
    return int(n) if n is not None else int(n_all * ratio)


def _evaluation_user_counts(spec: SplitSpec, n_users: int) -> tuple[int, int]:
    """(validation users, test users) of a per-user split; ValueError if they do not fit."""
    n_val = _n_users(spec.effective_val_ratio, spec.n_val_users, n_users)
    n_test = _n_users(spec.test_user_ratio, spec.n_test_users, n_users)
    if n_val < 1:
        raise ValueError(
            f"only {n_users} users: val_user_ratio gives no validation user; "
            "raise it or set n_val_users"
        )
    if n_val + n_test > n_users:
        raise ValueError(
            f"{n_val} validation + {n_test} test users exceed the {n_users} users in the data"
        )
    return n_val, n_test


def _random_userwise_split(X: sps.csr_matrix, spec: SplitSpec) -> tuple[np.ndarray, sps.csr_matrix]:
    """RG on the binary interaction matrix: per-user role (0 train, 1 val, 2 test) and the
    held-out part as a matrix of the same shape.

    Replays :func:`irspack.split_dataframe_partial_user_holdout` draw for draw, given users
    in code order and the item columns it would use: one ``RandomState(seed)`` shuffles the
    users (the first ``n_val + n_test`` evaluate), shuffles those again (the first
    ``n_test`` test), then seeds irspack's row-wise holdout once for the validation users
    and once for the test users, each in ascending user order.
    """
    n_users, n_items = X.shape
    n_val, n_test = _evaluation_user_counts(spec, n_users)
    rns = np.random.RandomState(spec.random_seed)
    users = np.arange(n_users, dtype=np.int64)
    rns.shuffle(users)
    evaluated = users[: n_val + n_test]
    # irspack keeps its default test_user_ratio (0.1) when given user counts, and splits off
    # test users only when that ratio times the users reaches one.
    if 0.1 * n_users >= 1:
        rns.shuffle(evaluated)
        val_users, test_users = evaluated[n_test:], evaluated[:n_test]
    else:
        val_users, test_users = evaluated, evaluated[:0]
    # irspack's item columns are list(set(item codes)).
    columns = np.asarray(list(set(np.unique(X.indices).tolist())), dtype=np.int64)
    role = np.zeros(n_users, dtype=np.int8)
    held_rows: list[np.ndarray] = []
    held_cols: list[np.ndarray] = []
    for group, code in ((val_users, 1), (test_users, 2)):
        rows = np.sort(group)
        role[rows] = code
        part = X[rows][:, columns].tocsr()
        part.sort_indices()
        _, held = rowwise_train_test_split(
            part,
            test_ratio=spec.heldout_ratio,
            n_test=spec.n_heldout,
            random_state=rns,
        )
        pairs = sps.coo_matrix(held)
        held_rows.append(rows[pairs.row])
        held_cols.append(columns[pairs.col])
    r = np.concatenate(held_rows) if held_rows else np.empty(0, dtype=np.int64)
    c = np.concatenate(held_cols) if held_cols else np.empty(0, dtype=np.int64)
    return role, codes_to_csr(r, c, n_users, n_items) if r.size else sps.csr_matrix(X.shape)


def _userwise_split(
    coded: pd.DataFrame, spec: SplitSpec, n_users: int
) -> tuple[np.ndarray, pd.Series]:
    """RG/TU through irspack; returns per-user role (0 train, 1 val, 2 test) and
    a boolean "held out" flag per row of ``coded``."""
    n_val, n_test = _evaluation_user_counts(spec, n_users)
    # Users in sorted order so the shuffle below depends on the seed only.
    coded = coded.sort_values(["u", "i"], kind="mergesort")
    parts, item_codes = split_dataframe_partial_user_holdout(
        coded,
        "u",
        "i",
        time_column="t" if spec.scheme == "TU" else None,
        n_val_user=n_val,
        n_test_user=n_test,
        heldout_ratio_val=spec.heldout_ratio,
        n_heldout_val=spec.n_heldout,
        heldout_ratio_test=spec.heldout_ratio,
        n_heldout_test=spec.n_heldout,
        random_state=np.random.RandomState(spec.random_seed),
    )
    role = np.zeros(n_users, dtype=np.int8)
    held_pairs: list[np.ndarray] = []
    col_codes = np.asarray(item_codes, dtype=np.int64)
    for name, code in (("val", 1), ("test", 2)):
        pair = parts[name]
        if pair.n_users == 0:
            continue
        uids = np.asarray(pair.user_ids, dtype=np.int64)
        role[uids] = code
        held = pair.X_test.tocoo()
        held_pairs.append(uids[held.row] * np.int64(len(col_codes) + 1) + col_codes[held.col])
    key = coded["u"].to_numpy() * np.int64(len(col_codes) + 1) + coded["i"].to_numpy()
    all_held = np.concatenate(held_pairs) if held_pairs else np.empty(0, dtype=np.int64)
    # indexed like the caller's ``coded``, which _assemble re-aligns on
    return role, pd.Series(np.isin(key, all_held), index=coded.index)


def _global_time_split(
    coded: pd.DataFrame, spec: SplitSpec, n_users: int
) -> tuple[np.ndarray, pd.Series]:
    """TG: the latest interactions overall are the future; users owning some of
    them become validation or test users (split in the val:test proportion)."""
    order = coded.sort_values(["t", "u", "i"], kind="mergesort").index
    n_total = len(coded)
    n_future = (
        spec.n_heldout if spec.n_heldout is not None else math.ceil(n_total * spec.heldout_ratio)
    )
    n_future = min(max(n_future, 1), n_total - 1)
    heldout = pd.Series(False, index=coded.index)
    heldout.loc[order[n_total - n_future :]] = True
    eligible = np.unique(coded.loc[heldout.to_numpy(), "u"].to_numpy())
    rng = np.random.RandomState(spec.random_seed)
    shuffled = eligible.copy()
    rng.shuffle(shuffled)
    val_r, test_r = spec.effective_val_ratio, spec.test_user_ratio
    n_test = int(round(len(shuffled) * test_r / (val_r + test_r))) if test_r > 0 else 0
    n_test = min(n_test, len(shuffled) - 1)
    role = np.zeros(n_users, dtype=np.int8)
    role[shuffled[n_test:]] = 1
    role[shuffled[:n_test]] = 2
    # Future interactions of users that are neither val nor test do not exist
    # for tuning either way: they are held out but never scored.
    return role, heldout


def _held_matrix(im: InteractionMatrix, coded: pd.DataFrame, heldout: pd.Series) -> sps.csr_matrix:
    """The held-out rows of ``coded`` as a binary matrix shaped like ``im``."""
    h = heldout.reindex(coded.index).to_numpy(dtype=bool)
    return codes_to_csr(coded["u"].to_numpy()[h], coded["i"].to_numpy()[h], im.n_users, im.n_items)


def _assemble(im: InteractionMatrix, role: np.ndarray, held_part: sps.csr_matrix) -> SplitData:
    full = im.X.copy()
    full.data[:] = 1.0
    train_part = (full - held_part).tocsr()
    train_part.eliminate_zeros()
    train_part.sort_indices()

    train_u = np.flatnonzero(role == 0)
    val_u = np.flatnonzero(role == 1)
    test_u = np.flatnonzero(role == 2)
    # Tuning: everything except validation/test users' hidden part (and, for
    # TG, other users' future) - validation users last.
    tune_train = sps.vstack(
        [train_part[train_u], train_part[test_u], train_part[val_u]], format="csr"
    )
    val_truth = held_part[val_u].tocsr()
    if val_truth.nnz == 0:
        raise ValueError(
            "the split left no validation interaction: users have too few interactions "
            "for this heldout_ratio; raise heldout_ratio or set n_heldout"
        )
    test_train: sps.csr_matrix | None = None
    test_truth: sps.csr_matrix | None = None
    if len(test_u) and held_part[test_u].nnz:
        # Test: validation users' hidden interactions are now ordinary training data.
        test_train = sps.vstack(
            [train_part[train_u], full[val_u], train_part[test_u]], format="csr"
        )
        test_truth = held_part[test_u].tocsr()
    return SplitData(
        user_ids=im.user_ids,
        item_ids=im.item_ids,
        X_all=full.tocsr(),
        tune_train=tune_train,
        val_truth=val_truth,
        val_offset=len(train_u) + len(test_u),
        test_train=test_train,
        test_truth=test_truth,
        test_offset=len(train_u) + len(val_u),
    )
