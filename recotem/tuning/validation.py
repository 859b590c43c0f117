"""Validation rules of the tuning resources, shared by the REST serializers and the web forms.

Each function raises `django.core.exceptions.ValidationError({field: [message, ...]})`; the API
exception handler turns that into a 400 of the same shape and the forms attach it to their fields.
Bounds exist so that absurd numbers are refused here instead of overflowing a database integer
(or a NumPy array size) later.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import ValidationError

INT32_MAX = 2**31 - 1
MAX_TIMEOUT_SECONDS = 30 * 86400

# (min, max) of every integer field, inclusive. The serializers declare the same bounds so that a
# too-large JSON number is refused before anything else looks at it.
SPLIT_N_HELDOUT = (1, 1_000_000)
SPLIT_N_TEST_USERS = (1, 100_000_000)
RANDOM_SEED = (0, INT32_MAX)
CUTOFF = (1, 1000)
N_TRIALS = (1, 10_000)
N_TASKS_PARALLEL = (1, 64)
TIMEOUT = (1, MAX_TIMEOUT_SECONDS)


class Errors:
    """Collects field errors so a form shows every problem at once, not one per submit."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def has(self, field: str) -> bool:
        return field in self.errors

    def int_in(self, field: str, value: Any, bounds: tuple[int, int], *, optional: bool = False) -> None:
        if value is None:
            if not optional:
                self.add(field, "This field is required.")
            return
        low, high = bounds
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(field, f"Must be a whole number between {low} and {high}.")

    def float_in(self, field: str, value: Any, low: float, high: float, *, open_low: bool = False,
                 open_high: bool = False, message: str | None = None) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        if not ok:
            left, right = "(" if open_low else "[", ")" if open_high else "]"
            self.add(field, message or f"Must be a number in {left}{low}, {high}{right}.")

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def validate_split_config(
    *,
    project: Any,
    scheme: str,
    heldout_ratio: float,
    n_heldout: int | None,
    test_user_ratio: float,
    n_test_users: int | None,
    random_seed: int,
) -> None:
    """Ranges, the engine's own SplitSpec check, and "TG/TU need the project's time column"."""
    from recotem.tuning.models import SplitConfig
    from recotem.tuning.services import split_spec_of

    errors = Errors()
    errors.float_in("heldout_ratio", heldout_ratio, 0.0, 1.0, open_low=True, open_high=True,
                    message="Must be strictly between 0 and 1.")
    errors.float_in("test_user_ratio", test_user_ratio, 0.0, 0.5, open_low=True, message=(
        "Must be above 0 and at most 0.5: this share of users is used for validation "
        "and the same share for the final test."))
    errors.int_in("n_heldout", n_heldout, SPLIT_N_HELDOUT, optional=True)
    errors.int_in("n_test_users", n_test_users, SPLIT_N_TEST_USERS, optional=True)
    errors.int_in("random_seed", random_seed, RANDOM_SEED)
    if scheme in ("TG", "TU") and project is not None and not project.time_column:
        errors.add("scheme", (
            f"Scheme {scheme} orders interactions by time, but project {project.name!r} has no time "
            "column; use RG or set the project's time column."))
    errors.raise_if_any()
    split = SplitConfig(scheme=scheme, heldout_ratio=heldout_ratio, n_heldout=n_heldout,
                        test_user_ratio=test_user_ratio, n_test_users=n_test_users, random_seed=random_seed)
    try:
        split_spec_of(split).validate()
    except ValueError as exc:
        raise ValidationError({"non_field_errors": [str(exc)]}) from None


def validate_evaluation_config(*, cutoff: int) -> None:
    errors = Errors()
    errors.int_in("cutoff", cutoff, CUTOFF)
    errors.raise_if_any()


def validate_algorithms(names: Any, *, field: str = "tried_algorithms") -> list[str]:
    """Canonical irspack class names (via `services.check_algorithms`), or a field error."""
    from recotem.core.exceptions import ApplicationError
    from recotem.tuning.services import check_algorithms

    if not isinstance(names, (list, tuple)):
        raise ValidationError({field: ["Must be a list of algorithm names."]})
    try:
        return check_algorithms(list(names))
    except ApplicationError as exc:
        message = exc.message
        # The engine says "unknown recommender class 'X'; available: ..."; say it in UI words.
        if message.startswith("unknown recommender class"):
            message = "Unknown algorithm" + message.removeprefix("unknown recommender class")
        raise ValidationError({field: [message]}) from None


def validate_model_configuration(
    *,
    project: Any,
    name: str | None,
    recommender_class_name: str,
    parameters_json: Any,
    instance: Any = None,
) -> dict[str, Any]:
    """The unique name, a known algorithm and parameters it accepts.

    Returns the normalised `recommender_class_name` and `parameters_json`.
    """
    from recotem.ml.registry import canonical_name, validate_parameters
    from recotem.tuning.models import ModelConfiguration

    errors = Errors()
    if name and project is not None:
        clash = ModelConfiguration.objects.filter(project=project, name=name)
        if instance is not None and instance.pk is not None:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            errors.add("name", "This project already has a configuration with this name.")
    try:
        class_name = canonical_name(recommender_class_name)
    except ValueError as exc:
        errors.add("recommender_class_name", str(exc))
        class_name = None
    params = parameters_json if parameters_json is not None else {}
    if not isinstance(params, dict):
        errors.add("parameters_json", "Must be a JSON object.")
    elif class_name is not None:
        try:
            params = validate_parameters(class_name, params)
        except ValueError as exc:
            errors.add("parameters_json", str(exc))
    errors.raise_if_any()
    return {"recommender_class_name": class_name, "parameters_json": params}


def validate_tuning_job(
    *,
    n_trials: int,
    n_tasks_parallel: int = 1,
    timeout_overall: int | None = None,
    timeout_singlestep: int | None = None,
    random_seed: int = 42,
    tried_algorithms: Any = None,
) -> dict[str, Any]:
    """Budgets and algorithms of a tuning job; returns the canonical `tried_algorithms`."""
    from recotem.tuning.services import MAX_TASKS_PARALLEL

    errors = Errors()
    errors.int_in("n_trials", n_trials, N_TRIALS)
    errors.int_in("n_tasks_parallel", n_tasks_parallel, (1, min(N_TASKS_PARALLEL[1], MAX_TASKS_PARALLEL)))
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
