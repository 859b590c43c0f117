"""Forms of the web UI. They parse and validate input; services do the writing."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from recotem.accounts.models import ApiKey
from recotem.projects.models import Project


def shared_clean(form: forms.BaseForm, validate: Any, **values: Any) -> dict[str, Any]:
    """Run one of the validation functions the API uses too; show its errors on the form.

    A field that already failed its own parsing keeps that message only (the shared rule saw a
    missing value there). Returns the validator's normalised values, or {} on errors.
    """
    try:
        return validate(**values) or {}
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            target = field if field in form.fields else None
            if target is not None and target in form.errors:
                continue
            for message in messages:
                form.add_error(target, message)
        return {}


class LoginForm(AuthenticationForm):
    username = forms.CharField(label="Username", widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}))
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "user_column", "item_column", "time_column"]
        labels = {
            "name": "Project name",
            "user_column": "User column",
            "item_column": "Item column",
            "time_column": "Time column (optional)",
        }
        help_texts = {
            "user_column": "Header of the column holding user ids, e.g. user_id.",
            "item_column": "Header of the column holding item ids, e.g. item_id.",
            "time_column": "Unix seconds or date-times; enables time-based splits.",
        }

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean(self) -> dict[str, Any]:
        from recotem.projects.validation import validate_project_fields

        data = super().clean()
        shared_clean(
            self, validate_project_fields, owner=self.owner, instance=self.instance,
            **{k: data.get(k, "") for k in ("name", "user_column", "item_column", "time_column")},
        )
        return data


class UploadForm(forms.Form):
    file = forms.FileField(label="File", help_text="CSV, TSV, Parquet or JSON lines; optionally gzipped.")


class ApiKeyForm(forms.Form):
    name = forms.CharField(label="Key name", max_length=128, help_text="Where the key is used, e.g. 'shop backend'.")
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=ApiKey.Scope.choices,
        initial=[ApiKey.Scope.PREDICT],
        widget=forms.CheckboxSelectMultiple,
        help_text="predict: call the inference API; read/write: use the management API.",
    )


class CronPreviewForm(forms.Form):
    """Input of the live cron preview; invalid values are explained, never raised."""

    cron_expression = forms.CharField(required=False)
    timezone = forms.CharField(required=False)


class JSONObjectField(forms.CharField):
    widget = forms.Textarea

    def to_python(self, value: Any) -> dict[str, Any]:
        value = super().to_python(value)
        if not value:
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError('Must be a JSON object, e.g. {"n_components": 64}.')
        return parsed

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value)
        return value


class ProjectScopedForm(forms.ModelForm):
    """A ModelForm whose related-object choices are limited to one project."""

    scoped_fields: dict[str, Any] = {}

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        for name, model in self.scoped_fields.items():
            if name in self.fields:
                self.fields[name].queryset = model.objects.filter(project=project)


def _tuning_models() -> Any:
    from recotem.tuning import models

    return models


class SplitConfigForm(ProjectScopedForm):
    class Meta:
        model = _tuning_models().SplitConfig
        fields = ["name", "scheme", "heldout_ratio", "n_heldout", "test_user_ratio", "n_test_users", "random_seed"]
        labels = {
            "name": "Split name", "scheme": "Scheme", "heldout_ratio": "Held-out ratio",
            "n_heldout": "Held-out interactions per user (optional)", "test_user_ratio": "Test user ratio",
            "n_test_users": "Test users (optional)", "random_seed": "Random seed",
        }
        help_texts = {
            "heldout_ratio": "Share of each test user's interactions hidden for scoring.",
            "n_heldout": "A fixed count instead of the ratio.",
            "n_test_users": "A fixed number of validation (and test) users instead of the ratio.",
            "scheme": "TG and TU need the project's time column.",
        }

    def clean(self) -> dict[str, Any]:
        from recotem.tuning.validation import validate_split_config

        data = super().clean()
        shared_clean(self, validate_split_config, project=self.project, **{
            f: data.get(f) for f in ("scheme", "heldout_ratio", "n_heldout", "test_user_ratio", "n_test_users",
                                     "random_seed")
        })
        return data


class EvaluationConfigForm(ProjectScopedForm):
    class Meta:
        model = _tuning_models().EvaluationConfig
        fields = ["name", "cutoff", "target_metric"]
        labels = {"name": "Evaluation name", "cutoff": "Cutoff (top-K)", "target_metric": "Target metric"}

    def clean(self) -> dict[str, Any]:
        from recotem.tuning.validation import validate_evaluation_config

        data = super().clean()
        shared_clean(self, validate_evaluation_config, cutoff=data.get("cutoff"))
        return data


def _algorithm_choices() -> list[tuple[str, str]]:
    from recotem.ml.registry import available_recommenders

    return [(n, n.removesuffix("Recommender")) for n in available_recommenders()]


def _default_algorithms() -> list[str]:
    from recotem.ml.tuning import DEFAULT_ALGORITHMS

    return list(DEFAULT_ALGORITHMS)


class TuningJobForm(forms.Form):
    data = forms.ModelChoiceField(queryset=None, label="Training data", empty_label=None)
    split = forms.ModelChoiceField(queryset=None, label="Split config", empty_label=None)
    evaluation = forms.ModelChoiceField(queryset=None, label="Evaluation config", empty_label=None)
    n_trials = forms.IntegerField(label="Trials", min_value=1, max_value=10_000, initial=20)
    timeout_overall = forms.IntegerField(
        label="Time budget (seconds, optional)", min_value=1, required=False
    )
    tried_algorithms = forms.MultipleChoiceField(
        label="Algorithms", choices=_algorithm_choices, widget=forms.CheckboxSelectMultiple, required=False,
        help_text="Leave empty for the default set.",
    )
    train_after_tuning = forms.BooleanField(label="Train the best configuration afterwards", initial=True, required=False)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tm = _tuning_models()
        self.fields["data"].queryset = project.training_data.all()
        self.fields["split"].queryset = tm.SplitConfig.objects.filter(project=project)
        self.fields["evaluation"].queryset = tm.EvaluationConfig.objects.filter(project=project)
        if not self.is_bound:
            self.initial.setdefault("tried_algorithms", _default_algorithms())

    def clean(self) -> dict[str, Any]:
        from recotem.tuning.validation import validate_tuning_job

        data = super().clean()
        cleaned = shared_clean(
            self, validate_tuning_job, n_trials=data.get("n_trials"), timeout_overall=data.get("timeout_overall"),
            tried_algorithms=data.get("tried_algorithms"),
        )
        if cleaned.get("tried_algorithms"):
            data["tried_algorithms"] = cleaned["tried_algorithms"]
        return data


class ModelConfigurationForm(forms.ModelForm):
    recommender_class_name = forms.ChoiceField(label="Algorithm", choices=_algorithm_choices)
    parameters_json = JSONObjectField(
        label="Parameters (JSON)", required=False, help_text='e.g. {"n_components": 64, "alpha0": 0.1}'
    )

    class Meta:
        model = _tuning_models().ModelConfiguration
        fields = ["name", "recommender_class_name", "parameters_json"]
        labels = {"name": "Configuration name"}

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean(self) -> dict[str, Any]:
        from recotem.tuning.validation import validate_model_configuration

        data = super().clean()
        if "recommender_class_name" in data:
            cleaned = shared_clean(
                self, validate_model_configuration, project=self.project, name=data.get("name"),
                recommender_class_name=data["recommender_class_name"],
                parameters_json=data.get("parameters_json"), instance=self.instance,
            )
            data.update({k: v for k, v in cleaned.items() if k in data})
        return data


class TrainForm(forms.Form):
    configuration = forms.ModelChoiceField(queryset=None, label="Model configuration", empty_label=None)
    data = forms.ModelChoiceField(queryset=None, label="Training data", empty_label=None)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["configuration"].queryset = _tuning_models().ModelConfiguration.objects.filter(project=project)
        self.fields["data"].queryset = project.training_data.all()


class SampleRecommendationForm(forms.Form):
    trained_model = forms.ModelChoiceField(queryset=None, label="Model", empty_label=None)
    user_id = forms.CharField(label="User id", max_length=256)
    cutoff = forms.IntegerField(label="How many items", min_value=1, max_value=100, initial=10)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from recotem.training.models import TrainedModel

        self.fields["trained_model"].queryset = TrainedModel.objects.filter(
            project=project, status="COMPLETED"
        ).select_related("configuration")


def _timezone_choices() -> list[tuple[str, str]]:
    import zoneinfo

    names = sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})
    return [("UTC", "UTC")] + [(n, n) for n in names if n != "UTC"]


class ScheduleForm(forms.ModelForm):
    """The retraining schedule, with the user guide's labels as the visible labels."""

    cron_expression = forms.CharField(
        label="Cron Expression", max_length=128, initial="0 2 * * *",
        help_text="minute hour day-of-month month day-of-week, e.g. 0 2 * * 0 (Sundays 02:00).",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "class": "mono"}),
    )
    timezone = forms.ChoiceField(label="Timezone", choices=_timezone_choices, initial="UTC")
    tried_algorithms = forms.MultipleChoiceField(
        label="Algorithms to retune", choices=_algorithm_choices, widget=forms.CheckboxSelectMultiple,
        required=False, help_text="The tuning budget's search space; leave empty for the default set.",
    )

    class Meta:
        from recotem.retraining.models import RetrainingSchedule

        model = RetrainingSchedule
        fields = [
            "cron_expression", "timezone", "training_data", "model_configuration", "retune",
            "split_config", "evaluation_config", "n_trials", "timeout_overall", "tried_algorithms",
            "auto_deploy", "deploy_slot", "gate_tolerance", "max_retries", "retry_backoff_seconds",
            "time_limit_seconds", "notify_on_failure", "webhook_url", "is_enabled",
        ]
        labels = {
            "training_data": "Training Data",
            "model_configuration": "Model Configuration",
            "retune": "Retune",
            "split_config": "Split config",
            "evaluation_config": "Evaluation config",
            "n_trials": "Tuning budget (trials)",
            "timeout_overall": "Tuning time limit (seconds, optional)",
            "auto_deploy": "Auto Deploy",
            "deploy_slot": "Target slot",
            "gate_tolerance": "Gate tolerance",
            "max_retries": "Max retries",
            "retry_backoff_seconds": "Retry backoff (seconds)",
            "time_limit_seconds": "Run time limit (seconds)",
            "notify_on_failure": "Notify on failure",
            "webhook_url": "Webhook URL (optional)",
            "is_enabled": "Enabled",
        }
        help_texts = {
            "training_data": "Latest uses the newest upload (or data source snapshot) at run time.",
            "model_configuration": "Required unless Retune is on.",
            "retune": "Run a new hyperparameter search before training.",
            "auto_deploy": "Replace the model in the target slot when the new one passes the quality gate.",
            "gate_tolerance": "Deploy if the new score ≥ incumbent × (1 − tolerance); 0.02 allows a 2% drop.",
            "webhook_url": "Receives a signed JSON POST when a run fails (with Notify on failure).",
            "retry_backoff_seconds": "Wait before the first retry; doubles with each further retry (at most 1 hour).",
            "time_limit_seconds": "A run still going after this long is failed (and retried). 60 s to 7 days.",
        }

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from recotem.deployment.models import DeploymentSlot

        self.fields["webhook_url"] = forms.CharField(
            label="Webhook URL (optional)", max_length=2048, required=False,
            help_text=self.Meta.help_texts["webhook_url"],
            widget=forms.URLInput(),
        )
        tm = _tuning_models()
        self.project = project
        self.fields["training_data"].queryset = project.training_data.all()
        self.fields["training_data"].empty_label = "latest"
        self.fields["model_configuration"].queryset = tm.ModelConfiguration.objects.filter(project=project)
        self.fields["model_configuration"].empty_label = "— none —"
        self.fields["split_config"].queryset = tm.SplitConfig.objects.filter(project=project)
        self.fields["evaluation_config"].queryset = tm.EvaluationConfig.objects.filter(project=project)
        self.fields["deploy_slot"].queryset = DeploymentSlot.objects.filter(project=project)
        self.fields["deploy_slot"].empty_label = "— the only active slot —"
        cron_attrs = self.fields["cron_expression"].widget.attrs
        cron_attrs["aria-describedby"] = "cron-description"

    def clean(self) -> dict[str, Any]:
        from recotem.retraining.validation import FIELDS, validate_schedule

        data = super().clean()
        cleaned = shared_clean(self, validate_schedule, project=self.project, **{f: data.get(f) for f in FIELDS})
        data.update({k: v for k, v in cleaned.items() if k in data})
        return data
