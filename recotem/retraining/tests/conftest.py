from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration
from recotem.tuning.models import EvaluationConfig, SplitConfig


def make_data(project: Project, fingerprint: str = "sha256:aaa", rows: int = 10) -> TrainingData:
    data = TrainingData(
        project=project,
        original_name="d.csv",
        filesize=1,
        row_count=rows,
        n_users=2,
        n_items=2,
        fingerprint=fingerprint,
    )
    data.file.save("d.csv", ContentFile(b"user_id,item_id\n1,2\n"), save=False)
    data.save()
    return data


def make_model(
    project: Project, config: ModelConfiguration, data: TrainingData, **fields: Any
) -> Any:
    from recotem.training.models import TrainedModel

    return TrainedModel.objects.create(
        project=project,
        configuration=config,
        data_loc=data,
        status=fields.pop("status", "COMPLETED"),
        **fields,
    )


@pytest.fixture
def config(project: Project) -> ModelConfiguration:
    return ModelConfiguration.objects.create(
        project=project,
        name="toppop",
        recommender_class_name="TopPopRecommender",
        parameters_json={},
    )


@pytest.fixture
def split(project: Project) -> SplitConfig:
    return SplitConfig.objects.create(project=project)


@pytest.fixture
def evaluation(project: Project) -> EvaluationConfig:
    return EvaluationConfig.objects.create(project=project)


@pytest.fixture
def data(project: Project, tmp_path: Path) -> TrainingData:
    return make_data(project)
