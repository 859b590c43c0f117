from __future__ import annotations

from django.test import Client

from recotem.projects.models import Project, TrainingData
from recotem.training.models import ModelConfiguration, TrainedModel


def test_it_validates_configuration_parameters(web: Client, project: Project) -> None:
    r = web.post(
        f"/projects/{project.pk}/models/configurations/",
        {
            "config-name": "ials",
            "config-recommender_class_name": "IALSRecommender",
            "config-parameters_json": '{"n_componentz": 3}',
        },
    )
    assert r.status_code == 400 and "unknown parameter" in r.content.decode()
    r = web.post(
        f"/projects/{project.pk}/models/configurations/",
        {
            "config-name": "ials",
            "config-recommender_class_name": "IALSRecommender",
            "config-parameters_json": "[1",
        },
    )
    assert r.status_code == 400 and "Not valid JSON" in r.content.decode()
    r = web.post(
        f"/projects/{project.pk}/models/configurations/",
        {
            "config-name": "ials",
            "config-recommender_class_name": "IALSRecommender",
            "config-parameters_json": '{"n_components": 8}',
        },
    )
    assert r.status_code == 302
    assert ModelConfiguration.objects.get(name="ials").parameters_json == {"n_components": 8}


def test_it_queues_training(web: Client, project: Project, data: TrainingData) -> None:
    config = ModelConfiguration.objects.create(
        project=project, name="c", recommender_class_name="TopPopRecommender"
    )
    r = web.post(
        f"/projects/{project.pk}/models/train/",
        {"train-configuration": config.pk, "train-data": data.pk},
    )
    assert r.status_code == 302
    model = TrainedModel.objects.get()
    body = web.get(f"/projects/{project.pk}/models/").content.decode()
    assert "badge-PENDING" in body and 'hx-trigger="every 3s"' in body and f"#{model.pk}" in body


def test_it_lists_downloads_and_samples_a_trained_model(
    web: Client, project: Project, trained: TrainedModel
) -> None:
    body = web.get(f"/projects/{project.pk}/models/").content.decode()
    assert "badge-COMPLETED" in body and "Download" in body
    r = web.get(f"/projects/{project.pk}/models/{trained.pk}/download/")
    assert r.status_code == 200 and b"".join(r.streaming_content)
    r = web.post(
        f"/projects/{project.pk}/models/sample/",
        {"sample-trained_model": trained.pk, "sample-user_id": "1", "sample-cutoff": 5},
        HTTP_HX_REQUEST="true",
    )
    assert r.status_code == 200 and r.content.decode().count('<td class="num">') == 10
    r = web.post(
        f"/projects/{project.pk}/models/sample/",
        {"sample-trained_model": trained.pk, "sample-user_id": "nobody", "sample-cutoff": 5},
        HTTP_HX_REQUEST="true",
    )
    assert r.status_code == 200 and "is not in the data" in r.content.decode()


def test_it_reads_blank_parameters_as_empty_and_strips_padded_json(
    web: Client, project: Project
) -> None:
    for name, text, expected in (
        ("blank", "  \n ", {}),
        ("padded", ' \n{"n_components": 4}\n ', {"n_components": 4}),
    ):
        r = web.post(
            f"/projects/{project.pk}/models/configurations/",
            {
                "config-name": name,
                "config-recommender_class_name": "IALSRecommender",
                "config-parameters_json": text,
            },
        )
        assert r.status_code == 302, r.content.decode()
        assert ModelConfiguration.objects.get(name=name).parameters_json == expected
