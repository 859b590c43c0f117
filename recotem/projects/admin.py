from __future__ import annotations

from django.apps import apps
from django.contrib import admin

# Every model of this app is listed in the admin with its fields as columns.
for model in apps.get_app_config("projects").get_models():
    columns = [f.name for f in model._meta.fields if f.get_internal_type() not in ("JSONField", "TextField")][:8]
    admin.site.register(model, type(f"{model.__name__}Admin", (admin.ModelAdmin,), {"list_display": columns}))
