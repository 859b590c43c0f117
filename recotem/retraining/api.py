"""REST API: retraining_schedule (CRUD + trigger), retraining_run (read-only), data_source."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django_filters import rest_framework as filters
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField, SameProjectMixin
from recotem.core.exceptions import ApplicationError
from recotem.deployment.models import DeploymentSlot
from recotem.lib import cron
from recotem.lib.netguard import UrlNotAllowed, check_url_allowed
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.retraining import selectors, services, sources
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.tuning.models import EvaluationConfig, ModelConfiguration, SplitConfig

_OVERDUE_CACHE_KEY = "_recotem_overdue_ids"


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
    n_trials = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    timeout_overall = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    gate_tolerance = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    max_retries = serializers.IntegerField(min_value=0, max_value=10, required=False)
    retry_backoff_seconds = serializers.IntegerField(min_value=1, max_value=services.MAX_BACKOFF_SECONDS, required=False)
    time_limit_seconds = serializers.IntegerField(min_value=10, max_value=7 * 86400, required=False)
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
    def validate_cron_expression(self, value: str) -> str:
        try:
            return cron.validate_cron(value)
        except cron.CronError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_timezone(self, value: str) -> str:
        try:
            return cron.validate_timezone(value)
        except cron.TimezoneError as exc:
            raise serializers.ValidationError(f"{exc}; use an IANA name such as 'Asia/Tokyo' or 'UTC'.") from None

    def validate_tried_algorithms(self, value: list[str]) -> list[str]:
        from recotem.ml.registry import available_recommenders, canonical_name

        known = available_recommenders()
        result = []
        for name in value:
            try:
                result.append(canonical_name(name))
            except (KeyError, ValueError):
                raise serializers.ValidationError(
                    f"Unknown algorithm '{name}'; use one of {', '.join(known)}."
                ) from None
        return result

    def validate_webhook_url(self, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        try:
            check_url_allowed(value, allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
        except UrlNotAllowed as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

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
            return attrs[name] if name in attrs else getattr(self.instance, name, None)

        if current("retune"):
            missing = [n for n in ("split_config", "evaluation_config") if current(n) is None]
            if missing:
                raise serializers.ValidationError({n: ["Required when retune is true."] for n in missing})
        elif current("model_configuration") is None:
            raise serializers.ValidationError(
                {"model_configuration": ["Required unless retune is true."]}
            )
        if current("auto_deploy") and current("deploy_slot") is None:
            project = current("project")
            active = DeploymentSlot.objects.filter(project=project, is_active=True).count()
            if active > 1:
                raise serializers.ValidationError({"deploy_slot": [
                    f"The project has {active} active slots; choose the one auto-deploy should update "
                    "(auto-deploy replaces a slot's model and never adds a slot)."
                ]})
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
