"""A real `recotem inference --workers 2` (two server processes) under concurrent load while a
slot changes its model in another process (as the API, the admin or auto-deploy would)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from recotem.inference.testing import free_port, isolated_env, run_cli, stop_server
from recotem.testing import processes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the module (setting up the database takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("hot-swap")
    csv = tmp_path / "small.csv"
    csv.write_text(
        "user_id,item_id\n"
        + "".join(f"{u},{i}\n" for u in range(1, 31) for i in range(1, 21) if (u * 7 + i * 3) % 4)
    )
    env = isolated_env(tmp_path / "data")
    (tmp_path / "data").mkdir()
    world = json.loads(
        run_cli(
            env,
            "setup",
            "--csv",
            str(csv),
            "--models",
            'IALS:{"n_components": 8}',
            "TopPop:{}",
            'IALS:{"n_components": 4}',
            "--weights",
            "100",
        )
    )
    port = free_port()
    proc = processes.start(
        processes.recotem("inference", "--port", str(port), "--workers", "2"), env
    )
    processes.wait_http_ok(f"http://127.0.0.1:{port}/inference/health", 60, proc, any_status=True)
    yield env, world, f"http://127.0.0.1:{port}"
    stop_server(proc)


def _load(
    base: str,
    world: dict[str, Any],
    stop: threading.Event,
    log: list[tuple[float, int, int | None]],
) -> None:
    with httpx.Client(base_url=base, headers={"X-API-Key": world["key"]}, timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.post(
                    f"/inference/predict/project/{world['project_id']}",
                    json={"user_id": "7", "cutoff": 3},
                )
                log.append(
                    (
                        time.monotonic(),
                        r.status_code,
                        r.json().get("model_id") if r.status_code == 200 else None,
                    )
                )
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
    time.sleep(6.5)  # every process must have swapped 5 s after the change
    stop.set()
    for t in threads:
        t.join()
    entries = sorted(e for log in logs for e in log)
    assert len(entries) > 200
    assert [e for e in entries if e[1] != 200] == []
    swapped = [t for t, _, m in entries if m == second]
    assert swapped, "the new model was never served"
    assert swapped[0] - changed_at < 5.0
    # 5 s after the change, no process answers with the old model any more
    late = [m for t, _, m in entries if t > changed_at + 5.0]
    assert late and all(m == second for m in late)
    assert any(m == first for t, _, m in entries if t < changed_at)


def test_it_keeps_serving_when_the_new_artifact_is_corrupt(served: Any) -> None:
    env, world, base = served
    _, _, third = world["model_ids"]
    url = f"{base}/inference/predict/project/{world['project_id']}"
    serving = httpx.post(url, json={"user_id": "7"}, headers={"X-API-Key": world["key"]}).json()[
        "model_id"
    ]
    key = {"X-API-Key": world["key"]}  # health details are for the key's project only
    run_cli(env, "corrupt", "--model", str(third))
    run_cli(env, "set-model", "--slot", str(world["slot_ids"][0]), "--model", str(third))
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and not httpx.get(f"{base}/inference/health", headers=key).json()["load_errors"]
    ):
        time.sleep(0.1)
    time.sleep(1.5)  # both server processes have polled by now
    for _ in range(6):
        assert (
            str(third) in httpx.get(f"{base}/inference/health", headers=key).json()["load_errors"]
        )
    for _ in range(10):
        r = httpx.post(url, json={"user_id": "7"}, headers={"X-API-Key": world["key"]})
        assert r.status_code == 200 and r.json()["model_id"] == serving != third
