"""The ``events`` data source: stored feedback events become the interactions a run trains on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rest_framework.test import APIClient

from recotem.core.jobs import db_now
from recotem.experiments.models import Event
from recotem.experiments.retention import events_retain
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.selectors import read_training_data
from recotem.projects.sources import SourceError, source_create, source_read
from recotem.retraining import reaper, runs, schedules
from recotem.retraining.runner import run_execute
from recotem.training.models import ModelConfiguration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _events(project: Project, rows: list[tuple[str, str, str, datetime]]) -> None:
    Event.objects.bulk_create(
        Event(project=project, event_type=t, user_id=u, item_id=i, timestamp=ts)
        for t, u, i, ts in rows
    )


def _frame(data: TrainingData) -> pd.DataFrame:
    df = read_training_data(data)
    return df.sort_values(["user_id", "item_id"]).reset_index(drop=True)


def test_it_turns_clicks_and_purchases_into_a_snapshot_without_impressions(
    project: Project,
) -> None:
    _events(
        project,
        [
            ("impression", "u1", "i1", T0),
            ("click", "u1", "i1", T0 + timedelta(seconds=1)),
            ("purchase", "u2", "i3", T0 + timedelta(seconds=2)),
            ("impression", "u2", "i4", T0 + timedelta(seconds=3)),
            ("add_to_cart", "u3", "i2", T0 + timedelta(seconds=4)),
        ],
    )
    source = source_create(project=project, kind="events")
    data = source_read(source=source)
    assert data.data_source_id == source.pk and data.original_name == "events.parquet"
    assert (data.row_count, data.n_users, data.n_items) == (3, 3, 3)
    df = _frame(data)
    assert df["user_id"].tolist() == ["u1", "u2", "u3"]
    assert df["item_id"].tolist() == ["i1", "i3", "i2"]
    # The time column holds unix seconds, as an uploaded log's would.
    assert df["timestamp"].tolist() == [int(T0.timestamp()) + s for s in (1, 2, 4)]


def test_it_stores_a_new_snapshot_only_when_the_events_change(project: Project) -> None:
    _events(project, [("click", f"u{n}", f"i{n % 3}", T0) for n in range(10)])
    source = source_create(project=project, kind="events")
    first = source_read(source=source)
    # An impression is not read by default: the content, and so the snapshot, stay the same.
    _events(project, [("impression", "u1", "i9", T0)])
    assert source_read(source=source).pk == first.pk
    assert TrainingData.objects.count() == 1
    _events(project, [("click", "u1", "i9", T0)])
    second = source_read(source=source)
    assert second.pk != first.pk and second.row_count == first.row_count + 1
    assert second.fingerprint != first.fingerprint


def test_it_reads_only_the_chosen_types_within_the_window(project: Project) -> None:
    now = db_now()
    _events(
        project,
        [
            ("purchase", "u1", "i1", now - timedelta(days=1)),
            ("purchase", "u2", "i2", now - timedelta(days=10)),
            ("click", "u3", "i3", now - timedelta(hours=1)),
            ("impression", "u4", "i4", now - timedelta(hours=1)),
        ],
    )
    source = source_create(
        project=project, kind="events", event_types=["purchase", "impression"], window_days=7
    )
    df = _frame(source_read(source=source))
    assert df["user_id"].tolist() == ["u1", "u4"]


def test_a_source_without_matching_events_fails_and_says_why(project: Project) -> None:
    _events(project, [("impression", "u1", "i1", T0)])
    source = source_create(project=project, kind="events")
    with pytest.raises(SourceError, match="no stored events of type every type but impression"):
        source_read(source=source)
    source.refresh_from_db()
    assert "no stored events" in source.last_error
    assert not TrainingData.objects.exists()


def test_it_stops_at_the_row_limit(project: Project, settings: Any) -> None:
    settings.RECOTEM_MAX_ROWS = 5
    _events(project, [("click", f"u{n}", "i1", T0) for n in range(6)])
    source = source_create(project=project, kind="events")
    with pytest.raises(SourceError, match="RECOTEM_MAX_ROWS") as caught:
        source_read(source=source)
    assert not caught.value.retryable


def test_the_api_creates_an_events_source_and_names_bad_fields(
    alice_client: APIClient, project: Project
) -> None:
    for body, field in [
        ({"event_types": ["Click"]}, "event_types"),
        ({"event_types": []}, "event_types"),
        ({"event_types": "click"}, "event_types"),
        ({"window_days": 0}, "window_days"),
        ({"url": "https://example.org/a.csv"}, "url"),
        ({"query": "SELECT 1"}, "query"),
    ]:
        response = alice_client.post(
            "/api/v1/data_source/", {"project": project.pk, "kind": "events", **body}, format="json"
        )
        assert response.status_code == 400, (body, response.content)
        assert field in response.json(), response.json()
    response = alice_client.post(
        "/api/v1/data_source/",
        {"project": project.pk, "kind": "sql", "url": "sqlite:///x.db", "window_days": 3},
        format="json",
    )
    assert response.status_code == 400 and "window_days" in response.json()

    response = alice_client.post(
        "/api/v1/data_source/",
        {"project": project.pk, "kind": "events", "event_types": ["click"], "window_days": 30},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["url"], body["event_types"], body["window_days"]) == (
        "events",
        "",
        ["click"],
        30,
    )
    _events(project, [("click", "u1", "i1", db_now())])
    tested = alice_client.post(f"/api/v1/data_source/{body['id']}/test/")
    assert tested.status_code == 200, tested.content
    assert tested.json()["row_count"] == 1
    changed = alice_client.patch(
        f"/api/v1/data_source/{body['id']}/", {"event_types": None}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["event_types"] is None


def test_retention_deletes_events_older_than_keep_days(project: Project, settings: Any) -> None:
    now = db_now()
    _events(
        project,
        [
            ("click", "old", "i1", now - timedelta(days=31)),
            ("click", "new", "i1", now - timedelta(days=29)),
        ],
    )
    assert events_retain(keep_days=0) == 0  # 0 keeps everything
    settings.RECOTEM_EVENTS_KEEP_DAYS = 30
    report = reaper.runs_reap()
    assert report["events_deleted"] == 1
    assert list(Event.objects.values_list("user_id", flat=True)) == ["new"]


@pytest.mark.django_db(transaction=True)  # the run's heartbeat thread must see its rows
def test_a_scheduled_run_trains_on_the_clicks_and_skips_while_they_are_unchanged(
    project: Project, ml100k_df: pd.DataFrame
) -> None:
    clicks = ml100k_df[ml100k_df["rating"] >= 4]
    _events(
        project,
        [
            ("click", str(u), str(i), datetime.fromtimestamp(int(t), UTC))
            for u, i, t in clicks[["user_id", "item_id", "timestamp"]].itertuples(index=False)
        ],
    )
    DataSource.objects.create(project=project, kind="events")
    ials = ModelConfiguration.objects.create(
        project=project,
        name="ials",
        recommender_class_name="IALSRecommender",
        parameters_json={"n_components": 32, "alpha0": 0.01, "reg": 0.01, "train_epochs": 5},
    )
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=ials
    )

    def run() -> Any:
        created, queued = runs.run_trigger(schedule=schedule, trigger="manual")
        assert queued
        result = run_execute(run_id=created.pk)
        assert result is not None
        return result

    first = run()
    assert first.status == "COMPLETED", first.error_message
    assert first.data_rows == len(clicks) and first.trained_model is not None
    assert first.trained_model.data_loc_id == first.training_data_id
    assert run().status == "SKIPPED"
    _events(project, [("click", "1", "2", db_now())])
    third = run()
    assert third.status == "COMPLETED" and third.data_rows == len(clicks) + 1
    assert TrainingData.objects.filter(project=project).count() == 2


def test_source_reads_stream_in_chunks(project: Project, monkeypatch: Any, tmp_path: Path) -> None:
    """More events than one chunk: every row arrives once, in several row groups."""
    import pyarrow.parquet as pq

    from recotem.experiments import sources as events_sources

    monkeypatch.setattr(events_sources, "CHUNK_ROWS", 7)
    _events(project, [("click", f"u{n}", f"i{n}", T0) for n in range(30)])
    source = source_create(project=project, kind="events")
    path = events_sources.events_read(source, tmp_path)
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == 30 and parquet.metadata.num_row_groups == 5
