"""REST API: retraining_schedule (CRUD + trigger), retraining_run (read-only), data_source."""

from __future__ import annotations

from typing import Any

from django_filters import rest_framework as filters
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField, SameProjectMixin
from recotem.core.exceptions import ApplicationError
from recotem.deployment.models import DeploymentSlot
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.retraining import selectors, services, sources, validation
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.tuning.models import EvaluationConfig, ModelConfiguration, SplitConfig

_OVERDUE_CACHE_KEY = "_recotem_overdue_ids"


def _bounded_int(bounds: tuple[int, int], *, allow_null: bool = False) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=bounds[0], max_value=bounds[1], required=False, allow_null=allow_null)


class RetrainingScheduleSerializer(SameProjectMixin, serializers.ModelSerializer):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    training_data = OwnedPrimaryKeyRelatedField(queryset=TrainingData.objects.all(), required=False, allow_null=True)
    model_configuration = OwnedPrimaryKeyRelatedField(
        queryset=ModelConfiguration.objects.all(), required=False, allow_null=True
    )
    split_config = OwnedPrimaryKeyRelatedField(queryset=SplitConfig.objects.all(), required=False, allow_null=True)
    evaluation_config = OwnedPrimaryKeyRelatedField(
        queryset=EvaluationConfig.objects.all(), required=False, allow_null=True
    )
    deploy_slot = OwnedPrimaryKeyRelatedField(queryset=DeploymentSlot.objects.all(), required=False, allow_null=True)
    tried_algorithms = serializers.ListField(child=serializers.CharField(), required=False)
    n_trials = _bounded_int(validation.N_TRIALS)
    timeout_overall = _bounded_int(validation.TIMEOUT_OVERALL, allow_null=True)
    gate_tolerance = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    max_retries = _bounded_int(validation.MAX_RETRIES)
    retry_backoff_seconds = _bounded_int(validation.RETRY_BACKOFF_SECONDS)
    time_limit_seconds = _bounded_int(validation.TIME_LIMIT_SECONDS)
    webhook_url = serializers.CharField(max_length=2048, required=False, allow_blank=True)
    next_run_at = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField()
    cron_description = serializers.SerializerMethodField()
    overdue = serializers.SerializerMethodField()

    same_project_fields = (
        "training_data", "model_configuration", "split_config", "evaluation_config", "deploy_slot",
    )

    class Meta:
        model = RetrainingSchedule
        fields = [
            "id", "project", "is_enabled", "cron_expression", "timezone", "training_data",
            "model_configuration", "retune", "split_config", "evaluation_config", "n_trials",
            "timeout_overall", "tried_algorithms", "auto_deploy", "deploy_slot", "gate_tolerance",
            "max_retries", "retry_backoff_seconds", "time_limit_seconds", "notify_on_failure",
            "webhook_url", "webhook_secret", "last_run_at", "last_run_status", "next_run_at",
            "next_runs", "cron_description", "overdue", "created_at", "updated_at",
        ]
        read_only_fields = [
            "id", "webhook_secret", "last_run_at", "last_run_status", "created_at", "updated_at",
        ]

    # --- computed --------------------------------------------------------------------------
    def _runs(self, obj: RetrainingSchedule) -> list[Any]:
        cache = self.context.setdefault("_next_runs", {})
        if obj.pk not in cache:
            cache[obj.pk] = selectors.schedule_next_runs(obj, n=5)
        return cache[obj.pk]

    def get_next_runs(self, obj: RetrainingSchedule) -> list[str]:
        return [d.isoformat() for d in self._runs(obj)]

    def get_next_run_at(self, obj: RetrainingSchedule) -> str | None:
        runs = self._runs(obj)
        return runs[0].isoformat() if runs else None

    def get_cron_description(self, obj: RetrainingSchedule) -> str:
        return selectors.schedule_description(obj)

    def get_overdue(self, obj: RetrainingSchedule) -> bool:
        if _OVERDUE_CACHE_KEY not in self.context:
            self.context[_OVERDUE_CACHE_KEY] = {s.pk for s, _ in selectors.overdue_schedules()}
        return obj.pk in self.context[_OVERDUE_CACHE_KEY]

    # --- validation ------------------------------------------------------------------------
    def validate_project(self, value: Project) -> Project:
        if self.instance is not None and value.pk != self.instance.project_id:
            raise serializers.ValidationError("A schedule cannot move to another project.")
        clash = RetrainingSchedule.objects.filter(project=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError("This project already has a retraining schedule; edit that one.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)

        def current(name: str) -> Any:
            if name in attrs:
                return attrs[name]
            if self.instance is not None:
                return getattr(self.instance, name)
            return RetrainingSchedule._meta.get_field(name).get_default()

        cleaned = validation.validate_schedule(
            project=current("project"), **{name: current(name) for name in validation.FIELDS}
        )
        attrs.update({name: value for name, value in cleaned.items() if name in attrs})
        return attrs


class RetrainingScheduleViewSet(OwnedModelViewSet):
    queryset = RetrainingSchedule.objects.select_related("project")
    serializer_class = RetrainingScheduleSerializer
    filterset_fields = ("project", "is_enabled")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = services.schedule_create(project=data.pop("project"), **data)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        data.pop("project", None)
        serializer.instance = services.schedule_update(schedule=serializer.instance, **data)

    def perform_destroy(self, instance: RetrainingSchedule) -> None:
        services.schedule_delete(schedule=instance)

    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        force = request.data.get("force", False) if hasattr(request.data, "get") else False
        if not isinstance(force, bool):
            return Response({"force": ["Must be true or false."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            run = services.run_trigger(schedule=schedule, trigger=RetrainingRun.Trigger.MANUAL, force=force)
        except services.RunConflict as exc:
            return Response({"detail": exc.message, "run_id": exc.run_id}, status=status.HTTP_409_CONFLICT)
        return Response({"run_id": run.pk}, status=status.HTTP_202_ACCEPTED)


class RetrainingRunSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="schedule.project_id", read_only=True)

    class Meta:
        model = RetrainingRun
        fields = [
            "id", "schedule", "project", "status", "trigger", "force", "attempt", "retry_of",
            "queued_at", "not_before", "started_at", "completed_at", "heartbeat_at",
            "data_fingerprint", "data_rows", "training_data", "tuning_job", "trained_model",
            "deployed_slot", "metrics", "incumbent_metrics", "gate_decision", "skip_reason",
            "error_message", "retryable", "notification", "worker",
        ]
        read_only_fields = fields


class RetrainingRunFilter(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=RunStatus.choices)
    project = filters.NumberFilter(field_name="schedule__project")

    class Meta:
        model = RetrainingRun
        fields = ["schedule", "status", "trigger", "project"]


class RetrainingRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = RetrainingRun.objects.select_related("schedule").order_by("-id")
    serializer_class = RetrainingRunSerializer
    filterset_class = RetrainingRunFilter

    def get_queryset(self) -> Any:
        from recotem.core.api import owned_queryset

        return owned_queryset(self.request, super().get_queryset(), "schedule__project")


class DataSourceSerializer(serializers.ModelSerializer):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")

    class Meta:
        model = DataSource
        fields = ["id", "project", "kind", "url", "query", "last_read_at", "last_error", "created_at", "updated_at"]
        read_only_fields = ["id", "last_read_at", "last_error", "created_at", "updated_at"]

    def validate_project(self, value: Project) -> Project:
        if self.instance is not None and value.pk != self.instance.project_id:
            raise serializers.ValidationError("A data source cannot move to another project.")
        clash = DataSource.objects.filter(project=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError("This project already has a data source; edit that one.")
        return value


class DataSourceViewSet(OwnedModelViewSet):
    queryset = DataSource.objects.select_related("project")
    serializer_class = DataSourceSerializer

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = sources.source_create(**serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        data.pop("project", None)
        serializer.instance = sources.source_update(source=serializer.instance, **data)

    def perform_destroy(self, instance: DataSource) -> None:
        sources.source_delete(source=instance)

    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Read the source now: a new training-data snapshot if its content changed."""
        source = self.get_object()
        try:
            data = sources.source_read(source=source)
        except sources.SourceError as exc:
            raise ApplicationError(str(exc), field="url") from None
        return Response({"training_data": data.pk, "row_count": data.row_count, "fingerprint": data.fingerprint})
