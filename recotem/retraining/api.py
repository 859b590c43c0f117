"""REST API: retraining_schedule (CRUD + trigger), retraining_run (read-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils.cache import add_never_cache_headers
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import (
    OwnedModelViewSet,
    OwnedPrimaryKeyRelatedField,
    SameProjectMixin,
    bounded_int,
    current_value,
    owned_queryset,
)
from recotem.deployment.models import DeploymentSlot
from recotem.projects.models import Project, TrainingData
from recotem.retraining import runs, schedules, selectors, validation
from recotem.retraining.canary import canary_of_runs
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.training.models import ModelConfiguration
from recotem.tuning.models import EvaluationConfig, SplitConfig
from recotem.tuning.validation import N_TRIALS


class RetrainingScheduleSerializer(
    SameProjectMixin, serializers.ModelSerializer[RetrainingSchedule]
):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    training_data = OwnedPrimaryKeyRelatedField(
        queryset=TrainingData.objects.all(), required=False, allow_null=True
    )
    model_configuration = OwnedPrimaryKeyRelatedField(
        queryset=ModelConfiguration.objects.all(), required=False, allow_null=True
    )
    split_config = OwnedPrimaryKeyRelatedField(
        queryset=SplitConfig.objects.all(), required=False, allow_null=True
    )
    evaluation_config = OwnedPrimaryKeyRelatedField(
        queryset=EvaluationConfig.objects.all(), required=False, allow_null=True
    )
    deploy_slot = OwnedPrimaryKeyRelatedField(
        queryset=DeploymentSlot.objects.all(), required=False, allow_null=True
    )
    tried_algorithms = serializers.ListField(child=serializers.CharField(), required=False)
    n_trials = bounded_int(N_TRIALS)
    timeout_overall = bounded_int(validation.TIMEOUT_OVERALL, allow_null=True)
    gate_tolerance = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    max_data_shrink = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    deploy_mode = serializers.ChoiceField(choices=validation.DEPLOY_MODES, required=False)
    canary_percent = bounded_int(validation.CANARY_PERCENT)
    canary_minutes = bounded_int(validation.CANARY_MINUTES)
    canary_metric = serializers.CharField(max_length=32, required=False)
    max_retries = bounded_int(validation.MAX_RETRIES)
    retry_backoff_seconds = bounded_int(validation.RETRY_BACKOFF_SECONDS)
    time_limit_seconds = bounded_int(validation.TIME_LIMIT_SECONDS)
    webhook_url = serializers.CharField(max_length=2048, required=False, allow_blank=True)
    next_run_at = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField()
    cron_description = serializers.SerializerMethodField()
    overdue = serializers.SerializerMethodField()

    same_project_fields = (
        "training_data",
        "model_configuration",
        "split_config",
        "evaluation_config",
        "deploy_slot",
    )

    class Meta:
        model = RetrainingSchedule
        fields = [
            "id",
            "project",
            *validation.SETTINGS,
            "last_run_at",
            "last_run_status",
            "next_run_at",
            "next_runs",
            "cron_description",
            "overdue",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "last_run_at",
            "last_run_status",
            "created_at",
            "updated_at",
        ]

    # --- computed --------------------------------------------------------------------------
    # Computed once per serializer (a list shares one child serializer across its items).
    _next_runs: dict[int, list[datetime]]
    _overdue: set[int] | None = None

    def _runs(self, obj: RetrainingSchedule) -> list[datetime]:
        if not hasattr(self, "_next_runs"):
            self._next_runs = {}
        if obj.pk not in self._next_runs:
            self._next_runs[obj.pk] = selectors.schedule_next_runs(obj, n=5)
        return self._next_runs[obj.pk]

    def get_next_runs(self, obj: RetrainingSchedule) -> list[str]:
        return [d.isoformat() for d in self._runs(obj)]

    def get_next_run_at(self, obj: RetrainingSchedule) -> str | None:
        runs = self._runs(obj)
        return runs[0].isoformat() if runs else None

    def get_cron_description(self, obj: RetrainingSchedule) -> str:
        return selectors.schedule_description(obj)

    def get_overdue(self, obj: RetrainingSchedule) -> bool:
        if self._overdue is None:
            self._overdue = {s.pk for s, _ in selectors.overdue_schedules()}
        return obj.pk in self._overdue

    # --- validation ------------------------------------------------------------------------
    def validate_project(self, value: Project) -> Project:
        if self.instance is not None and value.pk != self.instance.project_id:
            raise serializers.ValidationError("A schedule cannot move to another project.")
        clash = RetrainingSchedule.objects.filter(project=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(
                "This project already has a retraining schedule; edit that one."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)

        cleaned = validation.validate_schedule(
            project=current_value(self, attrs, "project"),
            **{name: current_value(self, attrs, name) for name in validation.FIELDS},
        )
        attrs.update({name: value for name, value in cleaned.items() if name in attrs})
        return attrs


class WebhookSecretSerializer(serializers.Serializer[Any]):
    webhook_secret = serializers.CharField(read_only=True)


class ScheduleCreatedSerializer(RetrainingScheduleSerializer):
    """The create response: the schedule plus its webhook secret, which no GET ever shows."""

    webhook_secret = serializers.CharField(read_only=True)

    class Meta(RetrainingScheduleSerializer.Meta):
        fields = [*RetrainingScheduleSerializer.Meta.fields, "webhook_secret"]


class RetrainingScheduleViewSet(OwnedModelViewSet[RetrainingSchedule]):
    """Schedules. ``webhook_secret`` is write-once: it is in the create response and in the
    response of ``rotate_webhook_secret``, never in a GET."""

    queryset = RetrainingSchedule.objects.select_related("project")
    serializer_class = RetrainingScheduleSerializer
    filterset_fields = ("project", "is_enabled")

    @extend_schema(responses={201: ScheduleCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        body = ScheduleCreatedSerializer(serializer.instance, context=self.get_serializer_context())
        response = Response(body.data, status=status.HTTP_201_CREATED)
        add_never_cache_headers(response)
        return response

    def perform_create(self, serializer: serializers.BaseSerializer[RetrainingSchedule]) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = schedules.schedule_create(project=data.pop("project"), **data)

    def perform_update(self, serializer: serializers.BaseSerializer[RetrainingSchedule]) -> None:
        data = dict(serializer.validated_data)
        data.pop("project", None)
        assert serializer.instance is not None  # an update has its instance
        serializer.instance = schedules.schedule_update(schedule=serializer.instance, **data)

    def perform_destroy(self, instance: RetrainingSchedule) -> None:
        schedules.schedule_delete(schedule=instance)

    @extend_schema(request=None, responses={200: WebhookSecretSerializer})
    @action(detail=True, methods=["post"], serializer_class=WebhookSecretSerializer)
    def rotate_webhook_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new webhook signing secret, shown in this response only; the old one stops now."""
        secret = schedules.schedule_rotate_webhook_secret(schedule=self.get_object())
        response = Response({"webhook_secret": secret})
        add_never_cache_headers(response)
        return response

    @extend_schema(
        request=inline_serializer(
            "RetrainingTrigger", {"force": serializers.BooleanField(required=False)}
        ),
        responses={
            202: inline_serializer(
                "RetrainingTriggered",
                {"run_id": serializers.IntegerField(), "queued": serializers.BooleanField()},
            )
        },
    )
    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        force = request.data.get("force", False) if hasattr(request.data, "get") else False
        if not isinstance(force, bool):
            return Response(
                {"force": ["Must be true or false."]}, status=status.HTTP_400_BAD_REQUEST
            )
        try:
            run, queued = runs.run_trigger(
                schedule=schedule, trigger=RetrainingRun.Trigger.MANUAL, force=force
            )
        except runs.RunConflict as exc:
            return Response(
                {"detail": exc.message, "run_id": exc.run_id}, status=status.HTTP_409_CONFLICT
            )
        # queued=False: the broker is away; the run is recorded and is sent when it answers.
        return Response({"run_id": run.pk, "queued": queued}, status=status.HTTP_202_ACCEPTED)


class CanarySerializer(serializers.Serializer[Any]):
    experiment = serializers.IntegerField()
    status = serializers.CharField()
    decision = serializers.CharField(allow_null=True)
    ends_at = serializers.DateTimeField(allow_null=True)
    promoted = serializers.BooleanField(allow_null=True)


class RetrainingRunSerializer(serializers.ModelSerializer[RetrainingRun]):
    project = serializers.IntegerField(source="schedule.project_id", read_only=True)
    # Derived from the canary's experiment (never stored on the finished run): null unless the
    # run started a canary.
    canary = serializers.SerializerMethodField()
    _canaries: dict[int, dict[str, Any] | None]

    @extend_schema_field(CanarySerializer(allow_null=True))
    def get_canary(self, obj: RetrainingRun) -> dict[str, Any] | None:
        if obj.gate_decision != RetrainingRun.Gate.CANARY:
            return None
        if not hasattr(self, "_canaries"):
            self._canaries = {}
        if obj.pk not in self._canaries:
            # One query for a whole page: the list's runs share this (child) serializer.
            page = getattr(self.parent, "instance", None) if self.parent is not None else None
            ids = [r.pk for r in page] if isinstance(page, list) else []
            ids = ids if obj.pk in ids else [obj.pk]
            found = canary_of_runs(ids)
            self._canaries.update({run_id: found.get(run_id) for run_id in ids})
        canary = self._canaries.get(obj.pk)
        return None if canary is None else CanarySerializer(canary).data

    class Meta:
        model = RetrainingRun
        fields = [
            "id",
            "schedule",
            "project",
            "status",
            "trigger",
            "force",
            "attempt",
            "retry_of",
            "queued_at",
            "fire_at",
            "not_before",
            "started_at",
            "completed_at",
            "heartbeat_at",
            "data_fingerprint",
            "data_rows",
            "training_data",
            "tuning_job",
            "trained_model",
            "deployed_slot",
            "metrics",
            "incumbent_metrics",
            "gate_decision",
            "gate_report",
            "canary",
            "timings",
            "stage",
            "cancel_requested_at",
            "sent_at",
            "skip_reason",
            "error_message",
            "retryable",
            "notification",
            "worker",
        ]
        read_only_fields = fields


class RetrainingRunFilter(filters.FilterSet):  # type: ignore[misc]  # django-filter ships no type hints
    status = filters.MultipleChoiceFilter(choices=RunStatus.choices)
    project = filters.NumberFilter(field_name="schedule__project")

    class Meta:
        model = RetrainingRun
        fields = ["schedule", "status", "trigger", "project"]


class RetrainingRunViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[RetrainingRun]
):
    queryset = RetrainingRun.objects.select_related("schedule").order_by("-id")
    serializer_class = RetrainingRunSerializer
    filterset_class = RetrainingRunFilter

    def get_queryset(self) -> QuerySet[RetrainingRun]:
        return owned_queryset(self.request, super().get_queryset(), "schedule__project")

    @extend_schema(request=None, responses={202: RetrainingRunSerializer})
    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a PENDING (at once) or RUNNING run (at its worker's next step, within seconds).
        409 for a run that already ended. A cancelled run deploys nothing and is not retried."""
        run = runs.run_cancel(run=self.get_object())
        return Response(RetrainingRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
