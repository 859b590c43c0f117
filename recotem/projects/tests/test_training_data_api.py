from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from recotem.projects.models import Project, TrainingData

pytestmark = pytest.mark.django_db


def _upload(
    client: APIClient,
    project: Project,
    name: str,
    content: bytes,
    url: str = "/api/v1/training_data/",
):
    return client.post(
        url, {"project": project.id, "file": SimpleUploadedFile(name, content)}, format="multipart"
    )


def _stored_files(project: Project) -> list[str]:
    from django.conf import settings

    folder = Path(settings.MEDIA_ROOT) / "projects" / str(project.id)
    return [str(p) for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_it_reports_ml100k_counts(
    alice_client: APIClient, project: Project, ml100k_csv: Path
) -> None:
    response = _upload(alice_client, project, "ml100k.csv", ml100k_csv.read_bytes())
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["row_count"], body["n_users"], body["n_items"]) == (100_000, 943, 1_682)
    assert body["filesize"] == ml100k_csv.stat().st_size
    assert body["project"] == project.id
    assert body["fingerprint"].startswith("sha256:")


def test_it_gives_equal_content_the_same_fingerprint_and_any_change_a_new_one(
    alice_client: APIClient, project: Project, ml100k_df: pd.DataFrame
) -> None:
    base = ml100k_df.to_csv(index=False).encode()
    shuffled = ml100k_df.sample(frac=1.0, random_state=1).to_csv(index=False).encode()
    changed_df = ml100k_df.copy()
    changed_df.loc[0, "item_id"] = 1  # same row count, one interaction different
    changed = changed_df.to_csv(index=False).encode()
    prints = [
        _upload(alice_client, project, "d.csv", c).json()["fingerprint"]
        for c in (base, base, shuffled, changed)
    ]
    assert prints[0] == prints[1] == prints[2]
    assert prints[3] != prints[0]


@pytest.mark.parametrize("name", ["d.tsv", "d.csv.gz", "d.parquet", "d.jsonl", "d.tsv.gz"])
def test_it_accepts_every_supported_format(
    alice_client: APIClient, project: Project, small_csv: Path, name: str
) -> None:
    df = pd.read_csv(small_csv)
    buffer = io.BytesIO()
    if ".parquet" in name:
        df.to_parquet(buffer)
    elif ".jsonl" in name:
        buffer.write(df.to_json(orient="records", lines=True).encode())
    else:
        buffer.write(df.to_csv(index=False, sep="\t" if ".tsv" in name else ",").encode())
    content = buffer.getvalue()
    if name.endswith(".gz"):
        content = gzip.compress(content)
    response = _upload(alice_client, project, name, content)
    assert response.status_code == 201, response.content
    assert response.json()["row_count"] == len(df)


def test_it_keeps_ids_as_strings(alice_client: APIClient, project: Project) -> None:
    content = b"user_id,item_id,timestamp\n007,1,1\n7,1,2\n"
    body = _upload(alice_client, project, "d.csv", content).json()
    assert body["n_users"] == 2
    td = TrainingData.objects.get(pk=body["id"])
    preview = alice_client.get(f"/api/v1/training_data/{td.id}/preview/").json()
    assert preview["rows"][0][0] == "007"


@pytest.mark.parametrize(
    ("name", "content", "status", "needle"),
    [
        (
            "d.csv",
            b"user,item_id,timestamp\n1,2,3\n",
            400,
            "Missing column 'user_id'. Columns found: 'user', 'item_id', 'timestamp'",
        ),
        ("d.csv", b"", 400, "empty"),
        ("d.csv", b"user_id,item_id,timestamp\n", 400, "no data rows"),
        ("d.csv", b"user_id,item_id,timestamp\n\xff\xfe\x00\x81,1,2\n", 400, "UTF-8"),
        ("d.csv", b"user_id;item_id;timestamp\n1;2;3\n", 400, "semicolons"),
        ("d.xlsx", b"user_id,item_id\n1,2\n", 400, "Unsupported file extension"),
        ("d.csv", b"user_id,item_id,timestamp\n1,2,not-a-date\n", 400, "not dates"),
        ("d.csv", b"user_id,item_id,timestamp\n,2,3\n", 400, "empty in 1 row"),
        ("d.parquet", b"not parquet at all", 400, "not a valid Parquet"),
        ("d.csv.gz", b"not gzip", 400, "decompress"),
    ],
)
def test_it_rejects_bad_files_clearly_and_leaves_nothing_behind(
    alice_client: APIClient, project: Project, name: str, content: bytes, status: int, needle: str
) -> None:
    response = _upload(alice_client, project, name, content)
    assert response.status_code == status, response.content
    assert needle in " ".join(response.json()["file"])
    assert TrainingData.objects.count() == 0
    assert _stored_files(project) == []


def test_it_refuses_files_over_the_size_limit(
    alice_client: APIClient, project: Project, settings
) -> None:
    settings.RECOTEM_MAX_UPLOAD_MB = 1
    content = b"user_id,item_id,timestamp\n" + b"1,2,3\n" * 200_000
    response = _upload(alice_client, project, "d.csv", content)
    assert response.status_code == 413
    assert "limit is 1 MB" in response.json()["file"][0]
    assert TrainingData.objects.count() == 0


def test_it_requires_the_project_field(alice_client: APIClient) -> None:
    response = alice_client.post(
        "/api/v1/training_data/",
        {"file": SimpleUploadedFile("d.csv", b"a,b\n1,2\n")},
        format="multipart",
    )
    assert response.status_code == 400
    assert "project" in response.json()


def test_it_downloads_the_original_file(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    body = _upload(alice_client, project, "small.csv", small_csv.read_bytes()).json()
    response = alice_client.get(f"/api/v1/training_data/{body['id']}/download/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == small_csv.read_bytes()


def test_it_deletes_the_file_with_the_row(
    alice_client: APIClient, project: Project, small_csv: Path
) -> None:
    body = _upload(alice_client, project, "small.csv", small_csv.read_bytes()).json()
    assert len(_stored_files(project)) == 1
    assert alice_client.delete(f"/api/v1/training_data/{body['id']}/").status_code == 204
    assert _stored_files(project) == []


def test_it_validates_item_metadata_against_the_item_column(
    alice_client: APIClient, project: Project
) -> None:
    ok = _upload(
        alice_client,
        project,
        "items.csv",
        b"item_id,title\n1,Toy Story\n2,Heat\n",
        "/api/v1/item_meta_data/",
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["columns"] == ["item_id", "title"]
    bad = _upload(
        alice_client, project, "items.csv", b"id,title\n1,Toy Story\n", "/api/v1/item_meta_data/"
    )
    assert bad.status_code == 400
    assert "item_id" in bad.json()["file"][0]
