"""`/api/v1/experiment/`: A/B experiments between two slots of a project, and their results."""

from __future__ import annotations

from typing import Any

from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedPrimaryKeyRelatedField, owned_queryset
from recotem.core.exceptions import ApplicationError
from recotem.deployment.models import DeploymentSlot
from recotem.experiments import services
from recotem.experiments.models import Experiment
from recotem.experiments.validation import experiment_errors
from recotem.projects.models import Project


class ExperimentSerializer(serializers.ModelSerializer[Experiment]):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    control_slot = OwnedPrimaryKeyRelatedField(queryset=DeploymentSlot.objects.all())
    variant_slot = OwnedPrimaryKeyRelatedField(queryset=DeploymentSlot.objects.all())
    metric = serializers.CharField(default="click")
    alpha = serializers.FloatField(default=0.05)
    min_effect = serializers.FloatField(default=None, allow_null=True)
    promoted_slot = serializers.IntegerField(
        source="promoted_slot_id", read_only=True, allow_null=True
    )
    retraining_run = serializers.IntegerField(
        source="retraining_run_id", read_only=True, allow_null=True
    )

    class Meta:
        model = Experiment
        fields = [
            "id",
            "project",
            "name",
            "control_slot",
            "variant_slot",
            "metric",
            "alpha",
            "min_effect",
            "status",
            "decision",
            "promoted_slot",
            "control_weight",
            "variant_weight",
            "retraining_run",
            "canary_ends_at",
            "started_at",
            "stopped_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "status",
            "decision",
            "control_weight",
            "variant_weight",
            "canary_ends_at",
            "started_at",
            "stopped_at",
            "created_at",
            "updated_at",
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The same rules the service applies, so the API answers every bad field at once.
        experiment_errors(
            name=attrs.get("name"),
            metric=attrs.get("metric"),
            alpha=attrs.get("alpha"),
            min_effect=attrs.get("min_effect"),
        ).raise_if_any()
        project = attrs["project"]
        for name in ("control_slot", "variant_slot"):
            if attrs[name].project_id != project.pk:
                raise serializers.ValidationError({name: ["Must belong to the same project."]})
        return attrs


class PromoteSerializer(serializers.Serializer[Any]):
    slot = serializers.IntegerField(required=False, allow_null=True)


class ExperimentViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Experiment],
):
    """Experiments: create (DRAFT), `start`, `stop`, `promote`, `results`. Another project's
    experiment is a 404; API keys need `read` to look and `write` to change."""

    queryset = Experiment.objects.select_related("control_slot", "variant_slot").all()
    serializer_class = ExperimentSerializer
    filterset_fields = ("project", "status", "control_slot", "variant_slot")

    def get_queryset(self) -> Any:
        return owned_queryset(self.request, super().get_queryset())

    def perform_create(self, serializer: serializers.BaseSerializer[Experiment]) -> None:
        data = serializer.validated_data
        serializer.instance = services.experiment_create(
            project=data["project"],
            name=data["name"],
            control_slot=data["control_slot"],
            variant_slot=data["variant_slot"],
            metric=data["metric"],
            alpha=data["alpha"],
            min_effect=data["min_effect"],
        )

    def perform_destroy(self, instance: Experiment) -> None:
        if instance.status == Experiment.Status.RUNNING:
            raise ApplicationError("Stop the experiment before deleting it.", status=409)
        instance.delete()

    def _answer(self, experiment: Experiment) -> Response:
        return Response(self.get_serializer(experiment).data, status=status.HTTP_200_OK)

    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: Any = None) -> Response:
        return self._answer(services.experiment_start(self.get_object()))

    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: Any = None) -> Response:
        return self._answer(services.experiment_stop(self.get_object()))

    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: Any = None) -> Response:
        experiment = self.get_object()
        body = PromoteSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        slot_id = body.validated_data.get("slot")
        slot = None
        if slot_id is not None:
            if slot_id not in (experiment.control_slot_id, experiment.variant_slot_id):
                raise serializers.ValidationError(
                    {"slot": ["Must be the control or the variant slot of this experiment."]}
                )
            slot = DeploymentSlot.objects.get(pk=slot_id)
        return self._answer(services.experiment_promote(experiment, slot, changed_by="experiment"))

    @action(detail=True, methods=["get"])
    def results(self, request: Request, pk: Any = None) -> Response:
        return Response(services.experiment_results(self.get_object()).as_dict())
