from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from recotem.projects.models import DataSource, Project, TrainingData

XHR = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}


def test_it_uploads_with_xhr_and_points_to_the_preview(
    web: Client, project: Project, small_csv: Path
) -> None:
    upload = SimpleUploadedFile("small.csv", small_csv.read_bytes())
    response = web.post(f"/projects/{project.pk}/data/upload/data/", {"data-file": upload}, **XHR)
    td = TrainingData.objects.get(project=project)
    assert response.status_code == 200
    assert response["X-Upload-Redirect"] == f"/projects/{project.pk}/data/?preview={td.pk}"
    page = web.get(f"/projects/{project.pk}/data/").content.decode()
    assert "small.csv" in page and str(td.row_count) in page


def test_it_shows_the_upload_services_error_inline(
    web: Client, project: Project, tmp_path: Path
) -> None:
    bad = SimpleUploadedFile("bad.csv", b"who,what\n1,2\n")
    response = web.post(f"/projects/{project.pk}/data/upload/data/", {"data-file": bad}, **XHR)
    body = response.content.decode()
    assert response.status_code == 400
    assert "upload-error" in body and "user_id" in body
    assert not TrainingData.objects.exists()


def test_it_rerenders_the_page_with_errors_without_javascript(
    web: Client, project: Project
) -> None:
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


def test_it_creates_changes_and_removes_an_events_source(web: Client, project: Project) -> None:
    page = f"/projects/{project.pk}/data/"
    assert 'id="events-source-form"' in web.get(page).content.decode()
    url = f"{page}source/"
    response = web.post(url, {"source-event_types": "click, purchase", "source-window_days": "90"})
    assert response.status_code == 302, response.content.decode()[:2000]
    source = DataSource.objects.get(project=project)
    assert (source.kind, source.event_types, source.window_days) == (
        "events",
        ["click", "purchase"],
        90,
    )
    body = web.get(page).content.decode()
    assert "click, purchase" in body and "the last 90 days" in body  # summary and form
    # Empty fields: every type but impression, every stored day (the API's nulls).
    assert web.post(url, {"source-event_types": "", "source-window_days": ""}).status_code == 302
    source.refresh_from_db()
    assert (source.event_types, source.window_days) == (None, None)
    assert "every type except impression" in web.get(page).content.decode()
    assert web.post(f"{url}delete/").status_code == 302
    assert not DataSource.objects.filter(project=project).exists()


def test_it_shows_the_events_source_rules_on_their_fields(web: Client, project: Project) -> None:
    url = f"/projects/{project.pk}/data/source/"
    for data, field, message in (
        ({"source-event_types": "Click!"}, "event_types", "is not an event type"),
        ({"source-event_types": "click, click"}, "event_types", "listed once each"),
        ({"source-window_days": "0"}, "window_days", "greater than or equal to 1"),
        ({"source-window_days": "3651"}, "window_days", "less than or equal to 3650"),
    ):
        response = web.post(url, data)
        body = response.content.decode()
        assert response.status_code == 400, data
        assert f'id="id_source-{field}-errors"' in body and message in body, data
    assert not DataSource.objects.exists()


def test_it_leaves_a_sql_source_to_the_api(web: Client, project: Project, bob: Any) -> None:
    DataSource.objects.create(project=project, kind="sql", url="sqlite:///x.db", query="select 1")
    page = web.get(f"/projects/{project.pk}/data/").content.decode()
    assert "SQL query</strong> source" in page and 'id="events-source-form"' not in page
    response = web.post(f"/projects/{project.pk}/data/source/", {"source-event_types": "click"})
    assert response.status_code == 400 and "remove it first" in response.content.decode()
    assert DataSource.objects.get(project=project).kind == "sql"
    other = Project.objects.create(owner=bob, name="b", user_column="u", item_column="i")
    assert web.post(f"/projects/{other.pk}/data/source/", {}).status_code == 404
    assert web.post(f"/projects/{other.pk}/data/source/delete/").status_code == 404
