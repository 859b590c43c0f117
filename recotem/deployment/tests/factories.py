"""Rows a slot test needs: a completed trained model (the file need not be a real artifact)."""

from __future__ import annotations

from django.core.files.base import ContentFile

from recotem.core.jobs import JobStatus
from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration, TrainedModel


def completed_model(project: Project, *, status: str = JobStatus.COMPLETED) -> TrainedModel:
    data = TrainingData.objects.create(
        project=project,
        file=ContentFile(b"user_id,item_id\n1,1\n", name="d.csv"),
        original_name="d.csv",
        filesize=20,
        row_count=1,
        n_users=1,
        n_items=1,
        fingerprint="x",
    )
    config = ModelConfiguration.objects.create(
        project=project,
        name=f"cfg-{ModelConfiguration.objects.count()}",
        recommender_class_name="TopPopRecommender",
    )
    model = TrainedModel.objects.create(
        project=project, configuration=config, data_loc=data, status=status
    )
    if status == JobStatus.COMPLETED:
        model.file.save("m.rctm", ContentFile(b"not-a-real-artifact"))
    return model
