"""REST resources: split_config, evaluation_config, parameter_tuning_job."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import (
    OwnedModelViewSet,
    OwnedPrimaryKeyRelatedField,
    SameProjectMixin,
    bounded_int,
    current_value,
)
from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration
from recotem.tuning import services, validation
from recotem.tuning.models import (
    SPLIT_SETTINGS,
    EvaluationConfig,
    ParameterTuningJob,
    SplitConfig,
    TuningTrial,
)


def _project_field() -> OwnedPrimaryKeyRelatedField:
    return OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")


class SplitConfigSerializer(serializers.ModelSerializer[SplitConfig]):
    project = _project_field()
    heldout_ratio = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    n_heldout = bounded_int(validation.SPLIT_N_HELDOUT, allow_null=True)
    test_user_ratio = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    final_test_ratio = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    n_test_users = bounded_int(validation.SPLIT_N_TEST_USERS, allow_null=True)
    n_final_test_users = bounded_int(validation.SPLIT_N_FINAL_TEST_USERS, allow_null=True)
    random_seed = bounded_int(validation.RANDOM_SEED)

    class Meta:
        model = SplitConfig
        fields = [
            "id",
            "project",
            "name",
            "scheme",
            "heldout_ratio",
            "n_heldout",
            "test_user_ratio",
            "n_test_users",
            "final_test_ratio",
            "n_final_test_users",
            "random_seed",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        validation.validate_split_config(
            **{f: current_value(self, attrs, f) for f in ("project", *SPLIT_SETTINGS)}
        )
        return attrs


class EvaluationConfigSerializer(serializers.ModelSerializer[EvaluationConfig]):
    project = _project_field()
    cutoff = bounded_int(validation.CUTOFF)

    class Meta:
        model = EvaluationConfig
        fields = ["id", "project", "name", "cutoff", "target_metric", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        validation.validate_evaluation_config(cutoff=current_value(self, attrs, "cutoff"))
        return attrs


class SplitConfigViewSet(OwnedModelViewSet[SplitConfig]):
    queryset = SplitConfig.objects.select_related("project")
    serializer_class = SplitConfigSerializer


class EvaluationConfigViewSet(OwnedModelViewSet[EvaluationConfig]):
    queryset = EvaluationConfig.objects.select_related("project")
    serializer_class = EvaluationConfigSerializer


# --- tuning jobs ------------------------------------------------------------------------------


class TuningTrialSerializer(serializers.ModelSerializer[TuningTrial]):
    class Meta:
        model = TuningTrial
        fields = ["number", "algorithm", "params", "score", "duration", "state", "created_at"]


class ParameterTuningJobSerializer(
    SameProjectMixin, serializers.ModelSerializer[ParameterTuningJob]
):
    same_project_fields = ("data", "split", "evaluation", "warm_start_config")

    project = OwnedPrimaryKeyRelatedField(
        queryset=Project.objects.all(), project_path="", required=False
    )
    # DRF's metaclass moves declared fields out of the class, so this never shadows `.data`.
    data = OwnedPrimaryKeyRelatedField(queryset=TrainingData.objects.all())  # type: ignore[assignment]
    split = OwnedPrimaryKeyRelatedField(queryset=SplitConfig.objects.all())
    evaluation = OwnedPrimaryKeyRelatedField(queryset=EvaluationConfig.objects.all())
    warm_start_config = OwnedPrimaryKeyRelatedField(
        queryset=ModelConfiguration.objects.all(), required=False, allow_null=True
    )
    n_trials = bounded_int(validation.N_TRIALS)
    n_tasks_parallel = bounded_int(validation.N_TASKS_PARALLEL)
    timeout_overall = bounded_int(validation.TIMEOUT, allow_null=True)
    timeout_singlestep = bounded_int(validation.TIMEOUT, allow_null=True)
    random_seed = bounded_int(validation.RANDOM_SEED)
    tried_algorithms = serializers.ListField(child=serializers.CharField(), required=False)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ParameterTuningJob
        fields = [
            "id",
            "project",
            "data",
            "split",
            "evaluation",
            "n_trials",
            "n_tasks_parallel",
            "timeout_overall",
            "timeout_singlestep",
            "random_seed",
            "tried_algorithms",
            "train_after_tuning",
            "warm_start_config",
            "status",
            "best_config",
            "best_score",
            "test_metrics",
            "timings",
            "tuned_model",
            "trials_done",
            "progress",
            "error",
            "started_at",
            "completed_at",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "status",
            "best_config",
            "best_score",
            "test_metrics",
            "timings",
            "tuned_model",
            "trials_done",
            "error",
            "started_at",
            "completed_at",
            "created_at",
        ]

    def get_progress(self, job: ParameterTuningJob) -> dict[str, Any]:
        return {
            "trials_done": job.trials_done,
            "trials_total": job.n_trials,
            "best_score": job.best_score,
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "project" not in attrs and attrs.get("data") is not None:
            attrs["project"] = attrs["data"].project
        cleaned = validation.validate_tuning_job(
            **{
                f: current_value(self, attrs, f)
                for f in (
                    "n_trials",
                    "n_tasks_parallel",
                    "timeout_overall",
                    "timeout_singlestep",
                    "random_seed",
                    "tried_algorithms",
                )
            }
        )
        if attrs.get("tried_algorithms"):
            attrs["tried_algorithms"] = cleaned["tried_algorithms"]
        return super().validate(attrs)


class ParameterTuningJobDetailSerializer(ParameterTuningJobSerializer):
    trials = TuningTrialSerializer(many=True, read_only=True)

    class Meta(ParameterTuningJobSerializer.Meta):
        fields = [*ParameterTuningJobSerializer.Meta.fields, "trials"]


class ParameterTuningJobViewSet(OwnedModelViewSet[ParameterTuningJob]):
    queryset = ParameterTuningJob.objects.select_related("project").defer("test_scores")
    serializer_class = ParameterTuningJobSerializer
    filterset_fields = ("project", "status", "data")
    http_method_names = ["get", "post", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[ParameterTuningJob]:
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("trials")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer[ParameterTuningJob]]:
        if self.action == "retrieve":
            return ParameterTuningJobDetailSerializer
        return ParameterTuningJobSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.tuning_job_create(**serializer.validated_data)
        return Response(self.get_serializer(job).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["get"])
    def trials(self, request: Request, pk: str | None = None) -> Response:
        """Per-trial rows of the job (algorithm, params, validation score, seconds, state)."""
        job = self.get_object()
        return Response(TuningTrialSerializer(job.trials.all(), many=True).data)
