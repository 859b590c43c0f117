"""Fair, noise-aware quality gate for auto-deploy.

The deployed (incumbent) artifact was fitted on nearly all of the data; scoring it on a
holdout of new data would let it grade its own homework. Instead both configurations are
refitted on the same training part of one split of the new data and scored on the same
held-out users, and the decision is made on the *paired* per-user differences.

Steps of :func:`gate_compare`:

1. Split the data once (the split's test users; its validation users when it has none).
2. Fit the candidate, the incumbent (unless :func:`same_configuration` says they are the same)
   and TopPop on the same training part. A candidate whose :class:`HeldOutScores` for this
   very holdout are given (a tuning job's test refit) is not fitted again.
3. Score every evaluated user (a user with at least one held-out interaction) for each model
   with :func:`per_user_metric`: ``target_metric@cutoff`` from
   ``get_score_remove_seen`` ranked exactly as irspack's ``Evaluator`` ranks, so the mean of the
   per-user values *is* irspack's aggregate.
4. Decide (:func:`decide`):

   * **comparison** - d = candidate - incumbent per user; a two-sided paired t-interval for
     mean(d) at ``confidence``. The candidate is rejected only when the *whole* interval lies
     below ``-tolerance * incumbent_score``: confidently worse by more than the tolerance. An
     equally good candidate therefore passes with probability about 1 - (1 - confidence) / 2
     (97.5 % at 95 %) on every run, whatever happened on earlier runs: no incumbent score is
     carried from run to run, so nothing ratchets.
   * **floor** - the candidate's mean must be strictly above TopPop's mean on the same holdout
     (a candidate that *is* TopPop fails), an absolute sanity floor that holds even when both
     configurations are equally bad.

Why a paired t-interval and not a bootstrap: per-user metric values are bounded in [0, 1], so
their differences have finite variance and the mean of a few hundred of them is close to normal
(the gate needs at least a handful of users anyway); the t-interval is then accurate, costs one
pass over the data, needs no random seed and gives the same answer on every machine. A
percentile bootstrap would add resampling cost and a seed for no gain in coverage at these sizes,
and with very few users it is *less* reliable than t (it under-covers). The Monte-Carlo test in
``tests/test_gate_stats.py`` checks the resulting pass rate and power.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sps
from irspack.recommenders import BaseRecommender
from scipy import stats

from .evaluation import EvalSpec, make_evaluator, metrics_of
from .registry import canonical_name, recommender_class, validate_parameters
from .split import SplitSpec, split_interactions

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
PER_USER_METRICS: tuple[str, ...] = ("ndcg", "map", "recall", "hit", "precision")
FLOOR_CLASS = "TopPopRecommender"
_CHUNK = 256  # users scored at once: a dense (chunk x n_items) block


@dataclass(frozen=True)
class GateReport:
    """What the gate decided and why; ``as_dict()`` is what ``gate_report`` stores.

    Scores are means of the per-user ``metric`` over the ``n_eval_users`` evaluated users;
    ``ci_low``/``ci_high`` bound mean(candidate - incumbent). ``None`` where not computed
    (no incumbent score and no interval when the configurations are the same).
    """

    metric: str
    candidate_score: float | None
    incumbent_score: float | None
    ci_low: float | None
    ci_high: float | None
    n_eval_users: int
    method: str
    floor: float | None
    reason: str
    passed: bool
    # The candidate's full metric family on the same holdout (``"ndcg@10"``…), when asked for:
    # the model's test metrics, so that its holdout is not fitted a second time.
    candidate_metrics: dict[str, float] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values (floats, ints, str, bool, None) under exactly the field names
        of the decision (``candidate_metrics`` is not part of it: it is stored on the model)."""
        values = asdict(self)
        del values["candidate_metrics"]
        return values


def holdout_digest(train_shape: tuple[int, int], truth: sps.csr_matrix, offset: int) -> str:
    """Names one holdout: which rows of a ``train_shape`` matrix are scored, against which
    held-out items (equal digests: the same users, in the same order, with the same truth)."""
    csr = sps.csr_matrix(truth)
    digest = hashlib.sha256(json.dumps([list(train_shape), list(csr.shape), offset]).encode())
    digest.update(np.asarray(csr.indptr, dtype="<i8").tobytes())
    digest.update(np.asarray(csr.indices, dtype="<i8").tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class HeldOutScores:
    """One fitted model's per-user ``metric`` (``"ndcg@10"``) on the holdout ``holdout`` names
    (:func:`holdout_digest`), in :func:`per_user_metric`'s order: what lets a later gate take
    them instead of fitting the same configuration on the same training part again."""

    metric: str
    holdout: str
    values: FloatArray

    def to_bytes(self) -> bytes:
        """A JSON header line, then the values as little-endian float64."""
        header = json.dumps({"metric": self.metric, "holdout": self.holdout}).encode()
        return header + b"\n" + np.asarray(self.values, dtype="<f8").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> HeldOutScores:
        header, _, values = raw.partition(b"\n")
        meta = json.loads(header)
        return cls(
            metric=str(meta["metric"]),
            holdout=str(meta["holdout"]),
            values=np.frombuffer(values, dtype="<f8").astype(np.float64),
        )


# --------------------------------------------------------------------------- configurations


def resolved_configuration(class_name: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """All constructor parameters of ``class_name`` after validation, defaults filled in.

    Raises ValueError (from :func:`registry.validate_parameters`) for a bad parameter.
    """
    name = canonical_name(class_name)
    validated = validate_parameters(name, dict(parameters or {}))
    config = recommender_class(name).config_class(**validated)
    return dict(config.model_dump())


def same_configuration(
    a: tuple[str, Mapping[str, Any] | None], b: tuple[str, Mapping[str, Any] | None]
) -> bool:
    """True when two ``(class_name, parameters)`` describe the same model.

    Class names are compared canonically (``"IALS"`` == ``"IALSRecommender"``) and parameters
    as validated and coerced by irspack's config class, with defaults filled in, so
    ``{"n_components": 64}`` equals ``{"n_components": 64.0}`` and an omitted parameter equals
    its default. Raises ValueError for an unknown class or invalid parameters.
    """
    name_a, name_b = canonical_name(a[0]), canonical_name(b[0])
    if name_a != name_b:
        return False
    return resolved_configuration(name_a, a[1]) == resolved_configuration(name_b, b[1])


def _fit(
    X: sps.csr_matrix, class_name: str, parameters: Mapping[str, Any] | None
) -> BaseRecommender:
    name = canonical_name(class_name)
    params = validate_parameters(name, dict(parameters or {}))
    with contextlib.redirect_stdout(io.StringIO()):  # irspack prints progress bars
        return recommender_class(name)(X, **params).learn()


# --------------------------------------------------------------------------- per-user metrics


def per_user_metric(
    recommender: BaseRecommender,
    ground_truth: sps.csr_matrix,
    *,
    offset: int,
    cutoff: int,
    metric: str,
) -> FloatArray:
    """``metric@cutoff`` for every evaluated user, in row order of ``ground_truth``.

    Row ``r`` of ``ground_truth`` (its held-out items) belongs to row ``offset + r`` of the
    matrix the recommender was fitted on. Evaluated users are those irspack 0.5.2's
    ``Evaluator`` counts as ``valid_user``: at least one held-out item (a user who has seen
    every item is evaluated and scores 0). The others are left out, so the mean of the result
    equals ``Evaluator(...).get_score(rec)[metric]`` (checked in ``tests/test_gate_stats.py``).

    Ranking follows irspack: scores from ``get_score_remove_seen`` (training items at -inf and
    never recommended), best first, ties broken by the lower item index. Relevance is binary.
    With k = min(cutoff, items not seen in training), g = number of held-out items and hits at
    0-based ranks i < k: ndcg = sum 1/log2(i+2) / sum_{i<min(g,k)} 1/log2(i+2);
    recall = hits/g; hit = hits>0; precision = hits/k; map = sum over hit ranks of
    (hits so far)/(i+1), divided by g.
    """
    if metric not in PER_USER_METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {PER_USER_METRICS}")
    truth = sps.csr_matrix(ground_truth)
    n_rows, n_items = truth.shape
    k = min(int(cutoff), n_items)
    if k < 1:
        raise ValueError("cutoff must be at least 1")
    discount = 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)
    ideal = np.cumsum(discount)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    out: list[FloatArray] = []
    for start in range(0, n_rows, _CHUNK):
        stop = min(start + _CHUNK, n_rows)
        block = truth[start:stop]
        n_gt = np.diff(block.indptr).astype(np.int64)
        rows = np.flatnonzero(n_gt > 0)
        if rows.size == 0:
            continue
        scores = np.asarray(recommender.get_score_remove_seen(offset + start + rows))
        recommendable = np.isfinite(scores)
        # A user who has seen every item gets nothing recommended: scored 0, as irspack does.
        k_safe = np.maximum(np.minimum(k, recommendable.sum(axis=1)), 1)
        relevant = np.zeros((len(rows), n_items), dtype=bool)
        sub = block[rows]
        relevant[np.repeat(np.arange(len(rows)), np.diff(sub.indptr)), sub.indices] = True
        # A stable sort of the negated scores keeps equal scores in item order, which is
        # irspack's tie-break (it sorts (-score, index) pairs). Seen items (-inf) sort last
        # and are no recommendation, so they can never be a hit.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rel = np.take_along_axis(relevant & recommendable, top, axis=1).astype(np.float64)
        g = n_gt[rows].astype(np.float64)
        hits = rel.sum(axis=1)
        if metric == "ndcg":
            value = (rel @ discount) / ideal[np.minimum(n_gt[rows], k_safe) - 1]
        elif metric == "recall":
            value = hits / g
        elif metric == "hit":
            value = (hits > 0).astype(np.float64)
        elif metric == "precision":
            value = hits / k_safe
        else:  # map
            value = (rel * np.cumsum(rel, axis=1) / ranks).sum(axis=1) / g
        out.append(value)
    return np.concatenate(out) if out else np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------- decision rule


def paired_t_interval(
    differences: npt.ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Two-sided t-interval for the mean of ``differences`` along the last axis.

    Vectorised: a ``(runs, users)`` array gives one interval per run. Needs at least 2 values
    per row (ValueError otherwise). Identical values give the degenerate interval [mean, mean].
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be strictly between 0 and 1")
    d = np.asarray(differences, dtype=np.float64)
    n = d.shape[-1]
    if n < 2:
        raise ValueError("a paired interval needs at least 2 users")
    mean = d.mean(axis=-1)
    sd = d.std(axis=-1, ddof=1)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def confidently_worse(
    ci_high: npt.ArrayLike, incumbent_score: npt.ArrayLike, tolerance: float
) -> npt.NDArray[np.bool_]:
    """The rejection rule: the interval's upper end lies below ``-tolerance * incumbent_score``.

    ``tolerance`` is relative to the incumbent's score (0.02 tolerates 2 % worse), so one
    setting means the same for ndcg@10 around 0.4 and map@100 around 0.05. Vectorised.
    """
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    high = np.asarray(ci_high, dtype=np.float64)
    return np.asarray(high < -tolerance * np.asarray(incumbent_score, dtype=np.float64))


def _confidence_label(confidence: float) -> str:
    return f"{confidence * 100:g} %"


def decide(
    candidate: npt.ArrayLike,
    incumbent: npt.ArrayLike | None,
    floor: npt.ArrayLike | None,
    *,
    metric: str,
    tolerance: float,
    confidence: float = 0.95,
) -> GateReport:
    """Gate decision from per-user scores of the same evaluated users (no fitting).

    ``incumbent=None`` means the configurations are the same: no comparison, only the floor.
    ``floor=None`` skips the floor (not used by :func:`gate_compare`, which always has one).
    """
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be strictly between 0 and 1")
    cand = np.asarray(candidate, dtype=np.float64)
    n = int(cand.shape[0])
    if n == 0:
        raise ValueError("no evaluated user: the holdout has no interaction to score")
    cand_mean = float(cand.mean())
    floor_mean: float | None = None
    floor_ok = True
    if floor is not None:
        floor_arr = np.asarray(floor, dtype=np.float64)
        if floor_arr.shape != cand.shape:
            raise ValueError("floor scores must be for the same users as the candidate's")
        floor_mean = float(floor_arr.mean())
        floor_ok = cand_mean > floor_mean

    reasons: list[str] = []
    inc_mean: float | None = None
    low: float | None = None
    high: float | None = None
    worse = False
    if incumbent is None:
        method = "same configuration, no comparison"
        reasons.append("Candidate and incumbent have the same configuration: no comparison made.")
    else:
        method = f"paired t, {_confidence_label(confidence)}"
        inc = np.asarray(incumbent, dtype=np.float64)
        if inc.shape != cand.shape:
            raise ValueError("incumbent scores must be for the same users as the candidate's")
        inc_mean = float(inc.mean())
        if n < 2:
            reasons.append("Only one evaluated user: too few to compare, not rejected.")
        else:
            lo, hi = paired_t_interval(cand - inc, confidence)
            low, high = float(lo), float(hi)
            margin = tolerance * inc_mean
            worse = bool(confidently_worse(high, inc_mean, tolerance))
            span = f"[{low:+.4f}, {high:+.4f}]"
            if worse:
                reasons.append(
                    f"Candidate is confidently worse: the {_confidence_label(confidence)} "
                    f"interval {span} of candidate - incumbent {metric} lies entirely below "
                    f"-{margin:.4f} (tolerance {tolerance:g} x incumbent {inc_mean:.4f})."
                )
            else:
                reasons.append(
                    f"Candidate is not confidently worse than the incumbent: the interval "
                    f"{span} of candidate - incumbent {metric} reaches above -{margin:.4f} "
                    f"(tolerance {tolerance:g} x incumbent {inc_mean:.4f})."
                )
    if floor_mean is not None:
        if floor_ok:
            reasons.append(f"It beats the TopPop floor ({cand_mean:.4f} > {floor_mean:.4f}).")
        else:
            reasons.append(
                f"It does not beat the TopPop floor ({cand_mean:.4f} <= {floor_mean:.4f})."
            )
    return GateReport(
        metric=metric,
        candidate_score=cand_mean,
        incumbent_score=inc_mean,
        ci_low=low,
        ci_high=high,
        n_eval_users=n,
        method=method,
        floor=floor_mean,
        reason=" ".join(reasons),
        passed=floor_ok and not worse,
    )


# --------------------------------------------------------------------------- the gate


def gate_compare(
    df: pd.DataFrame,
    *,
    candidate: tuple[str, Mapping[str, Any] | None],
    incumbent: tuple[str, Mapping[str, Any] | None],
    split: SplitSpec,
    evaluation: EvalSpec,
    tolerance: float,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
    confidence: float = 0.95,
    with_candidate_metrics: bool = False,
    candidate_scores: HeldOutScores | None = None,
) -> GateReport:
    """Refit candidate, incumbent and TopPop on one split of ``df`` and decide (see module doc).

    ``candidate``/``incumbent`` are ``(class_name, parameters)``. When
    :func:`same_configuration` holds, the incumbent is not refitted and only the floor applies.
    Raises ValueError for bad settings (negative tolerance, confidence outside (0, 1)) or
    parameters and for data too small to split.
    Cost: up to three fits on the training part (models that coincide are fitted once).
    ``with_candidate_metrics`` adds the candidate's ndcg/map/recall/hit/precision at the cutoff
    and at 10 (irspack's Evaluator on the same held-out test users) to the report, for one or
    two more scoring passes; none when the split has no test users.
    ``candidate_scores`` are the candidate's per-user scores from an earlier fit of the same
    configuration on the same data (a tuning job's test refit): they are used, and the
    candidate not fitted again, only when they are for this split's test users and this
    metric (same :func:`holdout_digest`); otherwise the candidate is fitted.
    """
    evaluation.validate()
    if tolerance < 0 or not 0.0 < confidence < 1.0:
        raise ValueError("need tolerance >= 0 and 0 < confidence < 1")
    data = split_interactions(
        df, split, user_column=user_column, item_column=item_column, time_column=time_column
    )
    if data.test_train is not None and data.test_truth is not None:
        X, truth, offset = data.test_train, data.test_truth, data.test_offset
    else:
        X, truth, offset = data.tune_train, data.val_truth, data.val_offset
    metric = evaluation.target_metric
    label = f"{metric}@{evaluation.cutoff}"

    fitted: dict[str, FloatArray] = {}
    candidate_metrics: dict[str, float] | None = None

    def scores(config: tuple[str, Mapping[str, Any] | None], *, family: bool = False) -> FloatArray:
        nonlocal candidate_metrics
        key = _key(config)
        if key not in fitted:
            rec = _fit(X, config[0], config[1])
            fitted[key] = per_user_metric(
                rec, truth, offset=offset, cutoff=evaluation.cutoff, metric=metric
            )
            if family:
                # Test metrics are comparable across models at the default cutoff (10), so
                # they are stored at 10 as well as at the gate's own cutoff.
                candidate_metrics = {}
                for cutoff in sorted({EvalSpec().cutoff, evaluation.cutoff}):
                    spec = EvalSpec(cutoff=cutoff, target_metric=evaluation.target_metric)
                    evaluator = make_evaluator(truth, offset=offset, spec=spec)
                    candidate_metrics.update(metrics_of(evaluator, rec))
        return fitted[key]

    reused = False
    if candidate_scores is not None:
        here = holdout_digest(X.shape, truth, offset) if data.test_truth is not None else None
        if (candidate_scores.holdout, candidate_scores.metric) == (here, label):
            fitted[_key(candidate)] = candidate_scores.values
            reused = True
        else:
            logger.warning(
                "the candidate's stored %s scores are for another holdout: fitting it",
                candidate_scores.metric,
            )
    same = same_configuration(candidate, incumbent)
    # Validation users (a split without test users) are no test score: no metrics then.
    family = with_candidate_metrics and data.test_truth is not None and not reused
    report = decide(
        scores(candidate, family=family),
        None if same else scores(incumbent),
        scores((FLOOR_CLASS, {})),
        metric=label,
        tolerance=tolerance,
        confidence=confidence,
    )
    if reused:
        report = replace(
            report,
            reason=report.reason + " The candidate's scores come from its tuning job's test refit "
            "on these same users (same split and configuration): it was not fitted again.",
        )
    return replace(report, candidate_metrics=candidate_metrics)


def _key(config: tuple[str, Mapping[str, Any] | None]) -> str:
    """One key per distinct model: configurations that :func:`same_configuration` equates."""
    name = canonical_name(config[0])
    return repr((name, sorted(resolved_configuration(name, config[1]).items())))
