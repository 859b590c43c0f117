from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from recotem.accounts.models import ApiKey
from recotem.accounts.services import api_key_create, api_key_revoke
from recotem.core.artifacts import request_tokens
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create, slot_set_model
from recotem.inference.testing import build_world, corrupt
from recotem.projects.models import Project
from recotem.training.models import TrainedModel
from recotem.training.services import load_trained_model

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_predicts_for_a_known_user(client: Any, world: dict[str, Any]) -> None:
    model_id = world["model_ids"][0]
    response = client.post(
        f"/inference/predict/{model_id}", {"user_id": "3", "cutoff": 5}, key=world["key"]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = load_trained_model(TrainedModel.objects.get(pk=model_id)).recommend("3", cutoff=5)
    assert [(i["item_id"], pytest.approx(i["score"])) for i in body["items"]] == [
        (i, pytest.approx(s)) for i, s in expected
    ]
    assert body["model_id"] == model_id
    # The request id is a signed token naming what served the answer (attribution of events).
    served_by = request_tokens().verify(body["request_id"])
    assert served_by is not None
    assert (served_by.project_id, served_by.model_id, served_by.slot_id) == (
        world["project_id"],
        model_id,
        0,
    )
    again = client.post(
        f"/inference/predict/{model_id}", {"user_id": 3, "cutoff": 5}, key=world["key"]
    ).json()
    assert again["items"] == body["items"] and again["request_id"] != body["request_id"]
    assert (
        client.post(f"/predict/{model_id}", {"user_id": "3"}, key=world["key"]).status_code == 200
    )


def test_it_filters_items_and_adds_metadata(client: Any, world: dict[str, Any]) -> None:
    model_id = world["model_ids"][0]
    full = client.post(
        f"/inference/predict/{model_id}", {"user_id": "3", "cutoff": 20}, key=world["key"]
    ).json()["items"]
    first = full[0]["item_id"]
    allowed = [i["item_id"] for i in full[2:5]]
    body = client.post(
        f"/inference/predict/{model_id}",
        {
            "user_id": "3",
            "cutoff": 2,
            "allowed_item_ids": allowed,
            "excluded_item_ids": [allowed[0]],
            "metadata_fields": ["title"],
        },
        key=world["key"],
    ).json()
    assert [i["item_id"] for i in body["items"]] == allowed[1:3]
    assert body["items"][0]["metadata"] == {"title": f"Movie {allowed[1]}"}
    assert first not in [i["item_id"] for i in body["items"]]
    bad = client.post(
        f"/inference/predict/{model_id}",
        {"user_id": "3", "metadata_fields": ["nope"]},
        key=world["key"],
    )
    assert bad.status_code == 422 and "metadata_fields" in bad.json()


def test_it_answers_batches_with_empty_lists_for_unknown_users(
    client: Any, world: dict[str, Any]
) -> None:
    model_id = world["model_ids"][0]
    body = client.post(
        f"/inference/predict/{model_id}/batch",
        {"user_ids": ["1", "ghost", 2], "cutoff": 3},
        key=world["key"],
    ).json()
    assert [r["user_id"] for r in body["results"]] == ["1", "ghost", "2"]
    assert [len(r["items"]) for r in body["results"]] == [3, 0, 3]


def test_it_recommends_for_a_profile_excluding_seen_items(
    client: Any, world: dict[str, Any]
) -> None:
    path = f"/inference/predict/{world['model_ids'][0]}/profile"
    body = client.post(
        path,
        {"item_ids": ["1", "2", "3"], "cutoff": 10, "metadata_fields": ["genre"]},
        key=world["key"],
    ).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 10 and not {"1", "2", "3"} & set(ids)
    assert body["items"][0]["metadata"]["genre"].startswith("g")
    with_seen = client.post(
        path, {"item_ids": ["1", "2", "3"], "cutoff": 20, "exclude_seen": False}, key=world["key"]
    ).json()
    assert len(with_seen["items"]) == 20
    project = client.post(
        f"/inference/predict/project/{world['project_id']}/profile",
        {"item_ids": ["4"]},
        key=world["key"],
    )
    assert project.status_code == 200 and project.json()["slot_name"] == "slot-0"
    assert client.post(path, {"item_ids": "1"}, key=world["key"]).status_code == 422


def test_it_routes_project_requests_to_the_active_slot(client: Any, world: dict[str, Any]) -> None:
    body = client.post(
        f"/inference/predict/project/{world['project_id']}",
        {"user_id": "4", "cutoff": 3},
        key=world["key"],
    ).json()
    assert len(body["items"]) == 3
    assert body["model_id"] == world["model_ids"][0]
    assert body["slot_id"] == world["slot_ids"][0] and body["slot_name"] == "slot-0"
    batch = client.post(
        f"/inference/predict/project/{world['project_id']}/batch",
        {"user_ids": ["4"], "cutoff": 3},
        key=world["key"],
    )
    assert batch.json()["results"][0]["items"] == body["items"]


def test_it_splits_users_by_weight_and_keeps_each_on_one_slot(
    client: Any, world: dict[str, Any]
) -> None:
    project = Project.objects.get(pk=world["project_id"])
    DeploymentSlot.objects.filter(pk=world["slot_ids"][0]).update(
        weight=30
    )  # bulk update: no signal...
    slot_create(
        project=project,
        name="b",
        trained_model=TrainedModel.objects.get(pk=world["model_ids"][1]),
        weight=70,
    )
    client.poll()  # ...but the second slot's signal bumps the version and the reload reads both
    path = f"/inference/predict/project/{world['project_id']}"
    responses = client.many(
        path, [{"user_id": str(u % 30 + 1)} for u in range(600)], key=world["key"]
    )
    assert {r.status_code for r in responses} == {200}
    slot_of: dict[str, set[str]] = {}
    for u, r in zip(range(600), responses, strict=True):
        slot_of.setdefault(str(u % 30 + 1), set()).add(r.json()["slot_name"])
    assert all(len(names) == 1 for names in slot_of.values()), slot_of  # sticky
    assert {n for names in slot_of.values() for n in names} == {"slot-0", "b"}
    # The shares over distinct users, through the process's own routing table.
    route = client.app.routing[world["project_id"]]
    picks = [route.pick(f"user-{i}").name for i in range(10_000)]
    share = picks.count("slot-0") / len(picks)
    assert abs(share - 0.30) <= 0.02, share


def test_it_reassigns_nobody_while_the_weights_stay_the_same(
    client: Any, world: dict[str, Any]
) -> None:
    project = Project.objects.get(pk=world["project_id"])
    slot_create(
        project=project,
        name="b",
        trained_model=TrainedModel.objects.get(pk=world["model_ids"][1]),
        weight=100,
    )
    client.poll()
    before = [client.app.routing[project.pk].pick(f"u{i}").slot_id for i in range(2000)]
    client.app.version = None  # force a full reload: same weights, a freshly built table
    client.poll()
    after = [client.app.routing[project.pk].pick(f"u{i}").slot_id for i in range(2000)]
    assert before == after
    share = before.count(world["slot_ids"][0]) / 2000
    assert abs(share - 0.5) <= 0.03


@pytest.mark.parametrize(
    ("headers_key", "status"),
    [(None, 401), ("", 401), ("rctm_not-a-key", 401), ("Bearer x", 401)],
)
def test_it_refuses_missing_or_invalid_keys(
    client: Any, world: dict[str, Any], headers_key: str | None, status: int
) -> None:
    response = client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=headers_key
    )
    assert response.status_code == status
    assert "detail" in response.json()


def test_it_refuses_revoked_expired_and_unscoped_keys(client: Any, world: dict[str, Any]) -> None:
    project = Project.objects.get(pk=world["project_id"])
    path = f"/inference/predict/project/{project.id}"
    read_key, read_raw = api_key_create(project=project, name="r", scopes=["read", "write"])
    assert client.post(path, {"user_id": "1"}, key=read_raw).status_code == 403
    key, raw = api_key_create(project=project, name="p", scopes=["predict"])
    assert client.post(path, {"user_id": "1"}, key=raw).status_code == 200
    api_key_revoke(key=key)
    client.poll()  # the revocation bumped the routing version: the cached key is re-read
    assert client.post(path, {"user_id": "1"}, key=raw).status_code == 401
    expiring, expiring_raw = api_key_create(
        project=project,
        name="e",
        scopes=["predict"],
        expires_at=timezone.now() + timedelta(hours=1),
    )
    assert client.post(path, {"user_id": "1"}, key=expiring_raw).status_code == 200
    ApiKey.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client.app.keys.clear()
    assert client.post(path, {"user_id": "1"}, key=expiring_raw).status_code == 401


def test_it_answers_another_projects_ids_exactly_like_missing_ones(
    client: Any, world: dict[str, Any], small_csv: Any
) -> None:
    other = build_world(csv=small_csv, models=[("TopPop", {})], weights=[100], username="bob")
    client.poll()
    key = world["key"]
    foreign_model = client.post(
        f"/inference/predict/{other['model_ids'][0]}", {"user_id": "1"}, key=key
    )
    missing_model = client.post("/inference/predict/999999", {"user_id": "1"}, key=key)
    assert foreign_model.status_code == missing_model.status_code == 404
    assert foreign_model.json() == missing_model.json()
    foreign_project = client.post(
        f"/inference/predict/project/{other['project_id']}", {"user_id": "1"}, key=key
    )
    missing_project = client.post("/inference/predict/project/999999", {"user_id": "1"}, key=key)
    assert foreign_project.status_code == missing_project.status_code == 404
    assert foreign_project.json() == missing_project.json()
    assert (
        client.post(
            f"/inference/predict/project/{other['project_id']}", {"user_id": "1"}, key=other["key"]
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    "raw_id",
    ["9223372036854775808", "99999999999999999999999", "0", "-1", "+1", "1_0", "١"],
)
def test_it_answers_out_of_range_ids_with_404(
    client: Any, world: dict[str, Any], raw_id: str
) -> None:
    for path in (f"/inference/predict/{raw_id}", f"/inference/predict/project/{raw_id}"):
        response = client.post(path, {"user_id": "1"}, key=world["key"])
        assert response.status_code == 404, (path, response.text)


def test_it_sends_nosniff_on_every_answer(client: Any, world: dict[str, Any]) -> None:
    ok = client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=world["key"]
    )
    refused = client.post("/inference/predict/1", {"user_id": "1"})
    assert (
        ok.headers["x-content-type-options"]
        == refused.headers["x-content-type-options"]
        == ("nosniff")
    )


def test_it_caps_batch_users_times_cutoff(client: Any, world: dict[str, Any]) -> None:
    path = f"/inference/predict/{world['model_ids'][0]}/batch"
    users = [str(u) for u in range(1, 1001)]
    too_many = client.post(path, {"user_ids": users, "cutoff": 101}, key=world["key"])
    assert too_many.status_code == 422 and "user_ids" in too_many.json()
    fine = client.post(path, {"user_ids": users, "cutoff": 100}, key=world["key"])
    assert fine.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/inference/predict/999999", {"user_id": "1"}, 404),
        ("/inference/predict/abc", {"user_id": "1"}, 404),
        ("/inference/predict/{model}", {"user_id": "no-such-user"}, 404),
        ("/inference/predict/project/{project}", {"user_id": "no-such-user"}, 404),
        ("/inference/predict/{model}/nonsense", {"user_id": "1"}, 404),
        ("/inference/nothing", {}, 404),
        ("/inference/predict/{model}", b"{not json", 422),
        ("/inference/predict/{model}", b"", 422),
        ("/inference/predict/{model}", [1, 2], 422),
        ("/inference/predict/{model}", {}, 422),
        ("/inference/predict/{model}", {"user_id": None}, 422),
        ("/inference/predict/{model}", {"user_id": ["1"]}, 422),
        ("/inference/predict/{model}", {"user_id": "1", "cutoff": 0}, 422),
        ("/inference/predict/{model}", {"user_id": "1", "cutoff": "10"}, 422),
        ("/inference/predict/{model}", {"user_id": "1", "cutoff": True}, 422),
        ("/inference/predict/{model}", {"user_id": "1", "cutoff": 10**9}, 422),
        ("/inference/predict/{model}", {"user_id": "1", "allowed_item_ids": "1"}, 422),
        ("/inference/predict/{model}/batch", {"user_ids": "1"}, 422),
        ("/inference/predict/{model}/batch", {}, 422),
        ("/inference/predict/{model}/batch", {"user_ids": [{"a": 1}]}, 422),
        ("/inference/predict/{model}/profile", {}, 422),
        ("/inference/predict/{model}/profile", {"item_ids": ["1"], "exclude_seen": "yes"}, 422),
        ("/inference/predict/project/{project}", {"user_id": 1.5}, 422),
    ],
)
def test_it_answers_bad_requests_with_their_status(
    client: Any, world: dict[str, Any], path: str, body: Any, status: int
) -> None:
    path = path.format(model=world["model_ids"][0], project=world["project_id"])
    if isinstance(body, bytes):
        response = client.post(path, key=world["key"], content=body)
    else:
        response = client.post(path, body, key=world["key"])
    assert response.status_code == status, response.text
    assert response.json()


def test_it_refuses_other_methods(client: Any, world: dict[str, Any]) -> None:
    assert client.get(f"/inference/predict/{world['model_ids'][0]}").status_code == 405


def test_it_returns_404_for_a_project_without_active_slots(
    client: Any, world: dict[str, Any]
) -> None:
    DeploymentSlot.objects.get(pk=world["slot_ids"][0]).delete()
    client.poll()
    response = client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=world["key"]
    )
    assert response.status_code == 404


def test_it_swaps_models_when_a_slot_changes(client: Any, world: dict[str, Any]) -> None:
    path = f"/inference/predict/project/{world['project_id']}"
    assert (
        client.post(path, {"user_id": "1"}, key=world["key"]).json()["model_id"]
        == world["model_ids"][0]
    )
    slot_set_model(
        slot=DeploymentSlot.objects.get(pk=world["slot_ids"][0]),
        trained_model=TrainedModel.objects.get(pk=world["model_ids"][1]),
        changed_by="test",
    )
    client.poll()
    assert (
        client.post(path, {"user_id": "1"}, key=world["key"]).json()["model_id"]
        == world["model_ids"][1]
    )
    assert "recotem_inference_model_swaps_total 1" in client.get("/inference/metrics").text


def test_it_keeps_serving_the_previous_model_when_the_new_one_is_corrupt(
    client: Any, world: dict[str, Any]
) -> None:
    path = f"/inference/predict/project/{world['project_id']}"
    before = client.post(path, {"user_id": "1"}, key=world["key"]).json()
    broken_id = world["model_ids"][1]
    corrupt(broken_id)
    slot_set_model(
        slot=DeploymentSlot.objects.get(pk=world["slot_ids"][0]),
        trained_model=TrainedModel.objects.get(pk=broken_id),
        changed_by="test",
    )
    client.poll()
    after = client.post(path, {"user_id": "1"}, key=world["key"])
    assert after.status_code == 200 and after.json()["model_id"] == world["model_ids"][0]
    assert after.json()["items"] == before["items"]
    health = client.get("/inference/health", key=world["key"]).json()
    assert health["status"] == "degraded" and "signature" in health["load_errors"][str(broken_id)]
    assert client.get("/inference/health").json() == {"status": "degraded"}
    assert (
        'recotem_inference_model_loads_total{result="error"} 1'
        in client.get("/inference/metrics").text
    )
    direct = client.post(f"/inference/predict/{broken_id}", {"user_id": "1"}, key=world["key"])
    assert direct.status_code == 503


def test_it_reports_health_and_metrics(client: Any, world: dict[str, Any]) -> None:
    client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=world["key"]
    )
    client.post(f"/inference/predict/project/{world['project_id']}", {"user_id": "1"})
    assert client.get("/inference/health").json() == {"status": "ok"}
    health = client.get("/inference/health", key=world["key"])
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["models_loaded"] == [world["model_ids"][0]]
    text = client.get("/inference/metrics").text
    assert 'recotem_inference_requests_total{endpoint="project",status="200"} 1' in text
    assert 'recotem_inference_requests_total{endpoint="project",status="401"} 1' in text
    assert (
        'recotem_inference_request_duration_seconds_bucket{endpoint="project",le="+Inf"} 2' in text
    )
    assert 'recotem_inference_model_loads_total{result="ok"} 1' in text
    client.poll()  # gauges are refreshed by the poller
    # Only user 1 was asked for, so only user 1's top-K is kept (none computed at load).
    assert "recotem_inference_topk_users 1\n" in client.get("/inference/metrics").text


def test_it_records_last_used_at_in_batches(client: Any, world: dict[str, Any]) -> None:
    client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=world["key"]
    )
    key = ApiKey.objects.get(project_id=world["project_id"], name="predict")
    assert key.last_used_at is None  # no write on the request path
    client.app.last_flush = 0
    client.poll()
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_it_answers_each_user_of_a_project_batch_from_their_own_slot(
    client: Any, world: dict[str, Any]
) -> None:
    project = Project.objects.get(pk=world["project_id"])
    slot_create(
        project=project,
        name="b",
        trained_model=TrainedModel.objects.get(pk=world["model_ids"][1]),
        weight=100,
    )
    client.poll()
    path = f"/inference/predict/project/{project.pk}"
    users = [str(u) for u in range(1, 31)]
    single = {
        u: client.post(path, {"user_id": u, "cutoff": 3}, key=world["key"]).json() for u in users
    }
    batch = client.post(f"{path}/batch", {"user_ids": users, "cutoff": 3}, key=world["key"])
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert {r["slot_id"] for r in results} == set(world["slot_ids"]) | {
        s.pk for s in DeploymentSlot.objects.filter(name="b")
    }
    for result in results:
        alone = single[result["user_id"]]
        assert (result["slot_id"], result["model_id"]) == (alone["slot_id"], alone["model_id"])
        assert result["items"] == alone["items"]
        assert request_tokens().verify(result["request_id"]) is not None
    assert batch.json()["slot_id"] == results[0]["slot_id"]  # top level: the first user's
    # A profile request that names its user is sticky too.
    profile = client.post(
        f"{path}/profile", {"item_ids": ["4"], "user_id": "7"}, key=world["key"]
    ).json()
    assert profile["slot_id"] == single["7"]["slot_id"]
