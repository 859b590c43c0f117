"""Validation rules of model configurations, shared by the REST serializer, the web form and
the services (see `recotem.core.validation` for the error shape)."""

from __future__ import annotations

from typing import Any

from recotem.core.validation import Errors
from recotem.ml.catalogue import canonical_name, validate_parameters
from recotem.training.models import ModelConfiguration


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
    errors = Errors()
    if name and project is not None:
        clash = ModelConfiguration.objects.filter(project=project, name=name)
        if instance is not None and instance.pk is not None:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            errors.add("name", "This project already has a configuration with this name.")
    class_name: str | None
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
