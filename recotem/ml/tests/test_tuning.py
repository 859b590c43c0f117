from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps
from irspack import IALSRecommender

from recotem.ml.evaluation import EvalSpec
from recotem.ml.gate import holdout_digest, per_user_metric
from recotem.ml.registry import available_recommenders, recommender_class, validate_parameters
from recotem.ml.split import SplitData
from recotem.ml.tuning import (
    TrialRecord,
    TuningError,
    TuningSpec,
    collect_study_result,
    prepare_study,
    run_study_trials,
    tune,
)

# One thread each: bit-for-bit reproducibility of multi-threaded fits is not guaranteed.
FAST = {"IALSRecommender": {"n_threads": 1}, "RP3betaRecommender": {"n_threads": 1}}


def fast_spec(**kw: object) -> TuningSpec:
    base: dict[str, object] = {
        "algorithms": ("IALS", "RP3beta", "TopPop"),
        "n_trials": 4,
        "random_seed": 3,
        "fixed_params": FAST,
    }
    base.update(kw)
    return TuningSpec(**base)  # type: ignore[arg-type]


def test_it_tunes_and_reports_validation_and_test_scores(
    split: SplitData, eval_spec: EvalSpec
) -> None:
    seen: list[TrialRecord] = []
    result = tune(split, eval_spec, fast_spec(), progress=seen.append)
    assert [r.number for r in seen] == [r.number for r in result.trials] == [0, 1, 2, 3]
    assert result.best_score > 0
    # keyed with the cutoff: a score is only comparable with one at the same cutoff
    assert set(result.test_metrics) == {
        f"{m}@{result.cutoff}" for m in ("ndcg", "map", "recall", "hit", "precision")
    }
    assert all(isinstance(v, float) for v in result.test_metrics.values())
    assert sum(r.algorithm == "TopPopRecommender" for r in result.trials) == 1
    if result.best_class_name == "IALSRecommender":
        assert "train_epochs" in result.best_params and result.best_params["n_threads"] == 1
    validate_parameters(result.best_class_name, result.best_params)  # complete and valid
    assert result.test_scores is None  # kept only when asked for


def test_it_keeps_the_winners_per_user_test_scores_when_asked(
    split: SplitData, eval_spec: EvalSpec
) -> None:
    spec = fast_spec()
    study = prepare_study(split, eval_spec, spec)
    run_study_trials(split, eval_spec, spec, study=study)
    result = collect_study_result(split, eval_spec, spec, study=study, keep_test_scores=True)
    scores = result.test_scores
    assert scores is not None and split.test_train is not None and split.test_truth is not None
    label = f"{eval_spec.target_metric}@{eval_spec.cutoff}"
    assert scores.metric == label
    assert scores.holdout == holdout_digest(
        split.test_train.shape, split.test_truth, split.test_offset
    )
    # Exactly what the gate would compute for the winner refitted on the same training part.
    refit = recommender_class(result.best_class_name)(split.test_train, **result.best_params)
    with contextlib.redirect_stdout(io.StringIO()):
        refit.learn()
    again = per_user_metric(
        refit,
        split.test_truth,
        offset=split.test_offset,
        cutoff=eval_spec.cutoff,
        metric=eval_spec.target_metric,
    )
    np.testing.assert_allclose(scores.values, again, rtol=1e-6)
    assert float(scores.values.mean()) == pytest.approx(result.test_metrics[label])


def test_it_is_reproducible_for_a_fixed_seed(split: SplitData, eval_spec: EvalSpec) -> None:
    a = tune(split, eval_spec, fast_spec(n_trials=3))
    b = tune(split, eval_spec, fast_spec(n_trials=3))
    assert [(r.algorithm, r.params, r.score) for r in a.trials] == [
        (r.algorithm, r.params, r.score) for r in b.trials
    ]
    assert a.best_params == b.best_params and a.test_metrics == b.test_metrics


def test_it_records_failing_trials_without_failing_the_job(
    split: SplitData, eval_spec: EvalSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("out of luck")

    monkeypatch.setattr(IALSRecommender, "learn_with_optimizer", boom)
    result = tune(split, eval_spec, fast_spec(algorithms=("IALS", "TopPop"), n_trials=3))
    failed = [r for r in result.trials if r.state == "FAIL"]
    assert len(failed) == 2 and all("out of luck" in (r.error or "") for r in failed)
    assert result.best_class_name == "TopPopRecommender"


def test_it_raises_when_no_trial_completes(
    split: SplitData, eval_spec: EvalSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("broken")

    monkeypatch.setattr(IALSRecommender, "learn_with_optimizer", boom)
    with pytest.raises(TuningError, match="no tuning trial completed.*broken"):
        tune(split, eval_spec, fast_spec(algorithms=("IALS",), n_trials=2))


def test_it_raises_when_every_score_is_zero(eval_spec: EvalSpec) -> None:
    # items 0-4 are popular; validation users only hold item 9, which no one trained on
    X = sps.csr_matrix(np.tile([1.0] * 5 + [0.0] * 5, (8, 1)))
    truth = sps.csr_matrix(([1.0, 1.0], ([0, 1], [9, 9])), shape=(2, 10))
    split = SplitData(
        user_ids=[f"u{i}" for i in range(8)],
        item_ids=[f"i{i}" for i in range(10)],
        X_all=X,
        tune_train=X,
        val_truth=truth,
        val_offset=6,
        test_train=None,
        test_truth=None,
        test_offset=0,
    )
    with pytest.raises(TuningError, match="scored ndcg@1 = 0"):
        tune(split, EvalSpec(cutoff=1), fast_spec(algorithms=("TopPop",), n_trials=1))


def test_it_starts_from_a_warm_start_configuration(split: SplitData, eval_spec: EvalSpec) -> None:
    warm = ("IALSRecommender", {"n_components": 7, "alpha0": 0.5, "reg": 0.01, "train_epochs": 3})
    result = tune(split, eval_spec, fast_spec(n_trials=2, warm_start=warm))
    first = result.trials[1]  # trial 0 is TopPop, scored once up front
    assert first.algorithm == "IALSRecommender"
    assert first.params["n_components"] == 7 and first.params["alpha0"] == 0.5


def test_it_shares_one_study_between_workers(
    split: SplitData, eval_spec: EvalSpec, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite3'}"
    spec = fast_spec(n_trials=5)
    prepare_study(split, eval_spec, spec, storage=storage, study_name="job-1")
    prepare_study(split, eval_spec, spec, storage=storage, study_name="job-1")  # idempotent
    run_study_trials(split, eval_spec, spec, storage=storage, study_name="job-1", n_trials=2)
    run_study_trials(split, eval_spec, spec, storage=storage, study_name="job-1")
    run_study_trials(split, eval_spec, spec, storage=storage, study_name="job-1")  # budget spent
    result = collect_study_result(split, eval_spec, spec, storage=storage, study_name="job-1")
    assert len(result.trials) == 5
    assert sum(r.algorithm == "TopPopRecommender" for r in result.trials) == 1
    assert result.best_score > 0 and result.test_metrics


def test_it_stops_at_the_overall_timeout(split: SplitData, eval_spec: EvalSpec) -> None:
    result = tune(split, eval_spec, fast_spec(n_trials=500, timeout_overall=1.0))
    assert len(result.trials) < 500 and result.best_score > 0


def test_it_validates_algorithms_and_parameters() -> None:
    assert {"IALSRecommender", "TopPopRecommender", "RP3betaRecommender"} <= set(
        available_recommenders()
    )
    assert validate_parameters("IALS", {"n_components": "8"}) == {"n_components": 8}
    with pytest.raises(ValueError, match="unknown recommender class 'Foo'"):
        validate_parameters("Foo", {})
    with pytest.raises(ValueError, match="n_componentz: unknown parameter"):
        validate_parameters("IALSRecommender", {"n_componentz": 8})
    with pytest.raises(ValueError, match="top_k: Input should be a valid integer"):
        validate_parameters("RP3beta", {"top_k": "many"})
    with pytest.raises(ValueError, match="unknown recommender class"):
        TuningSpec(algorithms=("IALS", "Nope")).validate()
