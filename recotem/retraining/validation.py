"""Validation rules of a retraining schedule, shared by the REST serializer and the web form.

`validate_schedule` raises `django.core.exceptions.ValidationError({field: [message, ...]})` with
every problem it finds and returns the normalised values (cron expression, time zone, canonical
algorithm names, stripped webhook URL).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from recotem.lib import cron
from recotem.lib.netguard import UrlNotAllowed, check_url_allowed
from recotem.tuning.validation import MAX_TIMEOUT_SECONDS, N_TRIALS, Errors, validate_algorithms

MAX_RETRIES = (0, 20)
# services.MAX_BACKOFF_SECONDS caps the exponential backoff at the same hour.
RETRY_BACKOFF_SECONDS = (1, 3600)
TIME_LIMIT_SECONDS = (60, 7 * 86400)
TIMEOUT_OVERALL = (1, MAX_TIMEOUT_SECONDS)

# The keyword arguments of `validate_schedule` that are schedule fields.
FIELDS = (
    "cron_expression", "timezone", "retune", "model_configuration", "split_config", "evaluation_config",
    "n_trials", "timeout_overall", "tried_algorithms", "auto_deploy", "deploy_slot", "gate_tolerance",
    "max_retries", "retry_backoff_seconds", "time_limit_seconds", "webhook_url",
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
    errors.int_in("max_retries", max_retries, MAX_RETRIES)
    errors.int_in("retry_backoff_seconds", retry_backoff_seconds, RETRY_BACKOFF_SECONDS)
    errors.int_in("time_limit_seconds", time_limit_seconds, TIME_LIMIT_SECONDS)
    errors.float_in("gate_tolerance", gate_tolerance, 0.0, 1.0, message="Must be between 0 and 1.")

    if retune:
        if split_config is None:
            errors.add("split_config", "Required when retune is on: choose a split config to retune with.")
        if evaluation_config is None:
            errors.add("evaluation_config",
                       "Required when retune is on: choose an evaluation config to retune with.")
    elif model_configuration is None:
        errors.add("model_configuration", "Required unless retune is on: choose a model configuration.")
    if auto_deploy and deploy_slot is None and project is not None:
        active = DeploymentSlot.objects.filter(project=project, is_active=True).count()
        if active > 1:
            errors.add("deploy_slot", (
                f"The project has {active} active slots; choose the one auto-deploy should update "
                "(auto-deploy replaces a slot's model and never adds a slot)."))

    url = (webhook_url or "").strip()
    if url:
        try:
            check_url_allowed(url, allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
        except UrlNotAllowed as exc:
            errors.add("webhook_url", str(exc))
    cleaned["webhook_url"] = url
    errors.raise_if_any()
    return cleaned
