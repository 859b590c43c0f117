"""`POST /inference/events`: validation naming index and field, atomic batches, idempotency,
attribution by the signed request id, scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.utils import timezone

from recotem.accounts.models import ApiKey
from recotem.accounts.services import api_key_create
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create
from recotem.experiments.models import Event
from recotem.experiments.services import experiment_create, experiment_start
from recotem.inference.testing import build_world
from recotem.lib.signing import RequestTokens, ServedBy, request_token_keys
from recotem.projects.models import Project
from recotem.projects.services import project_delete
from recotem.training.models import TrainedModel

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/inference/events"


def _event(**extra: Any) -> dict[str, Any]:
    return {"type": "click", "user_id": "3", "item_id": "7", **extra}


def test_it_stores_a_batch_and_answers_202(client: Any, world: dict[str, Any]) -> None:
    events = [
        _event(type="impression", timestamp="2026-12-01T10:00:00Z"),
        _event(timestamp=1_764_583_200, value=2.5),
        _event(type="purchase", user_id=42, item_id="x" * 256),
        _event(type="add_to_cart", event_id="e-1"),
    ]
    response = client.post(URL, {"events": events}, key=world["key"])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 4, "duplicates": 0}
    rows = list(Event.objects.order_by("id"))
    assert [r.event_type for r in rows] == ["impression", "click", "purchase", "add_to_cart"]
    assert all(r.project_id == world["project_id"] for r in rows)
    assert rows[0].timestamp == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert rows[1].timestamp == datetime.fromtimestamp(1_764_583_200, UTC) and rows[1].value == 2.5
    assert rows[2].user_id == "42"
    assert abs((rows[3].timestamp - timezone.now()).total_seconds()) < 60  # default: now
    assert rows[3].event_id == "e-1" and rows[0].slot_id is None and rows[0].arm == ""


def test_it_stores_a_retried_batch_once(client: Any, world: dict[str, Any]) -> None:
    batch = {"events": [_event(event_id=f"e{i}") for i in range(5)] + [_event()]}
    assert client.post(URL, batch, key=world["key"]).json() == {"accepted": 6, "duplicates": 0}
    again = client.post(URL, batch, key=world["key"]).json()
    # Events without an event_id cannot be recognised, so the retry stores that one again.
    assert again == {"accepted": 1, "duplicates": 5}
    assert Event.objects.count() == 7


def test_it_counts_duplicates_inside_one_batch(client: Any, world: dict[str, Any]) -> None:
    batch = {"events": [_event(event_id="same"), _event(event_id="same"), _event(event_id="b")]}
    assert client.post(URL, batch, key=world["key"]).json() == {"accepted": 2, "duplicates": 1}
    assert Event.objects.filter(event_id="same").count() == 1


def test_it_keeps_event_ids_apart_per_project(
    client: Any, world: dict[str, Any], small_csv: Any
) -> None:
    other = build_world(csv=small_csv, models=[("TopPop", {})], weights=[100], username="bob")
    batch = {"events": [_event(event_id="e1")]}
    assert client.post(URL, batch, key=world["key"]).json()["accepted"] == 1
    assert client.post(URL, batch, key=other["key"]).json()["accepted"] == 1


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "3", "item_id": "7"}, "events[1].type"),
        (_event(type="Click"), "events[1].type"),
        (_event(type="a" * 33), "events[1].type"),
        (_event(type=7), "events[1].type"),
        (_event(user_id=""), "events[1].user_id"),
        (_event(user_id=None), "events[1].user_id"),
        (_event(item_id="x" * 257), "events[1].item_id"),
        (_event(item_id=["7"]), "events[1].item_id"),
        (_event(event_id="e" * 257), "events[1].event_id"),
        (_event(timestamp="yesterday"), "events[1].timestamp"),
        (_event(timestamp=-1), "events[1].timestamp"),
        (_event(timestamp=1e20), "events[1].timestamp"),
        (_event(timestamp=True), "events[1].timestamp"),
        (_event(timestamp="9999-12-31T23:59:59-01:00"), "events[1].timestamp"),
        (_event(timestamp="0001-01-01T00:00:00+01:00"), "events[1].timestamp"),
        (_event(timestamp="1969-12-31T23:59:59Z"), "events[1].timestamp"),
        (_event(user_id="a\x00b"), "events[1].user_id"),
        (_event(event_id="e\x00"), "events[1].event_id"),
        (_event(value="high"), "events[1].value"),
        (_event(request_id="r1.forged"), "events[1].request_id"),
        (_event(request_id=12), "events[1].request_id"),
        (_event(colour="red"), "events[1]"),
        ("click", "events[1]"),
    ],
)
def test_it_refuses_a_bad_event_naming_index_and_field_and_stores_nothing(
    client: Any, world: dict[str, Any], event: Any, field: str
) -> None:
    response = client.post(URL, {"events": [_event(), event, _event()]}, key=world["key"])
    assert response.status_code == 422, response.text
    assert field in response.json(), response.json()
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "body", [{"events": []}, {"events": [_event()] * 1001}, {"events": "x"}, {}, {"event": []}]
)
def test_it_refuses_a_batch_of_the_wrong_size_or_shape(
    client: Any, world: dict[str, Any], body: Any
) -> None:
    response = client.post(URL, body, key=world["key"])
    assert response.status_code == 422, response.text
    assert not Event.objects.exists()


def test_it_accepts_a_full_batch_of_1000(client: Any, world: dict[str, Any]) -> None:
    batch = {"events": [_event(event_id=str(i)) for i in range(1000)]}
    assert client.post(URL, batch, key=world["key"]).json() == {"accepted": 1000, "duplicates": 0}


def test_it_attributes_events_by_the_request_id_of_the_prediction(
    client: Any, world: dict[str, Any]
) -> None:
    project = Project.objects.get(pk=world["project_id"])
    control = DeploymentSlot.objects.get(pk=world["slot_ids"][0])
    variant = slot_create(
        project=project,
        name="b",
        trained_model=TrainedModel.objects.get(pk=world["model_ids"][1]),
        weight=100,
    )
    DeploymentSlot.objects.filter(pk=control.pk).update(weight=100)
    experiment = experiment_start(
        experiment_create(project=project, name="e", control_slot=control, variant_slot=variant)
    )
    client.poll()
    seen: dict[str, tuple[int, int]] = {}
    for user in range(1, 31):
        body = client.post(
            f"/inference/predict/project/{project.pk}", {"user_id": str(user)}, key=world["key"]
        ).json()
        seen[body["request_id"]] = (body["slot_id"], body["model_id"])
        event = {"type": "impression", "user_id": str(user), "item_id": "1"}
        sent = client.post(
            URL, {"events": [{**event, "request_id": body["request_id"]}]}, key=world["key"]
        )
        assert sent.status_code == 202, sent.text
    rows = list(Event.objects.all())
    assert len(rows) == 30
    arms = {control.pk: "control", variant.pk: "variant"}
    for row in rows:
        assert row.experiment_id == experiment.pk
        assert row.arm == arms[row.slot_id]
    assert {(r.slot_id, r.model_id) for r in rows} <= set(seen.values())
    assert {r.arm for r in rows} == {"control", "variant"}  # 30 users reach both halves
    direct = client.post(
        f"/inference/predict/{world['model_ids'][0]}", {"user_id": "3"}, key=world["key"]
    ).json()
    client.post(URL, {"events": [_event(request_id=direct["request_id"])]}, key=world["key"])
    last = Event.objects.order_by("-id").first()
    assert last is not None and last.model_id == world["model_ids"][0]
    assert last.slot_id is None and last.experiment_id is None and last.arm == ""


def test_it_refuses_request_ids_that_were_edited_or_belong_to_another_project(
    client: Any, world: dict[str, Any], settings: Any
) -> None:
    body = client.post(
        f"/inference/predict/{world['model_ids'][0]}", {"user_id": "3"}, key=world["key"]
    ).json()
    token = body["request_id"]
    parts = token.split(".")
    edited = ".".join([*parts[:3], "ffff", *parts[4:]])  # another model, same MAC
    tokens = RequestTokens(request_token_keys(settings.SECRET_KEY))
    foreign = tokens.sign(ServedBy(world["project_id"] + 1000, 1, 1, 0, ""))
    for bad, message in ((edited, "issued by this server"), (foreign, "another project")):
        response = client.post(URL, {"events": [_event(request_id=bad)]}, key=world["key"])
        assert response.status_code == 422
        assert message in response.json()["events[0].request_id"][0]
    assert not Event.objects.exists()


def test_it_needs_the_events_or_predict_scope(client: Any, world: dict[str, Any]) -> None:
    project = Project.objects.get(pk=world["project_id"])
    _, events_key = api_key_create(project=project, name="ev", scopes=["events"])
    _, read_key = api_key_create(project=project, name="r", scopes=["read"])
    batch = {"events": [_event()]}
    assert client.post(URL, batch, key=events_key).status_code == 202
    assert client.post(URL, batch, key=read_key).status_code == 403
    assert client.post(URL, batch).status_code == 401
    assert client.get(URL, key=events_key).status_code == 405
    assert client.post(URL, content=b"{not json", key=events_key).status_code == 422


def test_it_answers_401_never_500_for_a_key_whose_project_was_deleted(
    client: Any, world: dict[str, Any]
) -> None:
    project = Project.objects.get(pk=world["project_id"])
    batch = {"events": [_event()]}
    # The first answers put the key (and the project's route) into the process's caches.
    assert client.post(URL, batch, key=world["key"]).status_code == 202
    predict = f"/inference/predict/project/{project.pk}"
    assert client.post(predict, {"user_id": "3"}, key=world["key"]).status_code == 200
    project_delete(project=project)
    assert not ApiKey.objects.exists()  # the key went with its project (cascade)
    # Before the next routing poll the process still trusts its cached key: the insert then
    # finds no project, and the key is refused (and forgotten) like any unknown key.
    response = client.post(URL, batch, key=world["key"])
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Invalid, expired or revoked API key."}
    assert client.post(predict, {"user_id": "3"}, key=world["key"]).status_code == 401
    assert not Event.objects.exists()
    client.poll()
    for path, body in (
        (URL, batch),
        (predict, {"user_id": "3"}),
        (f"/inference/predict/{world['model_ids'][0]}", {"user_id": "3"}),
    ):
        assert client.post(path, body, key=world["key"]).status_code == 401, path


def test_it_stops_a_cached_key_at_the_next_poll_after_its_project_is_deleted(
    client: Any, world: dict[str, Any]
) -> None:
    predict = f"/inference/predict/{world['model_ids'][0]}"
    assert client.post(predict, {"user_id": "3"}, key=world["key"]).status_code == 200
    project_delete(project=Project.objects.get(pk=world["project_id"]))
    client.poll()  # the cascade deleted the key, which bumped the routing version
    assert client.post(predict, {"user_id": "3"}, key=world["key"]).status_code == 401
    assert client.post(URL, {"events": [_event()]}, key=world["key"]).status_code == 401
