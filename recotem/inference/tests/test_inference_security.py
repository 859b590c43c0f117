"""What the inference app tells whom: health detail, metrics, bounded caches, key rotation."""

from __future__ import annotations

from typing import Any

import pytest

from recotem.accounts.keys import generate_key, hash_key
from recotem.accounts.models import ApiKey
from recotem.inference.cache import ENTRY_OVERHEAD, AnswerCache
from recotem.inference.testing import build_world
from recotem.projects.models import Project


def test_it_tells_anonymous_callers_only_the_status(client: Any, world: dict[str, Any]) -> None:
    client.post(
        f"/inference/predict/project/{world['project_id']}", {"user_id": "1"}, key=world["key"]
    )
    anonymous = client.get("/inference/health")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    assert anonymous.headers["cache-control"] == "no-store"
    assert client.get("/inference/health", key="rctm_bogus").status_code == 401


def test_it_shows_a_key_only_its_own_projects_detail(
    client: Any, world: dict[str, Any], small_csv: Any
) -> None:
    other = build_world(csv=small_csv, models=[("TopPop", {})], weights=[100], username="bob")
    client.poll()
    mine = client.get("/inference/health", key=world["key"]).json()
    theirs = client.get("/inference/health", key=other["key"]).json()
    assert set(mine["models_loaded"]) == {world["model_ids"][0]}
    assert set(theirs["models_loaded"]) == {other["model_ids"][0]}
    assert "poll_error" not in mine and "answer_cache" not in mine


def test_it_guards_metrics_and_full_health_with_the_metrics_token(
    client: Any, world: dict[str, Any]
) -> None:
    client.app.metrics_token = "s3cret-token"
    assert client.get("/inference/metrics").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.get("/inference/metrics", headers=bad).status_code == 401
    good = {"Authorization": "Bearer s3cret-token"}
    metrics = client.get("/inference/metrics", headers=good)
    assert metrics.status_code == 200 and "recotem_inference_requests_total" in metrics.text
    assert metrics.headers["x-content-type-options"] == "nosniff"
    full = client.get("/inference/health", headers=good).json()
    assert "answer_cache" in full and "models_loaded" in full
    assert client.get("/inference/health", headers=bad).status_code == 401


def test_it_memoises_only_cutoffs_the_top_k_covers(client: Any, world: dict[str, Any]) -> None:
    path = f"/inference/predict/{world['model_ids'][0]}"
    for cutoff in (5, 10, 20, 21, 51, 200, 1000):
        response = client.post(path, {"user_id": "1", "cutoff": cutoff}, key=world["key"])
        assert response.status_code == 200
    # The model has 20 items, so its precomputed lists hold 20; larger cutoffs are not kept.
    assert client.app.models[world["model_ids"][0]].memo_cutoff == 20
    assert sorted(k[2] for k in client.app.memo.entries) == [5, 10, 20]


def test_it_keeps_the_answer_cache_within_its_byte_budget() -> None:
    cache = AnswerCache(max_bytes=10_000)
    value = b"x" * 100
    for user in range(1_000):
        cache.put((1, str(user), 10), value)
        assert cache.bytes <= 10_000
    assert cache.bytes == sum(AnswerCache.cost(k, v) for k, v in cache.entries.items())
    assert len(cache) == 10_000 // (100 + 3 + ENTRY_OVERHEAD)
    assert cache.get((1, "999", 10)) == value and cache.get((1, "0", 10)) is None
    cache.drop_model(1)
    assert len(cache) == 0 and cache.bytes == 0
    cache.put((2, "u", 1), b"y" * 20_000)  # larger than the whole budget: not kept
    assert len(cache) == 0


@pytest.mark.django_db(transaction=True)
def test_it_accepts_a_key_hashed_under_an_old_secret_and_rehashes_it(
    world: dict[str, Any], settings: Any
) -> None:
    import asyncio

    from recotem.inference.tests.conftest import Client

    project = Project.objects.get(pk=world["project_id"])
    raw = generate_key()
    key = ApiKey.objects.create(
        project=project, name="old", prefix=raw[:12], key_hash=hash_key(raw), scopes=["predict"]
    )
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "n" * 40
    settings.SECRET_KEY_FALLBACKS = [old_secret]
    loop = asyncio.new_event_loop()
    rotated = Client(loop)  # built after the rotation, as a restarted process would be
    try:
        path = f"/inference/predict/project/{project.pk}"
        assert rotated.post(path, {"user_id": "1"}, key=raw).status_code == 200
        key.refresh_from_db()
        assert key.key_hash == hash_key(raw)  # now under the current secret
        rotated.poll()
        assert rotated.post(path, {"user_id": "1"}, key=raw).status_code == 200
        # Re-sign the artifacts, then drop the old secret: the key was re-hashed on use and
        # the models carry the new signature, so everything keeps working without it.
        from recotem.training.services import trained_models_resign

        report = trained_models_resign()
        assert report.resigned == len(world["model_ids"]) and not report.failed
        settings.SECRET_KEY_FALLBACKS = []
        without = Client(loop)
        try:
            assert without.post(path, {"user_id": "1"}, key=raw).status_code == 200
        finally:
            without.close()
    finally:
        rotated.close()
        loop.close()
