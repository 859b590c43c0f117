from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from rest_framework.test import APIClient

from recotem.core.artifacts import signing_keys
from recotem.core.exceptions import ApplicationError
from recotem.core.models import TaskLog
from recotem.ml.artifact import ArtifactError
from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create
from recotem.training import services
from recotem.training.models import ModelConfiguration, TrainedModel

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> None:
    services._cache.clear()


def upload(project: Project, csv: Path) -> TrainingData:
    return training_data_create(
        project=project, upload=SimpleUploadedFile(csv.name, csv.read_bytes())
    )


def config(
    project: Project, cls: str = "RP3betaRecommender", **params: object
) -> ModelConfiguration:
    return ModelConfiguration.objects.create(
        project=project,
        name=f"{cls}-{len(params)}",
        recommender_class_name=cls,
        parameters_json=params,
    )


def test_it_trains_signs_and_recommends_unseen_items(project: Project, small_csv: Path) -> None:
    data = upload(project, small_csv)
    model = services.trained_model_create(
        configuration=config(project, top_k=20), data=data, enqueue=False
    )
    assert model.status == "PENDING"
    model = services.trained_model_train(trained_model_id=model.pk)
    assert model.status == "COMPLETED", model.error
    assert model.filesize == model.file.size > 0
    assert model.irspack_version == "0.5.2"
    assert model.training_time is not None and model.training_time > 0
    assert model.data_fingerprint == data.fingerprint
    # Every metric names its cutoff (the default split's holdout is scored at 10).
    assert set(model.test_metrics) >= {"ndcg@10", "map@10", "recall@10", "hit@10", "precision@10"}
    loaded = services.load_trained_model(model)
    assert loaded.class_name == "RP3betaRecommender"
    df = pd.read_csv(small_csv, dtype=str)
    seen = set(df[df.user_id == "1"].item_id)
    result = services.sample_recommendation(trained_model=model, user_id="1", cutoff=5)
    items = [row["item_id"] for row in result["items"]]
    assert result["user_id"] == "1" and items and not set(items) & seen
    assert TaskLog.objects.filter(trained_model_id=model.pk).exists()
    # idempotent: a second delivery of the task does not refit
    assert services.trained_model_train(trained_model_id=model.pk).file.name == model.file.name


def test_it_records_a_failed_fit(project: Project, small_csv: Path) -> None:
    # a negative n_components passes the type check but cannot be fitted
    model = services.trained_model_create(
        configuration=config(project, "IALSRecommender", n_components=-3),
        data=upload(project, small_csv),
        enqueue=False,
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    assert model.status == "FAILED"
    assert model.error
    assert not model.file


def test_it_refuses_tampered_truncated_and_foreign_key_artifacts(
    project: Project, small_csv: Path
) -> None:
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"),
        data=upload(project, small_csv),
        enqueue=False,
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    path = Path(model.file.path)
    good = path.read_bytes()

    tampered = bytearray(good)
    tampered[-10] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(ArtifactError, match="signature"):
        services.load_trained_model(model)
    path.write_bytes(good[:-100])
    with pytest.raises(ApplicationError, match="truncated") as info:
        services.load_trained_model(model)
    assert info.value.status == 409
    path.write_bytes(good)
    with override_settings(SECRET_KEY="another-secret-key-entirely-0123456789"):
        with pytest.raises(ArtifactError, match="unknown key"):
            services.load_trained_model(model)
    assert services.load_trained_model(model).class_name == "TopPopRecommender"


def test_it_loads_models_signed_before_a_key_rotation(
    project: Project, small_csv: Path, settings: object
) -> None:
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"),
        data=upload(project, small_csv),
        enqueue=False,
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    old = settings.SECRET_KEY  # type: ignore[attr-defined]
    old_id, _ = signing_keys()
    settings.SECRET_KEY = "rotated-secret-key-0123456789-abcdefghijklmnop"  # type: ignore[attr-defined]
    settings.SECRET_KEY_FALLBACKS = [old]  # type: ignore[attr-defined]
    new_id, keys = signing_keys()
    assert new_id != old_id and set(keys) == {new_id, old_id}
    services._cache_forget(model.pk)
    assert services.load_trained_model(model).class_name == "TopPopRecommender"


def test_it_refuses_recommendations_before_completion_and_for_unknown_users(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    data = upload(project, small_csv)
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"), data=data, enqueue=False
    )
    url = f"/api/v1/trained_model/{model.pk}/"
    r = alice_client.get(url + "sample_recommendation/?user_id=1")
    assert r.status_code == 400 and "PENDING" in r.json()["status"][0]
    assert alice_client.get(url + "download/").status_code == 400
    services.trained_model_train(trained_model_id=model.pk)
    r = alice_client.get(url + "sample_recommendation/?user_id=nobody&cutoff=3")
    assert r.status_code == 404 and "nobody" in r.json()["user_id"][0]
    assert alice_client.get(url + "sample_recommendation/").status_code == 400
    assert alice_client.get(url + "sample_recommendation/?user_id=1&cutoff=0").status_code == 400
    r = alice_client.get(url + "sample_recommendation/?user_id=1&cutoff=3")
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    download = alice_client.get(url + "download/")
    assert download.status_code == 200
    assert (
        b"".join(download.streaming_content)
        == Path(TrainedModel.objects.get(pk=model.pk).file.path).read_bytes()
    )


def test_a_duplicate_message_does_not_retrain_a_running_model(
    project: Project, small_csv: Path
) -> None:
    data = upload(project, small_csv)
    model = services.trained_model_create(configuration=config(project), data=data, enqueue=False)
    # Another worker holds the row (RUNNING): a redelivered message must not fit it again.
    TrainedModel.objects.filter(pk=model.pk).update(status="RUNNING")
    again = services.trained_model_train(trained_model_id=model.pk)
    assert again.status == "RUNNING" and not again.file
    assert not TaskLog.objects.filter(trained_model_id=model.pk).exists()


def test_a_model_deleted_while_training_leaves_no_artifact_behind(
    project: Project, small_csv: Path, settings: object
) -> None:
    from django.db.models.signals import post_save

    data = upload(project, small_csv)
    model = services.trained_model_create(configuration=config(project), data=data, enqueue=False)

    def delete_mid_training(
        sender: object, instance: TaskLog, created: bool, **kwargs: object
    ) -> None:
        if created and instance.trained_model_id == model.pk and " on data #" in instance.contents:
            TrainedModel.objects.filter(pk=model.pk).delete()  # a user deletes it during the fit

    post_save.connect(delete_mid_training, sender=TaskLog, weak=False)
    try:
        result = services.trained_model_train(trained_model_id=model.pk)
    finally:
        post_save.disconnect(delete_mid_training, sender=TaskLog)
    assert result.status == "FAILED" and "deleted" in result.error
    assert not TrainedModel.objects.filter(pk=model.pk).exists()
    models_dir = Path(settings.MEDIA_ROOT) / f"projects/{project.pk}/models"  # type: ignore[attr-defined]
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_a_model_the_reaper_failed_mid_training_stays_failed_without_artifact(
    project: Project, small_csv: Path
) -> None:
    from django.db.models.signals import post_save

    data = upload(project, small_csv)
    model = services.trained_model_create(configuration=config(project), data=data, enqueue=False)

    def reap(sender: object, instance: TaskLog, created: bool, **kwargs: object) -> None:
        if created and instance.trained_model_id == model.pk and " on data #" in instance.contents:
            TrainedModel.objects.filter(pk=model.pk).update(
                status="FAILED", error="worker lost (no heartbeat for 90 s)"
            )

    post_save.connect(reap, sender=TaskLog, weak=False)
    try:
        result = services.trained_model_train(trained_model_id=model.pk)
    finally:
        post_save.disconnect(reap, sender=TaskLog)
    assert result.status == "FAILED" and result.error.startswith("worker lost") and not result.file
