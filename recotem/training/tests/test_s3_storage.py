"""RECOTEM_STORAGE=s3 against a real S3 API server (moto_server), not a mock of boto3.

Uploads, source snapshots and artifacts go to the bucket under the prefix; reads go through the
machine's bounded cache; an artifact tampered with in the bucket or in the cache is refused; a
missing or unreachable bucket is one clear line at start-up.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from recotem.core.files import file_cache, local_file, read_stored
from recotem.core.storagecheck import storage_problem
from recotem.projects.models import Project, TrainingData
from recotem.projects.sources import source_create, source_read
from recotem.testing.processes import (
    S3_TEST_CREDENTIALS,
    celery,
    free_port,
    process_env,
    recotem,
    s3_client,
    s3_keys,
)
from recotem.training import services
from recotem.training.tests.test_services import config, upload

pytestmark = pytest.mark.django_db


def _no_local_media(settings: Any) -> None:
    media = Path(settings.MEDIA_ROOT)
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_it_saves_opens_and_deletes_through_the_bucket(s3_storage: dict[str, Any]) -> None:
    name = default_storage.save("probe/hello.txt", ContentFile(b"hello s3"))
    key = f"{s3_storage['prefix']}/{name}"
    assert key in s3_keys(s3_storage["endpoint"], s3_storage["bucket"])
    with default_storage.open(name, "rb") as fh:
        assert fh.read() == b"hello s3"
    # Names are never overwritten: a second save of the same name gets a new one.
    again = default_storage.save("probe/hello.txt", ContentFile(b"other"))
    assert again != name and read_stored(name) == b"hello s3"
    default_storage.delete(name)
    assert key not in s3_keys(s3_storage["endpoint"], s3_storage["bucket"])
    # No public link: any URL is signed and expires.
    url = default_storage.url(again)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url


def test_a_deleted_name_is_never_reused_so_no_machine_serves_a_stale_copy(
    s3_storage: dict[str, Any], settings: Any, tmp_path: Path
) -> None:
    first = default_storage.save("probe/ratings.csv", ContentFile(b"old bytes"))
    assert read_stored(first) == b"old bytes"  # this machine now caches it
    other_machine = tmp_path / "other-cache"
    settings.RECOTEM_CACHE_DIR = str(other_machine)
    assert read_stored(first) == b"old bytes"  # ...and so does a second one
    default_storage.delete(first)  # clears only the deleting machine's copy
    second = default_storage.save("probe/ratings.csv", ContentFile(b"corrected bytes"))
    assert second != first
    assert read_stored(second) == b"corrected bytes"


def test_uploads_and_artifacts_live_in_the_bucket_and_load_from_the_cache(
    s3_storage: dict[str, Any], project: Project, small_csv: Path, settings: Any
) -> None:
    data = upload(project, small_csv)
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"), data=data, enqueue=False
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    keys = s3_keys(s3_storage["endpoint"], s3_storage["bucket"])
    assert f"{s3_storage['prefix']}/{data.file.name}" in keys
    assert f"{s3_storage['prefix']}/{model.file.name}" in keys
    _no_local_media(settings)
    # Training read the upload through the cache; loading the model fetches its artifact too.
    services._cache_forget(model.pk)
    assert services.load_trained_model(model).class_name == "TopPopRecommender"
    cache = file_cache()
    assert len(cache.entries()) == 2
    with local_file(data.file) as path:
        assert path.parent == s3_storage["cache"] and path.read_bytes() == small_csv.read_bytes()
    # Deleting the model deletes the object and this machine's copy.
    services.trained_model_delete(trained_model=model)
    assert f"{s3_storage['prefix']}/{model.file.name}" not in s3_keys(
        s3_storage["endpoint"], s3_storage["bucket"]
    )
    assert len(cache.entries()) == 1


def test_an_api_upload_goes_to_the_bucket_and_downloads_back(
    s3_storage: dict[str, Any], alice_client: Any, project: Project, small_csv: Path, settings: Any
) -> None:
    with open(small_csv, "rb") as fh:
        response = alice_client.post(
            "/api/v1/training_data/", {"project": project.pk, "file": fh}, format="multipart"
        )
    assert response.status_code == 201, response.content
    data = TrainingData.objects.get(pk=response.json()["id"])
    assert f"{s3_storage['prefix']}/{data.file.name}" in s3_keys(
        s3_storage["endpoint"], s3_storage["bucket"]
    )
    _no_local_media(settings)
    download = alice_client.get(f"/api/v1/training_data/{data.pk}/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == small_csv.read_bytes()
    preview = alice_client.get(f"/api/v1/training_data/{data.pk}/preview/?n=3")
    assert preview.status_code == 200, preview.content


def test_a_data_source_snapshot_is_stored_in_the_bucket(
    s3_storage: dict[str, Any], project: Project, tmp_path: Path, settings: Any
) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = [f"sqlite:{folder}"]
    with sqlite3.connect(folder / "shop.db") as conn:
        pd.DataFrame(
            {"user_id": [1, 1, 2, 3], "item_id": [5, 6, 5, 7], "timestamp": [1, 2, 3, 4]}
        ).to_sql("events", conn, index=False)
    source = source_create(
        project=project,
        kind="sql",
        url=f"sqlite:///{folder / 'shop.db'}",
        query="SELECT user_id, item_id, timestamp FROM events",
    )
    snapshot = source_read(source=source)
    assert isinstance(snapshot, TrainingData) and snapshot.row_count == 4
    assert f"{s3_storage['prefix']}/{snapshot.file.name}" in s3_keys(
        s3_storage["endpoint"], s3_storage["bucket"]
    )
    _no_local_media(settings)


def test_the_cache_stays_within_its_bound(s3_storage: dict[str, Any], settings: Any) -> None:
    settings.RECOTEM_CACHE_MB = 1
    names = [
        default_storage.save(f"blob/{n}.bin", ContentFile(bytes([n]) * 400_000)) for n in range(4)
    ]
    for n, name in enumerate(names):
        assert read_stored(name) == bytes([n]) * 400_000
    cache = file_cache()
    assert cache.size() <= 1024 * 1024
    # The least recently used went first; the newest two are cached.
    cached = {path.name for path, _ in cache.entries()}
    assert cache.path_for(_key(names[3])).name in cached
    assert cache.path_for(_key(names[0])).name not in cached


def _key(name: str) -> str:
    from recotem.core.files import _cache_key

    return _cache_key(default_storage, name)


def test_an_artifact_tampered_in_the_bucket_is_refused(
    s3_storage: dict[str, Any], project: Project, small_csv: Path
) -> None:
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"),
        data=upload(project, small_csv),
        enqueue=False,
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    client = s3_client(s3_storage["endpoint"])
    key = f"{s3_storage['prefix']}/{model.file.name}"
    payload = bytearray(client.get_object(Bucket=s3_storage["bucket"], Key=key)["Body"].read())
    payload[-10] ^= 0xFF
    client.put_object(Bucket=s3_storage["bucket"], Key=key, Body=bytes(payload))
    services._cache_forget(model.pk)
    with pytest.raises(services.ArtifactRefused):
        services.load_trained_model(model)


def test_an_artifact_tampered_in_the_cache_is_refused(
    s3_storage: dict[str, Any], project: Project, small_csv: Path
) -> None:
    model = services.trained_model_create(
        configuration=config(project, "TopPopRecommender"),
        data=upload(project, small_csv),
        enqueue=False,
    )
    model = services.trained_model_train(trained_model_id=model.pk)
    services._cache_forget(model.pk)
    services.load_trained_model(model)  # now in this machine's cache
    cached = file_cache().path_for(_key(str(model.file.name)))
    payload = bytearray(cached.read_bytes())
    payload[-10] ^= 0xFF
    cached.write_bytes(bytes(payload))
    services._cache_forget(model.pk)
    with pytest.raises(services.ArtifactRefused):
        services.load_trained_model(model)


def test_a_missing_bucket_is_named_at_start(s3_storage: dict[str, Any], settings: Any) -> None:
    assert storage_problem() is None
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            **settings.STORAGES["default"],
            "OPTIONS": {**settings.STORAGES["default"]["OPTIONS"], "bucket_name": "no-such-bucket"},
        },
    }
    problem = storage_problem()
    assert problem == f"S3 bucket 'no-such-bucket' at {s3_storage['endpoint']} does not exist"
    # `recotem manage check` (and every management command) reports it as a system check error.
    with pytest.raises(SystemCheckError, match=r"recotem\.E001.*no-such-bucket"):
        call_command("check")


def test_an_unreachable_endpoint_stops_each_process_with_one_line(
    s3_storage: dict[str, Any], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = process_env(
        tmp_path / "node",
        **S3_TEST_CREDENTIALS,
        RECOTEM_STORAGE="s3",
        RECOTEM_S3_BUCKET=s3_storage["bucket"],
        RECOTEM_S3_ENDPOINT_URL=dead,
        SECRET_KEY="s3-test-" + "k" * 40,
    )
    expected = f"recotem: S3 bucket '{s3_storage['bucket']}' at {dead} is unreachable"
    for command in (("worker",), ("inference", "--port", str(free_port()))):
        done = subprocess.run(
            recotem(*command), env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    # Started as plain Celery (as compose.yaml does), the worker refuses to start too.
    done = subprocess.run(
        celery("worker", "-l", "WARNING"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
