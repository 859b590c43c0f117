"""A real `uvicorn recotem.inference.app:application` process under concurrent load while a
slot changes its model in another process (as the API, the admin or auto-deploy would)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from recotem.inference.testing import free_port, isolated_env, run_cli, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the module (setting up the database takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("hot-swap")
    csv = tmp_path / "small.csv"
    csv.write_text("user_id,item_id\n" + "".join(
        f"{u},{i}\n" for u in range(1, 31) for i in range(1, 21) if (u * 7 + i * 3) % 4
    ))
    env = isolated_env(tmp_path / "data")
    (tmp_path / "data").mkdir()
    world = json.loads(run_cli(env, "setup", "--csv", str(csv), "--models",
                               'IALS:{"n_components": 8}', "TopPop:{}", "IALS:{\"n_components\": 4}",
                               "--weights", "100"))
    port = free_port()
    proc = start_server("recotem.inference.app:application", env, port)
    yield env, world, f"http://127.0.0.1:{port}"
    stop_server(proc)


def _load(base: str, world: dict[str, Any], stop: threading.Event, log: list[tuple[float, int, int | None]]) -> None:
    with httpx.Client(base_url=base, headers={"X-API-Key": world["key"]}, timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.post(f"/inference/predict/project/{world['project_id']}", json={"user_id": "7", "cutoff": 3})
                log.append((time.monotonic(), r.status_code, r.json().get("model_id") if r.status_code == 200 else None))
            except httpx.HTTPError:
                log.append((time.monotonic(), 0, None))


def test_it_swaps_within_5_seconds_without_failed_requests(served: Any) -> None:
    env, world, base = served
    first, second, _ = world["model_ids"]
    stop = threading.Event()
    logs: list[list[tuple[float, int, int | None]]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=_load, args=(base, world, stop, log)) for log in logs]
    for t in threads:
        t.start()
    time.sleep(1.0)
    run_cli(env, "set-model", "--slot", str(world["slot_ids"][0]), "--model", str(second))
    changed_at = time.monotonic()
    deadline = changed_at + 8
    while time.monotonic() < deadline and not any(m == second for log in logs for _, _, m in log[-5:]):
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    entries = sorted(e for log in logs for e in log)
    assert len(entries) > 200
    assert [e for e in entries if e[1] != 200] == []
    swapped = [t for t, _, m in entries if m == second]
    assert swapped, "the new model was never served"
    assert swapped[0] - changed_at < 5.0
    # once the new model answered, nothing answers with the old one any more (one process)
    assert all(m == second for t, _, m in entries if t > swapped[0] + 0.05)
    assert any(m == first for t, _, m in entries if t < changed_at)


def test_it_keeps_serving_when_the_new_artifact_is_corrupt(served: Any) -> None:
    env, world, base = served
    _, _, third = world["model_ids"]
    url = f"{base}/inference/predict/project/{world['project_id']}"
    serving = httpx.post(url, json={"user_id": "7"}, headers={"X-API-Key": world["key"]}).json()["model_id"]
    run_cli(env, "corrupt", "--model", str(third))
    run_cli(env, "set-model", "--slot", str(world["slot_ids"][0]), "--model", str(third))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not httpx.get(f"{base}/inference/health").json()["load_errors"]:
        time.sleep(0.1)
    health = httpx.get(f"{base}/inference/health").json()
    assert str(third) in health["load_errors"]
    r = httpx.post(url, json={"user_id": "7"}, headers={"X-API-Key": world["key"]})
    assert r.status_code == 200 and r.json()["model_id"] == serving != third
