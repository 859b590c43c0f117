"""Admin registration shared by every app: each model is listed with its fields as columns."""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin
from django.db import models


def columns_of(model: type[models.Model]) -> list[str]:
    skipped = ("JSONField", "TextField")
    return [f.name for f in model._meta.fields if f.get_internal_type() not in skipped][:8]


def register_app_models(
    app_label: str, *, custom: dict[type[models.Model], type] | None = None
) -> None:
    """Register every model of ``app_label`` not registered yet; ``custom`` maps a model to its
    own ModelAdmin subclass (which still gets the default columns unless it sets them)."""
    custom = custom or {}
    for model in apps.get_app_config(app_label).get_models():
        if model in admin.site._registry:  # noqa: SLF001 - the registry has no public lookup
            continue
        base = custom.get(model, admin.ModelAdmin)
        attrs = {} if "list_display" in vars(base) else {"list_display": columns_of(model)}
        admin.site.register(model, type(f"{model.__name__}Admin", (base,), attrs))


register_app_models("core")
