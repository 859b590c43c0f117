"""Hyper-parameter search over irspack recommenders.

Strategy (see also docs/tuning.md):

1. **Parameter-free algorithms are scored once.**  TopPop has no search space,
   so evaluating it in every per-algorithm study (as a fixed trial budget per
   algorithm would) wastes trials.  Its one score is added to the study as a
   finished trial, so it competes for "best" like any other trial.
2. **One Optuna study, successive halving over algorithms.**  Each
   algorithm's parameters come from irspack's own ``Cls.default_tune_range``
   (names prefixed with the class so spaces do not collide) and are sampled
   by one seeded multivariate TPE that models each algorithm's subspace on its
   own trials.  *Which* algorithm a trial gets is decided by successive
   halving over algorithms (:func:`_choose_algorithm`): the budget is cut into
   rungs, and each rung keeps only the better half of the algorithms.  We
   tried letting TPE pick the algorithm as a categorical parameter first: after
   10 random trials it locked onto whichever algorithm had the luckiest random
   point (RP3beta on ml-100k, nDCG@10 0.40), starving IALS (0.455 when it gets
   the budget).  Halving over *algorithms* (not epochs) suits irspack, whose
   similarity models are not iterative and have no cheap low-fidelity rung;
   the iterative IALS still stops early inside a trial and is median-pruned.
3. **irspack does the work of a trial.**  Each trial runs the objective of
   ``irspack.optimization.Optimizer`` for the chosen class (early stopping with
   ``learn_with_optimizer``, the class's recoverable failure exceptions, and
   ``train_epochs`` recorded as a learnt parameter), with that class's own
   ``tune`` defaults for ``max_epoch``/``validate_epoch``/``score_degradation_max``.
4. **Honest test score.**  The winner is refitted with validation users'
   interactions included and scored on test users tuning never looked at.

Parallel workers share one study through Optuna RDB storage:
:func:`prepare_study` (once), :func:`run_study_trials` (in each worker) and
:func:`collect_study_result` (once, at the end).  :func:`tune` does all three
in one process with in-memory storage.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from irspack import Evaluator
from irspack.optimization import Optimizer
from irspack.recommenders import BaseRecommender

from .catalogue import DEFAULT_ALGORITHMS
from .evaluation import EvalSpec, make_evaluator, metrics_of
from .gate import HeldOutScores, holdout_digest, per_user_metric
from .registry import (
    accepted_parameters,
    available_recommenders,
    canonical_name,
    parameter_free,
    recommender_class,
    validate_parameters,
)
from .split import SplitData

__all__ = [
    "DEFAULT_ALGORITHMS",
    "TrialRecord",
    "TuningError",
    "TuningResult",
    "TuningSpec",
    "available_recommenders",
    "collect_study_result",
    "prepare_study",
    "run_study_trials",
    "tune",
    "validate_parameters",
]

logger = logging.getLogger(__name__)

ATTR_ALGORITHM = "recotem_algorithm"
ATTR_PARAMS = "recotem_params"
ATTR_ERROR = "recotem_error"
ATTR_METRICS = "recotem_metrics"

# Trials that use budget: a WAITING (enqueued, e.g. warm-start) trial does not yet.
_COUNTED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
)

ProgressCallback = Callable[["TrialRecord"], None]


class TuningError(RuntimeError):
    """Tuning produced nothing usable (no completed trial, or only zero scores)."""


@dataclass(frozen=True)
class TuningSpec:
    """The search budget and space.

    ``fixed_params`` maps a class name to parameters that are not searched
    (they also win over a searched parameter of the same name).
    ``timeout_singlestep`` prunes an iterative trial (IALS) at its next
    validation step once it has run that long; non-iterative fits cannot be
    interrupted and finish.  ``timeout_overall`` stops starting new trials and
    prunes running iterative ones at their next step; the best so far is kept.
    ``n_threads`` goes to every recommender that accepts it and to the
    evaluator (None: irspack's default, all cores).
    """

    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    n_trials: int = 40
    timeout_overall: float | None = None
    timeout_singlestep: float | None = None
    random_seed: int = 42
    fixed_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_threads: int | None = None
    warm_start: tuple[str, dict[str, Any]] | None = None
    quiet: bool = True

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ValueError("n_trials must be at least 1")
        if not self.algorithms:
            raise ValueError("at least one algorithm is required")
        for name in self.algorithms:
            canonical_name(name)
        for name, params in self.fixed_params.items():
            validate_parameters(name, params)
        for name in ("timeout_overall", "timeout_singlestep"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(canonical_name(a) for a in self.algorithms))


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the Django side persists it (JSON-safe values only).

    ``score`` is the validation target metric (higher is better), None unless
    ``state == "COMPLETE"``; ``error`` says why a trial failed or was pruned.
    """

    number: int
    algorithm: str
    params: dict[str, Any]
    score: float | None
    duration: float
    state: str
    error: str | None = None


@dataclass(frozen=True)
class TuningResult:
    """Outcome of a search.

    ``best_params`` are complete constructor keywords for ``best_class_name``
    (fixed parameters and learnt ``train_epochs`` merged back).
    ``best_score`` is the validation score the search optimised (optimistic);
    ``test_metrics`` score the best configuration on test users the search never
    saw (empty if the split has no test users); ``test_scores``, when asked for, are the
    same fit's per-user ``target_metric@cutoff`` of those users (their mean is the test
    score), which the retraining gate takes instead of fitting the winner again.
    """

    best_class_name: str
    best_params: dict[str, Any]
    best_score: float
    target_metric: str
    cutoff: int
    test_metrics: dict[str, float]
    trials: list[TrialRecord]
    test_scores: HeldOutScores | None = None


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _prefix(class_name: str) -> str:
    return f"{class_name}."


def _fixed_params(class_name: str, spec: TuningSpec) -> dict[str, Any]:
    """Seeds and threads for classes that take them, then the user's fixed ones."""
    accepted = accepted_parameters(class_name)
    params: dict[str, Any] = {}
    if "random_seed" in accepted:
        params["random_seed"] = spec.random_seed
    if "n_threads" in accepted and spec.n_threads is not None:
        params["n_threads"] = spec.n_threads
    params.update(spec.fixed_params.get(class_name, {}))
    for short, value in spec.fixed_params.items():
        if short != class_name and canonical_name(short) == class_name:
            params.update(value)
    return params


def _tune_defaults(cls: type[BaseRecommender]) -> dict[str, int]:
    """The class's own ``tune`` defaults (IALS: 16 epochs, validate each epoch)."""
    sig = inspect.signature(cls.tune)
    return {
        key: int(sig.parameters[key].default)
        for key in ("max_epoch", "validate_epoch", "score_degradation_max")
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    algorithm = str(trial.user_attrs.get(ATTR_ALGORITHM, ""))
    params = trial.user_attrs.get(ATTR_PARAMS)
    if params is None:
        cut = len(_prefix(algorithm))
        params = {k[cut:]: v for k, v in trial.params.items() if k.startswith(_prefix(algorithm))}
    state = trial.state.name
    score: float | None = None
    error = trial.user_attrs.get(ATTR_ERROR)
    if state == "COMPLETE" and trial.value is not None:
        if math.isfinite(trial.value):
            score = -float(trial.value)
        else:  # irspack scores a recoverable failure as +inf
            state = "FAIL"
            error = error or trial.user_attrs.get("_failure_reason") or "recoverable failure"
    if state == "PRUNED" and error is None:
        error = "pruned (early stopping, median rule or time limit)"
    duration = 0.0
    if "recotem_duration" in trial.user_attrs:
        duration = float(trial.user_attrs["recotem_duration"])
    elif trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return TrialRecord(
        number=trial.number,
        algorithm=algorithm,
        params=_json_safe(dict(params)),
        score=score,
        duration=duration,
        state=state,
        error=None if error is None else str(error),
    )


class _DeadlinePruner(optuna.pruners.BasePruner):
    """Median pruning plus wall-clock limits.

    Optuna's own ``timeout`` only stops *starting* trials; iterative irspack
    models ask the pruner after every validation step, so this is where a long
    trial (or a job past its overall budget) can be stopped without killing
    the process.
    """

    def __init__(
        self,
        base: optuna.pruners.BasePruner,
        singlestep: float | None,
        deadline: float | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._base = base
        self._singlestep = singlestep
        self._deadline = deadline
        self._should_stop = should_stop

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self._should_stop is not None and self._should_stop():
            return True
        now = time.time()
        if self._deadline is not None and now > self._deadline:
            return True
        if self._singlestep is not None and trial.datetime_start is not None:
            if now - trial.datetime_start.timestamp() > self._singlestep:
                return True
        return self._base.prune(study, trial)


def _sampler(seed: int) -> optuna.samplers.BaseSampler:
    # multivariate+group: TPE models each algorithm's conditional space jointly
    # instead of treating e.g. IALS's n_components independently of alpha0.
    # constant_liar keeps parallel workers from sampling the same point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=10,
        )


def _pruner(
    spec: TuningSpec, deadline: float | None, should_stop: Callable[[], bool] | None = None
) -> optuna.pruners.BasePruner:
    return _DeadlinePruner(
        optuna.pruners.MedianPruner(n_startup_trials=5),
        spec.timeout_singlestep,
        deadline,
        should_stop,
    )


@contextlib.contextmanager
def _maybe_quiet(quiet: bool) -> Iterator[None]:
    """irspack/fastprogress draw progress bars on stdout; workers do not want them."""
    if not quiet:
        yield
        return
    optuna_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        optuna.logging.set_verbosity(optuna_level)


def _choose_algorithm(study: optuna.Study, tunable: list[str], budget: int) -> str:
    """Successive halving over algorithms, decided from the study's history.

    The tunable budget is cut into ``R = ceil(log2 n) + 1`` equal rungs; in
    rung ``r`` only the best ``ceil(n / 2**r)`` algorithms (by best validation
    score so far) get trials, the least-tried first.  With IALS/RP3beta/
    CosineKNN and 39 trials that is 13 trials shared by three, 13 by the best
    two, 13 for the winner.  Everything is read from the study, so parallel
    workers sharing it follow the same schedule.
    """
    if len(tunable) == 1:
        return tunable[0]
    counts = dict.fromkeys(tunable, 0)
    best = dict.fromkeys(tunable, -math.inf)
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get(ATTR_ALGORITHM)
        if name not in counts:
            continue
        counts[name] += 1
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            if math.isfinite(t.value):
                best[name] = max(best[name], -t.value)
    n_rungs = math.ceil(math.log2(len(tunable))) + 1
    started = sum(counts.values())
    rung = min(started * n_rungs // budget, n_rungs - 1)
    n_keep = math.ceil(len(tunable) / 2**rung)
    ranked = sorted(tunable, key=lambda a: (-best[a], tunable.index(a)))
    survivors = ranked[:n_keep]
    return min(survivors, key=lambda a: (counts[a], tunable.index(a)))


class _Objective:
    """Choose an algorithm, then delegate the trial to irspack's Optimizer."""

    def __init__(
        self,
        split: SplitData,
        evaluator: Evaluator,
        spec: TuningSpec,
    ) -> None:
        self.split = split
        self.evaluator = evaluator
        self.spec = spec
        self.tunable = [c for c in spec.class_names if not parameter_free(c)]
        self.budget = max(spec.n_trials - (len(spec.class_names) - len(self.tunable)), 1)
        self._irspack_logger = logging.getLogger("recotem.ml.irspack")

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.time()
        enqueued = trial.user_attrs.get(ATTR_ALGORITHM)
        class_name = (
            enqueued
            if enqueued in self.tunable
            else _choose_algorithm(trial.study, self.tunable, self.budget)
        )
        cls = recommender_class(class_name)
        fixed = _fixed_params(class_name, self.spec)
        prefix = _prefix(class_name)
        used: dict[str, Any] = {}

        def suggest(t: optuna.Trial) -> dict[str, Any]:
            params = {
                r.name: r.suggest(t, prefix=prefix)
                for r in cls.default_tune_range
                if r.name not in fixed
            }
            used.update(params)
            used.update(fixed)
            return params

        optimizer = Optimizer(
            lambda _t: self.split.tune_train,
            suggest,
            fixed,
            self.evaluator,
            logger=self._irspack_logger,
            trial_failure_exceptions=cls.optuna_trial_failure_exceptions,
            **_tune_defaults(cls),
        )
        trial.set_user_attr(ATTR_ALGORITHM, class_name)
        try:
            value = optimizer.objective_function(cls)(trial)
        except optuna.TrialPruned:
            trial.set_user_attr(ATTR_PARAMS, _json_safe(used))
            raise
        except Exception as exc:
            # Recorded and re-raised: Optuna marks the trial FAIL and the
            # study goes on (``catch=``), so one bad point does not fail a job.
            trial.set_user_attr(ATTR_PARAMS, _json_safe(used))
            trial.set_user_attr(ATTR_ERROR, f"{type(exc).__name__}: {exc}")
            raise
        learnt = {k: v for k, v in trial.user_attrs.items() if k == "train_epochs"}
        trial.set_user_attr(ATTR_PARAMS, _json_safe({**used, **learnt}))
        trial.set_user_attr("recotem_duration", time.time() - start)
        return value


def _evaluator(split: SplitData, eval_spec: EvalSpec, spec: TuningSpec) -> Evaluator:
    return make_evaluator(split.val_truth, offset=split.val_offset, spec=eval_spec)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def prepare_study(
    split: SplitData,
    eval_spec: EvalSpec,
    spec: TuningSpec,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    progress: ProgressCallback | None = None,
) -> optuna.Study:
    """Create (or load) the study, score parameter-free algorithms once and
    enqueue the warm-start configuration as the next trial.

    Call once per job before any worker runs :func:`run_study_trials`.  It is
    idempotent: a second call finds the parameter-free trials already present.
    ``storage=None`` makes an in-memory study (single process only).
    """
    spec.validate()
    eval_spec.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is noise in workers
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        load_if_exists=True,
        direction="minimize",  # irspack's objective returns -score
        sampler=_sampler(spec.random_seed),
        pruner=_pruner(spec, None),
    )
    done = {t.user_attrs.get(ATTR_ALGORITHM) for t in study.get_trials(deepcopy=False)}
    evaluator = _evaluator(split, eval_spec, spec)
    for class_name in spec.class_names:
        if not parameter_free(class_name) or class_name in done:
            continue
        params = _fixed_params(class_name, spec)
        start = time.time()
        user_attrs: dict[str, Any] = {ATTR_ALGORITHM: class_name, ATTR_PARAMS: _json_safe(params)}
        try:
            with _maybe_quiet(spec.quiet):
                rec = recommender_class(class_name)(split.tune_train, **params).learn()
                metrics = metrics_of(evaluator, rec)
            value = -metrics[f"{eval_spec.target_metric}@{eval_spec.cutoff}"]
            state = optuna.trial.TrialState.COMPLETE
            user_attrs[ATTR_METRICS] = metrics
        except Exception as exc:  # recorded, never fatal
            value = None
            state = optuna.trial.TrialState.FAIL
            user_attrs[ATTR_ERROR] = f"{type(exc).__name__}: {exc}"
        user_attrs["recotem_duration"] = time.time() - start
        study.add_trial(
            optuna.trial.create_trial(
                state=state, value=value, params={}, distributions={}, user_attrs=user_attrs
            )
        )
        if progress is not None:
            progress(_record(study.get_trials(deepcopy=False)[-1]))
    if spec.warm_start is not None:
        _enqueue_warm_start(study, spec)
    return study


def _enqueue_warm_start(study: optuna.Study, spec: TuningSpec) -> None:
    name, params = spec.warm_start  # type: ignore[misc]
    try:
        class_name = canonical_name(name)
    except ValueError:
        logger.warning("warm start class %r is not installed; ignored", name)
        return
    if class_name not in spec.class_names or parameter_free(class_name):
        return  # not searched, or already scored once
    ranges = {r.name for r in recommender_class(class_name).default_tune_range}
    fixed = _fixed_params(class_name, spec)
    prefixed = {
        _prefix(class_name) + k: v for k, v in params.items() if k in ranges and k not in fixed
    }
    study.enqueue_trial(prefixed, user_attrs={ATTR_ALGORITHM: class_name}, skip_if_exists=True)


def run_study_trials(
    split: SplitData,
    eval_spec: EvalSpec,
    spec: TuningSpec,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    study: optuna.Study | None = None,
    n_trials: int | None = None,
    progress: ProgressCallback | None = None,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run trials on an existing study until the job's total reaches
    ``spec.n_trials`` (counted across all workers and states) or the time is up.

    ``should_stop`` (cheap; asked after every trial and at every validation step of an
    iterative one) ends the search early: a cancelled or reaped job stops within a step.

    Several processes may call this on the same ``storage``/``study_name``;
    the shared trial cap makes N workers finish the budget together rather
    than running N x n_trials.  ``deadline`` is an absolute ``time.time()``
    (default: now + ``spec.timeout_overall``).  Failing trials are recorded,
    never raised.
    """
    spec.validate()
    if deadline is None and spec.timeout_overall is not None:
        deadline = time.time() + spec.timeout_overall
    if study is None:
        if storage is None or study_name is None:
            raise ValueError("give either a study, or storage and study_name")
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=_sampler(spec.random_seed),
            pruner=_pruner(spec, deadline, should_stop),
        )
    else:
        study.pruner = _pruner(spec, deadline, should_stop)
    remaining = spec.n_trials - len(study.get_trials(deepcopy=False, states=_COUNTED))
    if n_trials is not None:
        remaining = min(remaining, n_trials)
    if remaining <= 0 or not [c for c in spec.class_names if not parameter_free(c)]:
        return
    objective = _Objective(split, _evaluator(split, eval_spec, spec), spec)

    def after_trial(st: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress(_record(frozen))
        if should_stop is not None and should_stop():
            st.stop()

    timeout = None if deadline is None else max(deadline - time.time(), 0.0)
    if timeout == 0.0:
        return
    with _maybe_quiet(spec.quiet):
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[
                optuna.study.MaxTrialsCallback(spec.n_trials, states=_COUNTED),
                after_trial,
            ],
        )


def collect_study_result(
    split: SplitData,
    eval_spec: EvalSpec,
    spec: TuningSpec,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    study: optuna.Study | None = None,
    keep_test_scores: bool = False,
) -> TuningResult:
    """Read the best trial of the study, then score it on the test users (and keep their
    per-user scores with ``keep_test_scores``: one more scoring pass).

    Raises TuningError if no trial completed or every completed trial scored
    0 (usually too little validation data, or a cutoff too small to hit).
    """
    if study is None:
        if storage is None or study_name is None:
            raise ValueError("give either a study, or storage and study_name")
        study = optuna.load_study(study_name=study_name, storage=storage)
    records = [
        _record(t)
        for t in study.get_trials(deepcopy=False)
        if t.state != optuna.trial.TrialState.WAITING
    ]
    records.sort(key=lambda r: r.number)
    scored = [r for r in records if r.state == "COMPLETE" and r.score is not None]
    if not scored:
        reasons = sorted({r.error for r in records if r.error})[:3]
        raise TuningError(
            f"no tuning trial completed ({len(records)} started)"
            + (f"; errors: {' | '.join(reasons)}" if reasons else "")
        )
    if all(r.score == 0.0 for r in scored):
        raise TuningError(
            f"every completed trial scored {eval_spec.target_metric}@{eval_spec.cutoff} = 0: "
            "the validation data is too small or unrelated to the training data"
        )
    # Lowest trial number wins ties so the choice does not depend on worker timing.
    best = max(scored, key=lambda r: (r.score, -r.number))
    params = dict(best.params)
    test_metrics: dict[str, float] = {}
    test_scores: HeldOutScores | None = None
    if split.test_train is not None and split.test_truth is not None:
        with _maybe_quiet(spec.quiet):
            rec = recommender_class(best.algorithm)(split.test_train, **params).learn()
            test_metrics = metrics_of(
                make_evaluator(
                    split.test_truth,
                    offset=split.test_offset,
                    spec=eval_spec,
                ),
                rec,
            )
            if keep_test_scores:
                test_scores = HeldOutScores(
                    metric=f"{eval_spec.target_metric}@{eval_spec.cutoff}",
                    holdout=holdout_digest(
                        split.test_train.shape, split.test_truth, split.test_offset
                    ),
                    values=per_user_metric(
                        rec,
                        split.test_truth,
                        offset=split.test_offset,
                        cutoff=eval_spec.cutoff,
                        metric=eval_spec.target_metric,
                    ),
                )
    return TuningResult(
        best_class_name=best.algorithm,
        best_params=params,
        best_score=float(best.score),  # type: ignore[arg-type]
        target_metric=eval_spec.target_metric,
        cutoff=eval_spec.cutoff,
        test_metrics=test_metrics,
        trials=records,
        test_scores=test_scores,
    )


def tune(
    split: SplitData,
    eval_spec: EvalSpec,
    spec: TuningSpec,
    *,
    progress: ProgressCallback | None = None,
) -> TuningResult:
    """Tune in this process (in-memory study) and return the result.

    Reproducible for a fixed ``spec.random_seed`` as long as no time limit
    cuts a trial short.
    """
    deadline = None if spec.timeout_overall is None else time.time() + spec.timeout_overall
    study = prepare_study(split, eval_spec, spec, progress=progress)
    run_study_trials(split, eval_spec, spec, study=study, progress=progress, deadline=deadline)
    return collect_study_result(split, eval_spec, spec, study=study)
