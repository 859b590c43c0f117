"""Web UI routes, mounted at / by recotem/urls.py."""

from __future__ import annotations

from django.urls import path

from recotem.front.views import (
    auth,
    data,
    deployment,
    experiments,
    keys,
    models,
    plots,
    projects,
    retraining,
    tuning,
)

app_name = "front"

P = "projects/<int:pk>/"

urlpatterns = [
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("account/password/", auth.PasswordChangeView.as_view(), name="password_change"),
    path("vendor/plotly.min.js", plots.plotly_js, name="plotly_js"),
    path("", projects.project_list, name="project_list"),
    path(P, projects.project_overview, name="project_overview"),
    path(P + "data/", data.data_page, name="data"),
    path(P + "data/upload/<str:kind>/", data.data_upload, name="data_upload"),
    path(P + "data/preview/<str:kind>/<int:obj_id>/", data.data_preview, name="data_preview"),
    path(P + "data/source/", data.data_source_save, name="data_source_save"),
    path(P + "data/source/delete/", data.data_source_delete, name="data_source_delete"),
    path(P + "tuning/", tuning.tuning_page, name="tuning"),
    path(P + "tuning/config/<str:kind>/", tuning.config_create, name="tuning_config_create"),
    path(P + "tuning/jobs/", tuning.job_create, name="tuning_job_create"),
    path(P + "tuning/jobs/<int:job_id>/", tuning.job_detail, name="tuning_job"),
    path(P + "tuning/jobs/<int:job_id>/progress/", tuning.job_progress, name="tuning_job_progress"),
    path(P + "models/", models.models_page, name="models"),
    path(P + "models/configurations/", models.configuration_create, name="models_config_create"),
    path(P + "models/train/", models.train, name="models_train"),
    path(P + "models/sample/", models.sample, name="models_sample"),
    path(P + "models/<int:model_id>/download/", models.download, name="models_download"),
    path(P + "deployment/", deployment.deployment_page, name="deployment"),
    path(P + "deployment/slots/", deployment.slot_create, name="slot_create"),
    path(P + "deployment/slots/<int:slot_id>/", deployment.slot_update, name="slot_update"),
    path(
        P + "deployment/slots/<int:slot_id>/rollback/",
        deployment.slot_rollback,
        name="slot_rollback",
    ),
    path(P + "deployment/slots/<int:slot_id>/delete/", deployment.slot_delete, name="slot_delete"),
    path(P + "retraining/", retraining.retraining_page, name="retraining"),
    path(P + "retraining/cron-preview/", retraining.cron_preview, name="retraining_cron_preview"),
    path(P + "retraining/run-now/", retraining.run_now, name="retraining_run_now"),
    path(P + "retraining/runs/", retraining.runs_fragment, name="retraining_runs"),
    path(
        P + "retraining/runs/<int:run_id>/cancel/",
        retraining.run_cancel,
        name="retraining_run_cancel",
    ),
    path(P + "experiments/", experiments.experiments_page, name="experiments"),
    path(
        P + "experiments/<int:experiment_id>/",
        experiments.experiment_detail,
        name="experiment",
    ),
    path(
        P + "experiments/<int:experiment_id>/<str:action>/",
        experiments.experiment_action,
        name="experiment_action",
    ),
    path(P + "keys/", keys.api_keys, name="api_keys"),
    path(P + "keys/<int:key_id>/revoke/", keys.api_key_revoke, name="api_key_revoke"),
]
