"""Forms of the web UI. They parse and validate input; services do the writing."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db.models import Model

from recotem.accounts.models import ApiKey
from recotem.core.jobs import JobStatus
from recotem.deployment.models import DeploymentSlot
from recotem.ml.catalogue import DEFAULT_ALGORITHMS, available_recommenders
from recotem.projects.models import Project, TrainingData
from recotem.projects.validation import (
    MAX_WINDOW_DAYS,
    event_types_errors,
    validate_project_fields,
)
from recotem.retraining.models import RetrainingSchedule
from recotem.retraining.validation import FIELDS as SCHEDULE_FIELDS
from recotem.retraining.validation import SETTINGS as SCHEDULE_SETTINGS
from recotem.retraining.validation import validate_schedule
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.training.validation import validate_model_configuration
from recotem.tuning import validation as tuning_validation
from recotem.tuning.models import SPLIT_SETTINGS, EvaluationConfig, SplitConfig

_M = TypeVar("_M", bound=Model)


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


def model_choice(form: forms.BaseForm, name: str) -> forms.ModelChoiceField[Any]:
    """The form's ModelChoiceField `name`, to limit its choices (e.g. to one project)."""
    field = form.fields[name]
    assert isinstance(field, forms.ModelChoiceField), f"{name} is not a ModelChoiceField"
    return field


class LoginForm(AuthenticationForm):
    username = forms.CharField(
        label="Username",
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class ProjectForm(forms.ModelForm[Project]):
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
        super().clean()
        data = self.cleaned_data
        shared_clean(
            self,
            validate_project_fields,
            owner=self.owner,
            instance=self.instance,
            **{k: data.get(k, "") for k in ("name", "user_column", "item_column", "time_column")},
        )
        return data


class UploadForm(forms.Form):
    file = forms.FileField(
        label="File", help_text="CSV, TSV, Parquet or JSON lines; optionally gzipped."
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label="Key name", max_length=128, help_text="Where the key is used, e.g. 'shop backend'."
    )
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


class JSONObjectField(forms.Field):
    """A textarea holding a JSON object; its Python value is the parsed dict ({} when blank).

    A plain Field rather than a CharField, whose Python value is a string: the text is stripped
    here as CharField would strip it.
    """

    widget = forms.Textarea

    def to_python(self, value: Any) -> dict[str, Any]:
        value = "" if value in self.empty_values else str(value).strip()
        if not value:
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError('Must be a JSON object, e.g. {"n_components": 64}.')
        return parsed

    def prepare_value(self, value: Any) -> object:  # what the textarea shows
        if isinstance(value, dict):
            return json.dumps(value)
        return value


class ProjectScopedForm(forms.ModelForm[_M]):
    """A ModelForm whose related-object choices are limited to one project."""

    scoped_fields: dict[str, Any] = {}

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        for name, model in self.scoped_fields.items():
            if name in self.fields:
                model_choice(self, name).queryset = model.objects.filter(project=project)


class SplitConfigForm(ProjectScopedForm[SplitConfig]):
    # Optional so a form posted without it (an older page) keeps the model's default.
    final_test_ratio = forms.FloatField(
        label="Final test user ratio",
        required=False,
        initial=SplitConfig.final_test_ratio.field.default,
    )

    class Meta:
        model = SplitConfig
        fields = ["name", *SPLIT_SETTINGS]
        labels = {
            "name": "Split name",
            "scheme": "Scheme",
            "heldout_ratio": "Held-out ratio",
            "n_heldout": "Held-out interactions per user (optional)",
            "test_user_ratio": "Test user ratio",
            "n_test_users": "Test users (optional)",
            "final_test_ratio": "Final test user ratio",
            "n_final_test_users": "Final test users (optional)",
            "random_seed": "Random seed",
        }
        help_texts = {
            "heldout_ratio": "Share of each scored user's interactions hidden for scoring.",
            "n_heldout": "A fixed count instead of the ratio.",
            "test_user_ratio": (
                "Share of the users (apart from the final test users) whose hidden items score "
                "the search; 1 uses every user."
            ),
            "n_test_users": "A fixed number of such users instead of the ratio.",
            "final_test_ratio": (
                "Share of users kept out of the search for an unbiased final score; 0 for none."
            ),
            "n_final_test_users": "A fixed number of final test users instead of the ratio.",
            "scheme": "TG and TU need the project's time column.",
        }

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("final_test_ratio") is None and "final_test_ratio" not in self.errors:
            data["final_test_ratio"] = SplitConfig.final_test_ratio.field.default
        shared_clean(
            self,
            tuning_validation.validate_split_config,
            project=self.project,
            **{f: data.get(f) for f in SPLIT_SETTINGS},
        )
        return data


class EvaluationConfigForm(ProjectScopedForm[EvaluationConfig]):
    class Meta:
        model = EvaluationConfig
        fields = ["name", "cutoff", "target_metric"]
        labels = {
            "name": "Evaluation name",
            "cutoff": "Cutoff (top-K)",
            "target_metric": "Target metric",
        }

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        shared_clean(self, tuning_validation.validate_evaluation_config, cutoff=data.get("cutoff"))
        return data


def _algorithm_choices() -> list[tuple[str, str]]:
    return [(n, n.removesuffix("Recommender")) for n in available_recommenders()]


def _default_algorithms() -> list[str]:
    return list(DEFAULT_ALGORITHMS)


class TuningJobForm(forms.Form):
    # Django's metaclass moves declared fields into `base_fields`, so this never shadows `.data`.
    data: forms.ModelChoiceField[TrainingData] = forms.ModelChoiceField(  # type: ignore[assignment]
        queryset=None, label="Training data", empty_label=None
    )
    split: forms.ModelChoiceField[SplitConfig] = forms.ModelChoiceField(
        queryset=None, label="Split config", empty_label=None
    )
    evaluation: forms.ModelChoiceField[EvaluationConfig] = forms.ModelChoiceField(
        queryset=None, label="Evaluation config", empty_label=None
    )
    n_trials = forms.IntegerField(
        label="Trials",
        min_value=tuning_validation.N_TRIALS[0],
        max_value=tuning_validation.N_TRIALS[1],
        initial=20,
    )
    timeout_overall = forms.IntegerField(
        label="Time budget (seconds, optional)",
        min_value=tuning_validation.TIMEOUT[0],
        max_value=tuning_validation.TIMEOUT[1],
        required=False,
    )
    tried_algorithms = forms.MultipleChoiceField(
        label="Algorithms",
        choices=_algorithm_choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Leave empty for the default set.",
    )
    train_after_tuning = forms.BooleanField(
        label="Train the best configuration afterwards", initial=True, required=False
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "data").queryset = project.training_data.all()
        model_choice(self, "split").queryset = SplitConfig.objects.filter(project=project)
        model_choice(self, "evaluation").queryset = EvaluationConfig.objects.filter(project=project)
        if not self.is_bound:
            self.initial.setdefault("tried_algorithms", _default_algorithms())

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        cleaned = shared_clean(
            self,
            tuning_validation.validate_tuning_job,
            n_trials=data.get("n_trials"),
            timeout_overall=data.get("timeout_overall"),
            tried_algorithms=data.get("tried_algorithms"),
        )
        if cleaned.get("tried_algorithms"):
            data["tried_algorithms"] = cleaned["tried_algorithms"]
        return data


class ModelConfigurationForm(forms.ModelForm[ModelConfiguration]):
    recommender_class_name = forms.ChoiceField(label="Algorithm", choices=_algorithm_choices)
    parameters_json = JSONObjectField(
        label="Parameters (JSON)",
        required=False,
        help_text='e.g. {"n_components": 64, "alpha0": 0.1}',
    )

    class Meta:
        model = ModelConfiguration
        fields = ["name", "recommender_class_name", "parameters_json"]
        labels = {"name": "Configuration name"}

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if "recommender_class_name" in data:
            cleaned = shared_clean(
                self,
                validate_model_configuration,
                project=self.project,
                name=data.get("name"),
                recommender_class_name=data["recommender_class_name"],
                parameters_json=data.get("parameters_json"),
                instance=self.instance,
            )
            data.update({k: v for k, v in cleaned.items() if k in data})
        return data


class TrainForm(forms.Form):
    configuration: forms.ModelChoiceField[ModelConfiguration] = forms.ModelChoiceField(
        queryset=None, label="Model configuration", empty_label=None
    )
    # Django's metaclass moves declared fields into `base_fields`, so this never shadows `.data`.
    data: forms.ModelChoiceField[TrainingData] = forms.ModelChoiceField(  # type: ignore[assignment]
        queryset=None, label="Training data", empty_label=None
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "configuration").queryset = ModelConfiguration.objects.filter(
            project=project
        )
        model_choice(self, "data").queryset = project.training_data.all()


class SampleRecommendationForm(forms.Form):
    trained_model: forms.ModelChoiceField[TrainedModel] = forms.ModelChoiceField(
        queryset=None, label="Model", empty_label=None
    )
    user_id = forms.CharField(label="User id", max_length=256)
    cutoff = forms.IntegerField(label="How many items", min_value=1, max_value=100, initial=10)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "trained_model").queryset = TrainedModel.objects.filter(
            project=project, status=JobStatus.COMPLETED
        ).select_related("configuration")


def _timezone_choices() -> list[tuple[str, str]]:
    import zoneinfo

    names = sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})
    return [("UTC", "UTC")] + [(n, n) for n in names if n != "UTC"]


class ScheduleForm(forms.ModelForm[RetrainingSchedule]):
    """The retraining schedule, with the user guide's labels as the visible labels."""

    # Optional so a form posted without it (an older page) keeps the model's default.
    max_data_shrink = forms.FloatField(
        label="Largest allowed data shrink",
        required=False,
        initial=RetrainingSchedule.max_data_shrink.field.default,
        help_text=(
            "Refuse to deploy when the data has this share fewer rows than at the last "
            "completed run (0.5: half); a forced run deploys anyway."
        ),
    )

    cron_expression = forms.CharField(
        label="Cron Expression",
        max_length=128,
        initial="0 2 * * *",
        help_text="minute hour day-of-month month day-of-week, e.g. 0 2 * * 0 (Sundays 02:00).",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "class": "mono"}
        ),
    )
    timezone = forms.ChoiceField(label="Timezone", choices=_timezone_choices, initial="UTC")
    tried_algorithms = forms.MultipleChoiceField(
        label="Algorithms to retune",
        choices=_algorithm_choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="The tuning budget's search space; leave empty for the default set.",
    )

    class Meta:
        model = RetrainingSchedule
        fields = list(SCHEDULE_SETTINGS)
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
            "max_data_shrink": "Largest allowed data shrink",
            "deploy_mode": "Deploy mode",
            "canary_percent": "Canary share (% of the slot's users)",
            "canary_minutes": "Canary window (minutes)",
            "canary_metric": "Canary metric",
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
            "gate_tolerance": (
                "Reject only a model confidently worse than the deployed one by more than this "
                "share of its score (0.02: 2 %); equally good models deploy."
            ),
            "max_data_shrink": (
                "Refuse to deploy when the data has this share fewer rows than at the last "
                "completed run (0.5: half); a forced run deploys anyway."
            ),
            "webhook_url": "Receives a signed JSON POST when a run fails or a canary is rolled back (with Notify on failure).",
            "deploy_mode": (
                "Replace: the new model takes over the slot at once. Canary: it first serves a "
                "share of the slot's users as an experiment, promoted when the window ends "
                "unless the incumbent is confidently better."
            ),
            "canary_percent": "1 to 50.",
            "canary_metric": "The event type that counts as a conversion (click, purchase or a custom one).",
            "retry_backoff_seconds": "Wait before the first retry; doubles with each further retry (at most 1 hour).",
            "time_limit_seconds": "A run still going after this long is failed (and retried). 60 s to 7 days.",
        }

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["webhook_url"] = forms.CharField(
            label="Webhook URL (optional)",
            max_length=2048,
            required=False,
            help_text=self.Meta.help_texts["webhook_url"],
            widget=forms.URLInput(),
        )
        self.project = project
        training_data = model_choice(self, "training_data")
        training_data.queryset = project.training_data.all()
        training_data.empty_label = "latest"
        configuration = model_choice(self, "model_configuration")
        configuration.queryset = ModelConfiguration.objects.filter(project=project)
        configuration.empty_label = "— none —"
        split = model_choice(self, "split_config")
        split.queryset = SplitConfig.objects.filter(project=project)
        evaluation = model_choice(self, "evaluation_config")
        evaluation.queryset = EvaluationConfig.objects.filter(project=project)
        deploy_slot = model_choice(self, "deploy_slot")
        deploy_slot.queryset = DeploymentSlot.objects.filter(project=project)
        deploy_slot.empty_label = "— the only active slot —"
        for name in ("deploy_mode", "canary_percent", "canary_minutes", "canary_metric"):
            self.fields[name].required = False  # the model's default when left out
        cron_attrs = self.fields["cron_expression"].widget.attrs
        cron_attrs["aria-describedby"] = "cron-description"

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("max_data_shrink") is None and "max_data_shrink" not in self.errors:
            data["max_data_shrink"] = RetrainingSchedule.max_data_shrink.field.default
        defaults = {
            "deploy_mode": RetrainingSchedule.deploy_mode.field.default,
            "canary_percent": RetrainingSchedule.canary_percent.field.default,
            "canary_minutes": RetrainingSchedule.canary_minutes.field.default,
            "canary_metric": RetrainingSchedule.canary_metric.field.default,
        }
        for name, default in defaults.items():
            if data.get(name) in (None, "") and name not in self.errors:
                data[name] = default
        cleaned = shared_clean(
            self,
            validate_schedule,
            project=self.project,
            **{f: data.get(f) for f in SCHEDULE_FIELDS},
        )
        data.update({k: v for k, v in cleaned.items() if k in data})
        return data


class EventsSourceForm(forms.Form):
    """A data source of kind ``events``: which stored feedback events a run trains on."""

    event_types = forms.CharField(
        label="Event types",
        required=False,
        max_length=1000,
        help_text="Comma-separated, e.g. click, purchase. Empty: every type except impression "
        "(what was shown is not what the user did).",
    )
    window_days = forms.IntegerField(
        label="Window (days)",
        required=False,
        min_value=1,
        max_value=MAX_WINDOW_DAYS,
        help_text="Only events of the last N days. Empty: every stored event.",
    )

    def clean_event_types(self) -> list[str] | None:
        """The list the API takes (None when empty), checked with the API's rule."""
        raw: str = self.cleaned_data["event_types"]
        types = raw.replace(",", " ").split()
        if not types:
            return None
        problems = event_types_errors(types)
        if problems:
            raise ValidationError(problems[0])
        return types
