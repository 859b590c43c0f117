"""Reads stop at RECOTEM_MAX_UNCOMPRESSED_MB / RECOTEM_MAX_ROWS with a 413 naming the limit;
previews read only the first rows."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from recotem.projects.models import ItemMetaData, Project, TrainingData

pytestmark = pytest.mark.django_db


def gzip_bomb(rows: int, *, header: bytes = b"user_id,item_id,timestamp\n") -> bytes:
    """A small .csv.gz that inflates to `rows` rows of 6 bytes (level 9: ~1000:1)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(header)
        block = b"1,2,3\n" * 100_000
        for _ in range(rows // 100_000):
            gz.write(block)
    return out.getvalue()


def _upload(client: APIClient, project: Project, name: str, content: bytes, kind: str) -> Any:
    return client.post(
        f"/api/v1/{kind}/",
        {"project": project.id, "file": SimpleUploadedFile(name, content)},
        format="multipart",
    )


def test_it_refuses_a_gzip_bomb_at_the_uncompressed_limit(
    alice_client: APIClient, project: Project, settings: Any
) -> None:
    settings.RECOTEM_MAX_UNCOMPRESSED_MB = 4
    settings.RECOTEM_MAX_INFLATE_RATIO = 10_000  # this test is about the other limit
    bomb = gzip_bomb(5_000_000)  # 30 MB of rows in ~100 KB
    assert len(bomb) < 200_000
    response = _upload(alice_client, project, "d.csv.gz", bomb, "training_data")
    assert response.status_code == 413, response.content
    message = response.json()["file"][0]
    assert "RECOTEM_MAX_UNCOMPRESSED_MB" in message and "4 MB" in message
    assert TrainingData.objects.count() == 0


def test_it_refuses_a_small_file_that_inflates_too_much_at_default_limits(
    alice_client: APIClient, project: Project
) -> None:
    bomb = gzip_bomb(17_000_000)  # the reported attack: 17 M rows in ~100 KB
    response = _upload(alice_client, project, "d.csv.gz", bomb, "training_data")
    assert response.status_code == 413, response.content
    assert "RECOTEM_MAX_INFLATE_RATIO" in response.json()["file"][0]
    assert TrainingData.objects.count() == 0


def test_it_accepts_real_compressed_data_at_default_limits(
    alice_client: APIClient, project: Project, ml100k_csv: Path
) -> None:
    content = gzip.compress(ml100k_csv.read_bytes(), compresslevel=9)
    response = _upload(alice_client, project, "ml100k.csv.gz", content, "training_data")
    assert response.status_code == 201, response.content
    assert response.json()["row_count"] == 100_000


def test_it_refuses_more_rows_than_the_row_limit(
    alice_client: APIClient, project: Project, settings: Any
) -> None:
    settings.RECOTEM_MAX_ROWS = 1_000
    content = b"user_id,item_id,timestamp\n" + b"1,2,3\n" * 1_001
    response = _upload(alice_client, project, "d.csv", content, "training_data")
    assert response.status_code == 413
    assert "RECOTEM_MAX_ROWS" in response.json()["file"][0]
    ok = _upload(alice_client, project, "d.csv", content[: -len(b"1,2,3\n")], "training_data")
    assert ok.status_code == 201, ok.content


def test_it_bounds_item_metadata_uploads_too(
    alice_client: APIClient, project: Project, settings: Any
) -> None:
    settings.RECOTEM_MAX_UNCOMPRESSED_MB = 1
    settings.RECOTEM_MAX_INFLATE_RATIO = 10_000
    bomb = gzip_bomb(1_000_000, header=b"item_id,title,x\n")
    response = _upload(alice_client, project, "items.csv.gz", bomb, "item_meta_data")
    assert response.status_code == 413
    assert "RECOTEM_MAX_UNCOMPRESSED_MB" in response.json()["file"][0]
    assert ItemMetaData.objects.count() == 0


def test_it_previews_the_first_rows_without_reading_the_rest(
    alice_client: APIClient, project: Project, settings: Any, tmp_path: Path
) -> None:
    settings.RECOTEM_MAX_INFLATE_RATIO = 10_000
    bomb = gzip_bomb(2_000_000)
    created = _upload(alice_client, project, "d.csv.gz", bomb, "training_data")
    assert created.status_code == 201, created.content
    # Lowered later: the whole file is now far over the limit, its first rows are not.
    settings.RECOTEM_MAX_UNCOMPRESSED_MB = 1
    preview = alice_client.get(f"/api/v1/training_data/{created.json()['id']}/preview/?n=5")
    assert preview.status_code == 200
    body = preview.json()
    assert body["columns"] == ["user_id", "item_id", "timestamp"] and len(body["rows"]) == 5
    web = Client()
    web.force_login(project.owner)
    page = web.get(f"/projects/{project.pk}/data/preview/data/{created.json()['id']}/")
    assert page.status_code == 200 and page.content.decode().count("<tr") == 21


def test_it_refuses_an_oversized_form_body_with_django_s_limit(db: Any) -> None:
    response = Client().post("/login/", {"username": "a", "password": "x" * 3_000_000})
    assert response.status_code == 400  # RequestDataTooBig: DATA_UPLOAD_MAX_MEMORY_SIZE
