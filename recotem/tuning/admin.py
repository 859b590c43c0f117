from __future__ import annotations

from recotem.core.admin import register_app_models

register_app_models("tuning")
