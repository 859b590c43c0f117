"""User x item interaction matrices with a persisted, deterministic id order.

Why a module of its own: irspack builds its id lists with ``list(set(...))``,
whose order for strings changes with ``PYTHONHASHSEED`` (i.e. between
processes).  A model is only servable if the row/column order is stored with
it, and tuning is only reproducible if that order does not depend on the
process.  Everything here therefore sorts ids as strings and returns the
order explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sps


@dataclass(frozen=True)
class InteractionMatrix:
    """An implicit user x item matrix (1.0 per distinct pair) and its id order.

    ``X[u, i] == 1.0`` means ``user_ids[u]`` interacted with ``item_ids[i]`` at
    least once; duplicate rows count once because a repeat view is not more
    evidence of preference in the implicit-feedback models irspack fits.
    """

    X: sps.csr_matrix
    user_ids: list[str]
    item_ids: list[str]

    @property
    def n_users(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.X.shape[1])


def encode_ids(values: pd.Series, ids: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Map a column to integer codes in sorted-string order.

    If ``ids`` is given it defines the order, and values not in it get -1.

    The column is factorised first and only its distinct values are turned into Python strings,
    sorted and looked up: 20 M rows hold ~140 k distinct users, and converting every row to a
    Python string (the obvious way) was most of the matrix phase.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    as_str = np.asarray(pd.Index(uniques).astype(str), dtype=object)
    if ids is None:
        distinct = set(as_str.tolist())
        if len(distinct) != len(as_str):  # e.g. 7 and "7" in one object column: one id
            ids = sorted(distinct)
        else:
            order = np.argsort(as_str, kind="stable")  # Python str order, as sorted() gives
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order), dtype=np.int64)
            return rank[codes], as_str[order].tolist()
    categories = pd.Index(ids, dtype=object)
    lookup = np.asarray(categories.get_indexer(pd.Index(as_str, dtype=object)), dtype=np.int64)
    return lookup[codes], list(ids)


def build_interaction_matrix(
    df: pd.DataFrame,
    *,
    user_column: str,
    item_column: str,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
) -> InteractionMatrix:
    """Build the implicit CSR matrix from a DataFrame.

    Ids are compared as strings.  When ``user_ids``/``item_ids`` are given
    (e.g. the order of a stored model), rows with ids outside them are dropped;
    otherwise the order is the sorted set of ids found in ``df``.

    Raises ValueError if a column is missing or ``df`` holds no interaction.
    """
    return build_interaction_matrix_with_codes(
        df, user_column=user_column, item_column=item_column, user_ids=user_ids, item_ids=item_ids
    )[0]


def build_interaction_matrix_with_codes(
    df: pd.DataFrame,
    *,
    user_column: str,
    item_column: str,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
) -> tuple[InteractionMatrix, np.ndarray, np.ndarray]:
    """:func:`build_interaction_matrix` plus each row's user and item code (-1: not in the
    given id lists), for callers that go on from the rows (the split)."""
    for col in (user_column, item_column):
        if col not in df.columns:
            raise ValueError(f"column {col!r} not found; columns are {list(df.columns)}")
    u_all, user_ids = encode_ids(df[user_column], user_ids)
    i_all, item_ids = encode_ids(df[item_column], item_ids)
    keep = (u_all >= 0) & (i_all >= 0)
    u_codes, i_codes = u_all[keep], i_all[keep]
    if u_codes.size == 0 and (not user_ids or not item_ids):
        raise ValueError("no interactions to build a matrix from")
    X = codes_to_csr(u_codes, i_codes, len(user_ids), len(item_ids))
    return InteractionMatrix(X=X, user_ids=user_ids, item_ids=item_ids), u_all, i_all


def codes_to_csr(
    u_codes: np.ndarray, i_codes: np.ndarray, n_users: int, n_items: int
) -> sps.csr_matrix:
    """A binary CSR matrix from index pairs; duplicates collapse to 1.0."""
    data = np.ones(len(u_codes), dtype=np.float64)
    X = sps.csr_matrix((data, (u_codes, i_codes)), shape=(n_users, n_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    X.sort_indices()
    return X
