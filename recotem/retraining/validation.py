"""Validation rules of a retraining schedule, shared by the REST serializer and the web form.

`validate_schedule` raises `django.core.exceptions.ValidationError({field: [message, ...]})` with
every problem it finds and returns the normalised values (cron expression, time zone, canonical
algorithm names, stripped webhook URL).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from recotem.core.validation import MAX_TIMEOUT_SECONDS, Errors
from recotem.experiments.validation import metric_error
from recotem.lib import cron
from recotem.lib.netguard import UrlNotAllowed, check_url_allowed
from recotem.tuning.validation import N_TRIALS, validate_algorithms

MAX_RETRIES = (0, 20)
# services.MAX_BACKOFF_SECONDS caps the exponential backoff at the same hour.
RETRY_BACKOFF_SECONDS = (1, 3600)
TIME_LIMIT_SECONDS = (60, 7 * 86400)
TIMEOUT_OVERALL = (1, MAX_TIMEOUT_SECONDS)
# A canary takes at most half of the target slot's users (more is a replacement, not a canary).
CANARY_PERCENT = (1, 50)
CANARY_MINUTES = (1, 30 * 24 * 60)
DEPLOY_MODES = ("replace", "canary")

# Everything a user sets on a schedule: the REST serializer and the web form both take these.
SETTINGS = (
    "is_enabled",
    "cron_expression",
    "timezone",
    "training_data",
    "model_configuration",
    "retune",
    "split_config",
    "evaluation_config",
    "n_trials",
    "timeout_overall",
    "tried_algorithms",
    "auto_deploy",
    "deploy_slot",
    "gate_tolerance",
    "max_data_shrink",
    "deploy_mode",
    "canary_percent",
    "canary_minutes",
    "canary_metric",
    "max_retries",
    "retry_backoff_seconds",
    "time_limit_seconds",
    "notify_on_failure",
    "webhook_url",
)
# The settings `validate_schedule` checks together (its keyword arguments); the other three
# are a flag, a reference checked for its project, and a plain boolean.
FIELDS = tuple(
    name for name in SETTINGS if name not in ("is_enabled", "training_data", "notify_on_failure")
)


def validate_schedule(
    *,
    project: Any,
    cron_expression: str,
    timezone: str,
    retune: bool,
    model_configuration: Any,
    split_config: Any,
    evaluation_config: Any,
    n_trials: int,
    timeout_overall: int | None,
    tried_algorithms: Any,
    auto_deploy: bool,
    deploy_slot: Any,
    gate_tolerance: float,
    max_data_shrink: float,
    deploy_mode: str,
    canary_percent: int,
    canary_minutes: int,
    canary_metric: str,
    max_retries: int,
    retry_backoff_seconds: int,
    time_limit_seconds: int,
    webhook_url: str,
) -> dict[str, Any]:
    from recotem.deployment.models import DeploymentSlot

    errors = Errors()
    cleaned: dict[str, Any] = {}
    try:
        cleaned["cron_expression"] = cron.validate_cron(cron_expression or "")
    except cron.CronError as exc:
        errors.add("cron_expression", str(exc))
    try:
        cleaned["timezone"] = cron.validate_timezone(timezone or "UTC")
    except cron.TimezoneError as exc:
        errors.add("timezone", f"{exc}; use an IANA name such as 'Asia/Tokyo' or 'UTC'.")
    try:
        cleaned["tried_algorithms"] = validate_algorithms(tried_algorithms or [])
    except ValidationError as exc:
        for message in exc.message_dict["tried_algorithms"]:
            errors.add("tried_algorithms", message)

    errors.int_in("n_trials", n_trials, N_TRIALS)
    errors.int_in("timeout_overall", timeout_overall, TIMEOUT_OVERALL, optional=True)
    if deploy_mode not in DEPLOY_MODES:
        errors.add("deploy_mode", "Either 'replace' or 'canary'.")
    errors.int_in("canary_percent", canary_percent, CANARY_PERCENT)
    errors.int_in("canary_minutes", canary_minutes, CANARY_MINUTES)
    if (problem := metric_error(canary_metric)) is not None:
        errors.add("canary_metric", problem)
    errors.int_in("max_retries", max_retries, MAX_RETRIES)
    errors.int_in("retry_backoff_seconds", retry_backoff_seconds, RETRY_BACKOFF_SECONDS)
    errors.int_in("time_limit_seconds", time_limit_seconds, TIME_LIMIT_SECONDS)
    errors.float_in("gate_tolerance", gate_tolerance, 0.0, 1.0, message="Must be between 0 and 1.")
    errors.float_in(
        "max_data_shrink", max_data_shrink, 0.0, 1.0, message="Must be between 0 and 1."
    )

    if retune:
        if split_config is None:
            errors.add(
                "split_config", "Required when retune is on: choose a split config to retune with."
            )
        if evaluation_config is None:
            errors.add(
                "evaluation_config",
                "Required when retune is on: choose an evaluation config to retune with.",
            )
    elif model_configuration is None:
        errors.add(
            "model_configuration", "Required unless retune is on: choose a model configuration."
        )
    if auto_deploy and deploy_slot is None and project is not None:
        active = DeploymentSlot.objects.filter(project=project, is_active=True).count()
        if active > 1:
            errors.add(
                "deploy_slot",
                (
                    f"The project has {active} active slots; choose the one auto-deploy should update "
                    "(auto-deploy replaces a slot's model and never adds a slot)."
                ),
            )

    url = (webhook_url or "").strip()
    if url:
        try:
            check_url_allowed(url, allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
        except UrlNotAllowed as exc:
            errors.add("webhook_url", str(exc))
    cleaned["webhook_url"] = url
    errors.raise_if_any()
    return cleaned
