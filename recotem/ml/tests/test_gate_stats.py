"""The paired, noise-aware quality gate: per-user metrics, decision rule, and real fits."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps
from irspack import Evaluator

from recotem.ml.evaluation import EvalSpec
from recotem.ml.gate import (
    GateReport,
    HeldOutScores,
    confidently_worse,
    decide,
    gate_compare,
    holdout_digest,
    paired_t_interval,
    per_user_metric,
    same_configuration,
)
from recotem.ml.registry import recommender_class
from recotem.ml.split import SplitSpec, split_interactions

METRICS = ("ndcg", "recall", "hit", "map", "precision")
REPORT_KEYS = {
    "metric",
    "candidate_score",
    "incumbent_score",
    "ci_low",
    "ci_high",
    "n_eval_users",
    "method",
    "floor",
    "reason",
    "passed",
}
# IALS settings that work on ml-100k (irspack's defaults alpha0=1, reg=1e-3 score near 0 there).
IALS = {"n_components": 64, "alpha0": 0.01, "reg": 0.01, "train_epochs": 10, "n_threads": 1}
ML_SPLIT = SplitSpec(scheme="RG", heldout_ratio=0.2, test_user_ratio=0.3, random_seed=7)


def fit(X: sps.csr_matrix, name: str, params: dict[str, Any] | None = None) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return recommender_class(name)(X, **(params or {})).learn()


def assert_matches_irspack(rec: Any, truth: sps.csr_matrix, offset: int, cutoff: int) -> None:
    reference = Evaluator(truth, offset=offset, cutoff=cutoff, n_threads=1).get_score(rec)
    for metric in METRICS:
        values = per_user_metric(rec, truth, offset=offset, cutoff=cutoff, metric=metric)
        assert len(values) == reference["valid_user"]
        assert values.mean() == pytest.approx(reference[metric], abs=1e-9), (metric, cutoff)


# --------------------------------------------------------------------------- per-user metrics


@pytest.fixture(scope="module")
def ml_split(ml100k_df: pd.DataFrame) -> Any:
    return split_interactions(ml100k_df, ML_SPLIT, user_column="user_id", item_column="item_id")


def test_it_averages_per_user_metrics_to_irspack_scores_on_ml100k(ml_split: Any) -> None:
    X, truth, offset = ml_split.test_train, ml_split.test_truth, ml_split.test_offset
    for name, params in (("IALS", IALS), ("RP3beta", {"top_k": 50, "n_threads": 1})):
        rec = fit(X, name, params)
        for cutoff in (5, 10, 20):
            assert_matches_irspack(rec, truth, offset, cutoff)


def test_it_averages_per_user_metrics_to_irspack_scores_with_ties_and_few_items() -> None:
    """TopPop on a tiny catalogue: many equal scores (tie-break by item index), users who have
    seen nearly every item (fewer unseen items than the cutoff), users with nothing held out,
    and held-out items that are also in training (masked, so never a hit)."""
    rng = np.random.default_rng(3)
    n_users, n_items = 300, 25
    dense = rng.random((n_users, n_items)) < rng.uniform(0.05, 0.95, size=(n_users, 1))
    held = dense & (rng.random(dense.shape) < 0.3)
    also_trained = held & (rng.random(dense.shape) < 0.2)
    train = sps.csr_matrix(((dense & ~held) | also_trained).astype(np.float64))
    offset = 100
    truth = sps.csr_matrix(held[offset:].astype(np.float64))
    assert (np.diff(truth.indptr) == 0).any()  # some users are not evaluated
    for name in ("TopPop", "RP3beta"):
        rec = fit(train, name)
        for cutoff in (1, 3, 10, 25):
            assert_matches_irspack(rec, truth, offset, cutoff)


def test_it_scores_each_user_as_irspack_does_in_edge_cases() -> None:
    """Per user, against irspack run on that user alone: a user who has seen every item, one
    with fewer unseen items than held-out ones, ties among popular items."""
    n_items = 8
    train = np.zeros((4, n_items))
    train[0, :] = 1  # has seen every item; item 1 is also held out
    train[1, :6] = 1  # two unseen items, three held out
    train[2, :5] = 1
    train[3, 2] = 1
    held_out = {0: [1], 1: [0, 1, 6], 2: [7], 3: [0]}
    truth = np.zeros((4, n_items))
    for user, items in held_out.items():
        truth[user, items] = 1
    rec = fit(sps.csr_matrix(train), "TopPop")
    for cutoff in (1, 3, 5):
        for metric in METRICS:
            mine = per_user_metric(
                rec, sps.csr_matrix(truth), offset=0, cutoff=cutoff, metric=metric
            )
            theirs = [
                Evaluator(
                    sps.csr_matrix(truth[u : u + 1]), offset=u, cutoff=cutoff, n_threads=1
                ).get_score(rec)[metric]
                for u in range(4)
            ]
            np.testing.assert_allclose(mine, theirs, atol=1e-12, err_msg=f"{metric}@{cutoff}")


# --------------------------------------------------------------------------- configurations


def test_it_treats_coerced_parameters_and_alias_names_as_the_same_configuration() -> None:
    assert same_configuration(
        ("IALS", {"n_components": 64}), ("IALSRecommender", {"n_components": 64.0})
    )
    assert same_configuration(("IALS", {}), ("IALS", {"n_components": 20}))  # 20 is the default
    assert not same_configuration(("IALS", {"n_components": 64}), ("IALS", {"n_components": 32}))
    assert not same_configuration(("TopPop", {}), ("IALS", {}))
    with pytest.raises(ValueError, match="n_factors"):
        same_configuration(("IALS", {"n_factors": 3}), ("IALS", {}))


def test_it_passes_identical_configurations_refitted(log: pd.DataFrame) -> None:
    data = split_interactions(
        log,
        SplitSpec(heldout_ratio=0.3, test_user_ratio=0.4),
        user_column="user",
        item_column="item",
    )
    X, truth, offset = data.test_train, data.test_truth, data.test_offset
    assert X is not None and truth is not None
    params = {"n_components": 8, "train_epochs": 5, "n_threads": 1, "alpha0": 0.1}
    first, second, floor = (
        per_user_metric(fit(X, name, p), truth, offset=offset, cutoff=5, metric="ndcg")
        for name, p in (("IALS", params), ("IALS", params), ("TopPop", {}))
    )
    report = decide(first, second, floor, metric="ndcg@5", tolerance=0.0)
    assert report.ci_low is not None and report.ci_high is not None
    assert report.ci_low <= 0.0 <= report.ci_high
    assert report.passed, report.reason

    # Through the gate itself the identical pair is not compared at all: only the floor applies.
    via_gate = gate_compare(
        log,
        candidate=("IALS", params),
        incumbent=("IALSRecommender", {**params, "n_components": 8.0}),
        split=SplitSpec(heldout_ratio=0.3, test_user_ratio=0.4),
        evaluation=EvalSpec(cutoff=5),
        tolerance=0.0,
        user_column="user",
        item_column="item",
        with_candidate_metrics=True,
    )
    assert via_gate.passed, via_gate.reason
    assert via_gate.incumbent_score is None and via_gate.ci_low is None
    assert via_gate.candidate_score == pytest.approx(report.candidate_score)
    assert via_gate.floor == pytest.approx(report.floor)
    assert set(via_gate.as_dict()) == REPORT_KEYS
    # The candidate's test metrics come from the same fit: irspack's aggregate over the same
    # held-out users is the mean of the per-user values the gate decided on.
    # Stored at the gate's cutoff and at 10, where every model's test metrics meet.
    assert via_gate.candidate_metrics is not None
    assert set(via_gate.candidate_metrics) == {
        f"{m}@{k}" for m in ("ndcg", "map", "recall", "hit", "precision") for k in (5, 10)
    }
    assert via_gate.candidate_metrics["ndcg@5"] == pytest.approx(via_gate.candidate_score)
    # A split without test users is scored on validation users: that is no test score.
    on_validation = gate_compare(
        log,
        candidate=("IALS", params),
        incumbent=("IALS", params),
        split=SplitSpec(heldout_ratio=0.3, test_user_ratio=0.0, val_user_ratio=0.4),
        evaluation=EvalSpec(cutoff=5),
        tolerance=0.0,
        user_column="user",
        item_column="item",
        with_candidate_metrics=True,
    )
    assert on_validation.candidate_metrics is None and on_validation.n_eval_users > 0


def test_it_takes_the_candidates_scores_for_its_own_holdout_instead_of_fitting_it(
    log: pd.DataFrame,
) -> None:
    split = SplitSpec(heldout_ratio=0.3, test_user_ratio=0.4)
    settings: dict[str, Any] = {
        "candidate": ("IALS", {"n_components": 8, "train_epochs": 5, "n_threads": 1}),
        "incumbent": ("TopPop", {}),
        "split": split,
        "evaluation": EvalSpec(cutoff=5),
        "tolerance": 0.0,
        "user_column": "user",
        "item_column": "item",
    }
    fitted = gate_compare(log, **settings)
    data = split_interactions(log, split, user_column="user", item_column="item")
    assert data.test_train is not None and data.test_truth is not None
    here = holdout_digest(data.test_train.shape, data.test_truth, data.test_offset)
    # Scores no fit could give (every user perfect) show that they were taken as they are.
    perfect = np.ones(fitted.n_eval_users)
    given = gate_compare(log, **settings, candidate_scores=HeldOutScores("ndcg@5", here, perfect))
    assert given.candidate_score == 1.0 and given.n_eval_users == fitted.n_eval_users
    assert given.incumbent_score == pytest.approx(fitted.incumbent_score)
    assert "not fitted again" in given.reason and "not fitted again" not in fitted.reason
    # Scores of another holdout (another seed's users) or of another metric: fitted instead.
    other = split_interactions(
        log, replace(split, random_seed=7), user_column="user", item_column="item"
    )
    assert other.test_train is not None and other.test_truth is not None
    elsewhere = holdout_digest(other.test_train.shape, other.test_truth, other.test_offset)
    assert elsewhere != here
    for scores in (
        HeldOutScores("ndcg@5", elsewhere, perfect),
        HeldOutScores("ndcg@10", here, perfect),
    ):
        refitted = gate_compare(log, **settings, candidate_scores=scores)
        assert refitted.candidate_score == pytest.approx(fitted.candidate_score)
        assert "not fitted again" not in refitted.reason


def test_held_out_scores_survive_their_bytes_exactly() -> None:
    scores = HeldOutScores("map@20", "sha256:ab", np.array([0.0, 1 / 3, 0.125, 1.0]))
    back = HeldOutScores.from_bytes(scores.to_bytes())
    assert (back.metric, back.holdout) == ("map@20", "sha256:ab")
    np.testing.assert_array_equal(back.values, scores.values)
    assert back.values.dtype == np.float64


def test_it_fails_the_floor_when_the_candidate_is_toppop(log: pd.DataFrame) -> None:
    report = gate_compare(
        log,
        candidate=("TopPop", {}),
        incumbent=("TopPopRecommender", None),
        split=SplitSpec(heldout_ratio=0.3, test_user_ratio=0.4),
        evaluation=EvalSpec(cutoff=5, target_metric="recall"),
        tolerance=0.05,
        user_column="user",
        item_column="item",
    )
    assert not report.passed
    assert report.metric == "recall@5"
    assert report.candidate_score == report.floor
    assert "TopPop floor" in report.reason


# --------------------------------------------------------------------------- decision rule


def test_it_keeps_equal_models_and_rejects_clearly_worse_ones_in_simulation() -> None:
    """Monte-Carlo of the decision rule on synthetic paired per-user scores (no fitting)."""
    rng = np.random.default_rng(20240601)
    runs, users = 4000, 500
    base = rng.beta(2, 5, size=(runs, users))
    incumbent = 0.5 * base + 0.5 * rng.beta(2, 5, size=(runs, users))
    candidate = 0.5 * base + 0.5 * rng.beta(2, 5, size=(runs, users))
    low, high = paired_t_interval(candidate - incumbent)
    passed = ~confidently_worse(high, incumbent.mean(axis=1), tolerance=0.0)
    assert passed.mean() >= 0.97, passed.mean()  # ~0.975 for a two-sided 95 % interval
    assert ((low <= 0) & (0 <= high)).mean() >= 0.94  # the interval's own coverage

    # The vectorised rule is the one decide() applies.
    for r in range(5):
        one = decide(candidate[r], incumbent[r], None, metric="ndcg@10", tolerance=0.0)
        assert one.passed == bool(passed[r])
        assert one.ci_high == pytest.approx(float(high[r]))

    # A candidate truly worse by twice the tolerance is rejected most of the time.
    tolerance = 0.05
    users = 1000
    base = rng.beta(2, 5, size=(2000, users))
    incumbent = 0.5 * base + 0.5 * rng.beta(2, 5, size=base.shape)
    true_mean = 2 / 7  # mean of Beta(2, 5)
    candidate = 0.5 * base + 0.5 * rng.beta(2, 5, size=base.shape) - 2 * tolerance * true_mean
    _, high = paired_t_interval(candidate - incumbent)
    rejected = confidently_worse(high, incumbent.mean(axis=1), tolerance)
    assert rejected.mean() >= 0.9, rejected.mean()


def test_it_does_not_ratchet_over_a_year_of_daily_runs() -> None:
    """365 daily retrains of equally good models whose mean scores carry sigma = 0.02 noise.

    The old rule compared the candidate's noisy mean with the incumbent's stored noisy mean and
    kept the incumbent's score when it won, so lucky incumbents accumulate and equally good
    candidates are rejected ever more often. The paired rule rescores both every day.
    """
    rng = np.random.default_rng(7)
    days, users, mu, sigma, tolerance = 365, 400, 0.30, 0.02, 0.02
    per_user_sd = sigma * np.sqrt(users)  # so that each model's mean has sd sigma

    candidate = mu + per_user_sd * rng.standard_normal((days, users))
    incumbent = mu + per_user_sd * rng.standard_normal((days, users))  # no pairing benefit
    _, high = paired_t_interval(candidate - incumbent)
    new_deploys = ~confidently_worse(high, incumbent.mean(axis=1), tolerance)

    stored = mu + sigma * rng.standard_normal()
    old_deploys = np.zeros(days, dtype=bool)
    for day, score in enumerate(mu + sigma * rng.standard_normal(days)):
        if score >= stored * (1.0 - tolerance):
            old_deploys[day] = True
            stored = score
    assert new_deploys.mean() >= 0.95, new_deploys.mean()
    assert old_deploys.mean() < 0.8, old_deploys.mean()  # the contrast: the old rule ratchets


def test_it_reports_json_safe_values_under_exactly_the_documented_keys() -> None:
    rng = np.random.default_rng(1)
    inc = rng.random(50)
    report = decide(inc - 0.2, inc, inc * 0.5, metric="map@10", tolerance=0.02)
    as_dict = report.as_dict()
    assert isinstance(report, GateReport) and set(as_dict) == REPORT_KEYS
    assert not report.passed and "confidently worse" in report.reason
    assert report.method == "paired t, 95 %"
    for key in ("candidate_score", "incumbent_score", "ci_low", "ci_high", "floor"):
        assert type(as_dict[key]) is float
    assert type(as_dict["n_eval_users"]) is int and as_dict["n_eval_users"] == 50
    assert as_dict["ci_high"] < 0
    with pytest.raises(AttributeError):
        report.passed = True  # type: ignore[misc]
    with pytest.raises(ValueError, match="tolerance"):
        decide(inc, None, inc, metric="map@10", tolerance=-0.01)
    with pytest.raises(ValueError, match="confidence"):
        decide(inc, inc, inc, metric="map@10", tolerance=0.0, confidence=1.0)


# --------------------------------------------------------------------------- real fits, ml-100k


def ml_gate(df: pd.DataFrame, candidate: tuple[str, dict[str, Any]]) -> GateReport:
    return gate_compare(
        df,
        candidate=candidate,
        incumbent=("IALS", IALS),
        split=ML_SPLIT,
        evaluation=EvalSpec(cutoff=10, target_metric="ndcg"),
        tolerance=0.02,
        user_column="user_id",
        item_column="item_id",
    )


def test_it_rejects_toppop_against_ials_on_ml100k(ml100k_df: pd.DataFrame) -> None:
    report = ml_gate(ml100k_df, ("TopPop", {}))
    assert report.ci_high is not None and report.ci_high < 0
    assert not report.passed
    assert report.candidate_score == report.floor  # the floor fails too
    assert report.floor is not None and report.incumbent_score is not None
    assert report.incumbent_score > report.floor
    assert report.n_eval_users > 250


def test_it_passes_a_slightly_different_ials_on_ml100k(ml100k_df: pd.DataFrame) -> None:
    report = ml_gate(ml100k_df, ("IALS", {**IALS, "random_seed": 7, "n_components": 56}))
    assert report.passed, report.reason
    assert report.ci_low is not None and report.ci_high is not None
    assert report.ci_low < 0 < report.ci_high
    assert report.floor is not None and report.candidate_score is not None
    assert report.candidate_score > report.floor
