from __future__ import annotations

from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from recotem.projects.models import Project, TrainingData

XHR = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}


def test_it_uploads_with_xhr_and_points_to_the_preview(web: Client, project: Project, small_csv: Path) -> None:
    upload = SimpleUploadedFile("small.csv", small_csv.read_bytes())
    response = web.post(f"/projects/{project.pk}/data/upload/data/", {"data-file": upload}, **XHR)
    td = TrainingData.objects.get(project=project)
    assert response.status_code == 200
    assert response["X-Upload-Redirect"] == f"/projects/{project.pk}/data/?preview={td.pk}"
    page = web.get(f"/projects/{project.pk}/data/").content.decode()
    assert "small.csv" in page and str(td.row_count) in page


def test_it_shows_the_upload_services_error_inline(web: Client, project: Project, tmp_path: Path) -> None:
    bad = SimpleUploadedFile("bad.csv", b"who,what\n1,2\n")
    response = web.post(f"/projects/{project.pk}/data/upload/data/", {"data-file": bad}, **XHR)
    body = response.content.decode()
    assert response.status_code == 400
    assert "upload-error" in body and "user_id" in body
    assert not TrainingData.objects.exists()


def test_it_rerenders_the_page_with_errors_without_javascript(web: Client, project: Project) -> None:
    response = web.post(f"/projects/{project.pk}/data/upload/data/", {})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_it_previews_the_first_rows(web: Client, project: Project, data: TrainingData) -> None:
    body = web.get(f"/projects/{project.pk}/data/preview/data/{data.pk}/").content.decode()
    assert "<th>user_id</th>" in body
    assert body.count("<tr>") == 21  # header + 20 rows


def test_it_uploads_item_metadata(web: Client, project: Project) -> None:
    meta = SimpleUploadedFile("items.csv", b"item_id,title\n1,Toy Story\n2,Heat\n")
    response = web.post(f"/projects/{project.pk}/data/upload/meta/", {"meta-file": meta})
    assert response.status_code == 302
    page = web.get(f"/projects/{project.pk}/data/").content.decode()
    assert "items.csv" in page and "item_id, title" in page


def test_it_404s_for_an_unknown_kind(web: Client, project: Project) -> None:
    assert web.post(f"/projects/{project.pk}/data/upload/other/", {}).status_code == 404
