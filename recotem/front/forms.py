"""Forms of the web UI. They parse and validate input; services do the writing."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from recotem.accounts.models import ApiKey
from recotem.lib.cron import CronError, TimezoneError, validate_cron, validate_timezone
from recotem.projects.models import Project


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
        data = super().clean()
        name = data.get("name")
        if name and Project.objects.filter(owner=self.owner, name=name).exists():
            self.add_error("name", "You already have a project with this name.")
        user_col, item_col, time_col = (data.get(k, "") for k in ("user_column", "item_column", "time_column"))
        if user_col and item_col and user_col == item_col:
            self.add_error("item_column", "Must differ from the user column.")
        if time_col and time_col in (user_col, item_col):
            self.add_error("time_column", "Must differ from the user and item columns.")
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


def clean_cron(value: str) -> str:
    try:
        return validate_cron(value)
    except CronError as exc:
        raise forms.ValidationError(str(exc)) from None


def clean_timezone(value: str) -> str:
    try:
        return validate_timezone(value or "UTC")
    except TimezoneError as exc:
        raise forms.ValidationError(str(exc)) from None


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


class SplitConfigForm(forms.ModelForm):
    class Meta:
        model = _tuning_models().SplitConfig
        fields = ["name", "scheme", "heldout_ratio", "test_user_ratio", "random_seed"]
        labels = {
            "name": "Split name", "scheme": "Scheme", "heldout_ratio": "Held-out ratio",
            "test_user_ratio": "Test user ratio", "random_seed": "Random seed",
        }
        help_texts = {"heldout_ratio": "Share of each test user's interactions hidden for scoring."}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        from recotem.tuning.services import split_spec_of

        if not self.errors:
            try:
                split_spec_of(self.instance.__class__(**data)).validate()
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


class EvaluationConfigForm(forms.ModelForm):
    class Meta:
        model = _tuning_models().EvaluationConfig
        fields = ["name", "cutoff", "target_metric"]
        labels = {"name": "Evaluation name", "cutoff": "Cutoff (top-K)", "target_metric": "Target metric"}

    def clean_cutoff(self) -> int:
        value = self.cleaned_data["cutoff"]
        if not 1 <= value <= 1000:
            raise forms.ValidationError("Must be between 1 and 1000.")
        return value


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
        data = super().clean()
        from recotem.ml.registry import validate_parameters

        name = data.get("name")
        if name and _tuning_models().ModelConfiguration.objects.filter(project=self.project, name=name).exists():
            self.add_error("name", "A configuration with this name already exists.")
        if data.get("recommender_class_name") and "parameters_json" in data:
            try:
                data["parameters_json"] = validate_parameters(
                    data["recommender_class_name"], data["parameters_json"] or {}
                )
            except ValueError as exc:
                self.add_error("parameters_json", str(exc))
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

    class Meta:
        from recotem.retraining.models import RetrainingSchedule

        model = RetrainingSchedule
        fields = [
            "cron_expression", "timezone", "training_data", "model_configuration", "retune",
            "split_config", "evaluation_config", "n_trials", "timeout_overall", "auto_deploy",
            "deploy_slot", "gate_tolerance", "max_retries", "notify_on_failure", "webhook_url",
            "is_enabled",
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

    def clean_cron_expression(self) -> str:
        return clean_cron(self.cleaned_data["cron_expression"])

    def clean_timezone(self) -> str:
        return clean_timezone(self.cleaned_data["timezone"])

    def clean_n_trials(self) -> int:
        value = self.cleaned_data["n_trials"]
        if not 1 <= value <= 10_000:
            raise forms.ValidationError("Must be between 1 and 10000.")
        return value

    def clean_timeout_overall(self) -> int | None:
        value = self.cleaned_data.get("timeout_overall")
        if value is not None and value <= 0:
            raise forms.ValidationError("Must be a positive number of seconds.")
        return value

    def clean_gate_tolerance(self) -> float:
        value = self.cleaned_data["gate_tolerance"]
        if not 0 <= value <= 1:
            raise forms.ValidationError("Must be between 0 and 1.")
        return value

    def clean_max_retries(self) -> int:
        value = self.cleaned_data["max_retries"]
        if not 0 <= value <= 10:
            raise forms.ValidationError("Must be between 0 and 10.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("retune"):
            if not data.get("split_config"):
                self.add_error("split_config", "Choose a split config to retune with.")
            if not data.get("evaluation_config"):
                self.add_error("evaluation_config", "Choose an evaluation config to retune with.")
        elif not data.get("model_configuration") and "model_configuration" not in self.errors:
            self.add_error("model_configuration", "Choose a model configuration, or turn on Retune.")
        if data.get("auto_deploy") and not data.get("deploy_slot"):
            from recotem.deployment.models import DeploymentSlot

            active = DeploymentSlot.objects.filter(project=self.project, is_active=True).count()
            if active > 1:
                self.add_error(
                    "deploy_slot",
                    f"The project has {active} active slots; choose the one Auto Deploy should update.",
                )
        if data.get("webhook_url"):
            from django.conf import settings

            from recotem.lib.netguard import UrlNotAllowed, check_url_allowed

            try:
                check_url_allowed(data["webhook_url"], allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
            except UrlNotAllowed as exc:
                self.add_error("webhook_url", str(exc))
        return data
