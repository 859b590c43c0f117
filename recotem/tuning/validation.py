"""Validation rules of the tuning resources: split and evaluation configs, tuning jobs.

Called by the REST serializers and the web forms (early, field by field) and by the services
(authoritatively, whatever door a write came through). Each function raises
`django.core.exceptions.ValidationError({field: [message, ...]})`. Bounds exist so that absurd
numbers are refused here instead of overflowing a database integer (or a NumPy array) later;
each is declared once, here, and the serializers' `min_value`/`max_value` reference it.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from recotem.core.exceptions import InvalidInput
from recotem.core.validation import MAX_TIMEOUT_SECONDS, RANDOM_SEED, Errors
from recotem.ml.catalogue import UnknownRecommenderError, canonical_name

SPLIT_N_HELDOUT = (1, 1_000_000)
SPLIT_N_TEST_USERS = (1, 100_000_000)
SPLIT_N_FINAL_TEST_USERS = (0, 100_000_000)
CUTOFF = (1, 1000)
N_TRIALS = (1, 10_000)
# More parallel trial tasks than this on one study only queue behind each other.
N_TASKS_PARALLEL = (1, 16)
TIMEOUT = (1, MAX_TIMEOUT_SECONDS)

__all__ = [
    "CUTOFF",
    "MAX_TIMEOUT_SECONDS",
    "N_TASKS_PARALLEL",
    "N_TRIALS",
    "RANDOM_SEED",
    "SPLIT_N_FINAL_TEST_USERS",
    "SPLIT_N_HELDOUT",
    "SPLIT_N_TEST_USERS",
    "TIMEOUT",
    "validate_algorithms",
    "validate_evaluation_config",
    "validate_split_config",
    "validate_tuning_job",
]


def validate_split_config(
    *,
    project: Any,
    scheme: str,
    heldout_ratio: float,
    n_heldout: int | None,
    test_user_ratio: float,
    n_test_users: int | None,
    final_test_ratio: float,
    n_final_test_users: int | None,
    random_seed: int,
) -> None:
    """Ranges, the engine's own SplitSpec check, and "TG/TU need the project's time column"."""
    from recotem.ml.splitspec import split_spec_from_config

    errors = Errors()
    errors.float_in(
        "heldout_ratio",
        heldout_ratio,
        0.0,
        1.0,
        open_low=True,
        open_high=True,
        message="Must be strictly between 0 and 1.",
    )
    errors.float_in(
        "test_user_ratio",
        test_user_ratio,
        0.0,
        1.0,
        open_low=True,
        message=(
            "Must be above 0 and at most 1: the share of users (apart from the final test "
            "users) whose held-out items score the search; 1 uses every user."
        ),
    )
    errors.float_in(
        "final_test_ratio",
        final_test_ratio,
        0.0,
        1.0,
        open_high=True,
        message="Must be at least 0 and below 1: the share of users kept out for the final test.",
    )
    errors.int_in("n_heldout", n_heldout, SPLIT_N_HELDOUT, optional=True)
    errors.int_in("n_test_users", n_test_users, SPLIT_N_TEST_USERS, optional=True)
    errors.int_in("n_final_test_users", n_final_test_users, SPLIT_N_FINAL_TEST_USERS, optional=True)
    errors.int_in("random_seed", random_seed, RANDOM_SEED)
    if scheme in ("TG", "TU") and project is not None and not project.time_column:
        errors.add(
            "scheme",
            (
                f"Scheme {scheme} orders interactions by time, but project {project.name!r} has no "
                "time column; use RG or set the project's time column."
            ),
        )
    errors.raise_if_any()
    try:
        split_spec_from_config(
            scheme=scheme,
            heldout_ratio=heldout_ratio,
            n_heldout=n_heldout,
            test_user_ratio=test_user_ratio,
            n_test_users=n_test_users,
            final_test_ratio=final_test_ratio,
            n_final_test_users=n_final_test_users,
            random_seed=random_seed,
        ).validate()
    except ValueError as exc:
        raise InvalidInput({"non_field_errors": [str(exc)]}) from None


def validate_evaluation_config(*, cutoff: int) -> None:
    errors = Errors()
    errors.int_in("cutoff", cutoff, CUTOFF)
    errors.raise_if_any()


def validate_algorithms(names: Any, *, field: str = "tried_algorithms") -> list[str]:
    """Canonical irspack class names, deduplicated in order, or a field error naming the bad one."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidInput({field: ["Must be a list of algorithm names."]})
    result: list[str] = []
    for name in names:
        try:
            canonical = canonical_name(name)
        except UnknownRecommenderError as exc:
            available = ", ".join(exc.available)
            raise InvalidInput(
                {field: [f"Unknown algorithm {exc.name!r}; available: {available}"]}
            ) from None
        if canonical not in result:
            result.append(canonical)
    return result


def validate_tuning_job(
    *,
    n_trials: int,
    n_tasks_parallel: int = 1,
    timeout_overall: int | None = None,
    timeout_singlestep: int | None = None,
    random_seed: int = 42,
    tried_algorithms: Any = None,
) -> dict[str, Any]:
    """Budgets and algorithms of a tuning job; returns the canonical `tried_algorithms`
    (None when none were given: the caller uses the default set)."""
    errors = Errors()
    errors.int_in("n_trials", n_trials, N_TRIALS)
    errors.int_in("n_tasks_parallel", n_tasks_parallel, N_TASKS_PARALLEL)
    errors.int_in("timeout_overall", timeout_overall, TIMEOUT, optional=True)
    errors.int_in("timeout_singlestep", timeout_singlestep, TIMEOUT, optional=True)
    errors.int_in("random_seed", random_seed, RANDOM_SEED)
    algorithms: list[str] | None = None
    if tried_algorithms:
        try:
            algorithms = validate_algorithms(tried_algorithms)
        except ValidationError as exc:
            for message in exc.message_dict["tried_algorithms"]:
                errors.add("tried_algorithms", message)
    errors.raise_if_any()
    return {"tried_algorithms": algorithms}
