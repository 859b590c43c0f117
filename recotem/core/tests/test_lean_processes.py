"""Beat and web stay lean (issue 13, item 3): real `recotem beat` / `recotem web` processes.

What each process imported is read two ways: the module list it dumps on SIGUSR2
(RECOTEM_DEBUG_MODULES_DIR, recotem.lib.moduledump) and the shared objects mapped into it
(/proc/PID/maps), which cannot be fooled by a module deleted from sys.modules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recotem.testing.processes import (
    free_port,
    process_env,
    recotem,
    rss_mb,
    running,
    wait_http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration

ML_STACK = {"irspack", "numba", "scipy", "optuna"}
DATA_STACK = {"numpy", "pandas", "pyarrow"}
PASSWORD = "lean-pass-123"


def _rss_mb(pid: int) -> float:
    rss = rss_mb(pid)
    assert rss > 0, f"process {pid} has no VmRSS"  # gone: never pass a memory bound by accident
    return rss


def _mapped_packages(pid: int) -> set[str]:
    """Top-level site-packages directories of the shared objects mapped into ``pid``."""
    found: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if line.split() else ""
        if "site-packages/" in path and ".so" in path:
            found.add(path.split("site-packages/", 1)[1].split("/", 1)[0].split(".")[0])
    return found


def _modules(pid: int, dump_dir: Path) -> set[str]:
    target = dump_dir / f"{pid}.modules"
    before = target.stat().st_mtime_ns if target.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    wait_until(
        lambda: target.exists() and target.stat().st_mtime_ns != before,
        timeout=10,
        message=f"module dump of {pid}",
    )
    return set(target.read_text().split())


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = process_env(
        tmp_path / "data",
        RECOTEM_DEBUG_MODULES_DIR=str(tmp_path / "modules"),
        RECOTEM_ADMIN_PASSWORD=PASSWORD,
        **extra,
    )
    subprocess.run(recotem("migrate"), env=env, check=True, timeout=180, capture_output=True)
    return env


def test_it_runs_beat_without_the_ml_stack_in_150_mb(tmp_path: Path, redis_url: str) -> None:
    env = _env(tmp_path, CELERY_BROKER_URL=redis_url)
    with running(recotem("beat"), env, tmp_path / "beat.log") as beat:
        # Beat ticks (reconcile, reaper, schedule checks) a few times before it is inspected.
        wait_until(
            lambda: "beat: Starting" in (tmp_path / "beat.log").read_text(),
            timeout=90,
            message="beat started",
        )
        time.sleep(12)
        modules = _modules(beat.pid, tmp_path / "modules")
        mapped = _mapped_packages(beat.pid)
        rss = _rss_mb(beat.pid)
    assert not (modules & (ML_STACK | DATA_STACK)), sorted(modules & (ML_STACK | DATA_STACK))
    assert not (mapped & (ML_STACK | DATA_STACK)), sorted(mapped)
    assert rss <= 150, f"beat RSS {rss:.0f} MB"


def _synthetic_csv(path: Path, rows: int) -> tuple[int, int, int]:
    """A ~50 MB interaction log with power-law users and items (fixed seed)."""
    rng = np.random.default_rng(13)
    users = rng.zipf(1.3, rows) % 200_000
    items = rng.zipf(1.2, rows) % 30_000
    stamps = rng.integers(1_500_000_000, 1_700_000_000, rows)
    with path.open("w") as fh:
        fh.write("user_id,item_id,timestamp\n")
        block = 500_000
        for begin in range(0, rows, block):
            end = min(begin + block, rows)
            lines = [
                f"u{u},i{i},{t}"
                for u, i, t in zip(
                    users[begin:end].tolist(),
                    items[begin:end].tolist(),
                    stamps[begin:end].tolist(),
                    strict=True,
                )
            ]
            fh.write("\n".join(lines) + "\n")
    return rows, len(np.unique(users)), len(np.unique(items))


def _use_the_algorithm_catalogue(client: httpx.Client, base: str, project: int, data: int) -> None:
    """All the web does with algorithms short of serving: list them, check configurations
    (refused and accepted), queue a tuning job, render the forms that offer them."""
    names = client.get("/api/v1/model_configuration/recommenders/").json()["recommenders"]
    assert "IALSRecommender" in names and "TopPopRecommender" in names

    def configuration(name: str, parameters: dict[str, Any]) -> httpx.Response:
        return client.post(
            "/api/v1/model_configuration/",
            json={
                "project": project,
                "name": name,
                "recommender_class_name": "IALS",
                "parameters_json": parameters,
            },
        )

    refused = configuration("typo", {"n_component": 8})
    assert refused.status_code == 400, refused.text
    assert "n_component: unknown parameter" in refused.json()["parameters_json"][0]
    accepted = configuration("ials", {"n_components": "8"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["parameters_json"] == {"n_components": 8}

    split = client.post("/api/v1/split_config/", json={"project": project, "scheme": "RG"})
    evaluation = client.post("/api/v1/evaluation_config/", json={"project": project, "cutoff": 10})

    def tuning_job(algorithms: list[str]) -> httpx.Response:
        return client.post(
            "/api/v1/parameter_tuning_job/",
            json={
                "data": data,
                "split": split.json()["id"],
                "evaluation": evaluation.json()["id"],
                "n_trials": 2,
                "tried_algorithms": algorithms,
            },
        )

    queued = tuning_job(["IALS", "TopPop"])
    assert queued.status_code == 201, queued.text
    unknown = tuning_job(["DeepMagic"])
    assert unknown.status_code == 400 and "DeepMagic" in unknown.text, unknown.text
    with httpx.Client(base_url=base, timeout=60) as browser:
        browser.get("/login/")
        signed_in = browser.post(
            "/login/",
            data={
                "username": "admin",
                "password": PASSWORD,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
        )
        assert signed_in.status_code == 302, signed_in.text[:300]
        for page in ("tuning", "models"):
            html = browser.get(f"/projects/{project}/{page}/")
            assert html.status_code == 200 and "IALS" in html.text, (page, html.status_code)


def test_it_keeps_the_web_process_lean_through_a_50_mb_upload(tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"
    rows, n_users, n_items = _synthetic_csv(csv, 2_800_000)
    assert csv.stat().st_size >= 50 * 10**6
    env = _env(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        running(recotem("web", "--port", str(port)), env, tmp_path / "web.log") as web,
        httpx.Client(base_url=base, timeout=300) as client,
    ):
        wait_http_ok(f"{base}/api/v1/ping/", timeout=90, proc=web)
        token = client.post(
            "/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
        ).json()["access"]
        client.headers["Authorization"] = f"Bearer {token}"
        project = client.post(
            "/api/v1/project/",
            json={"name": "big", "user_column": "user_id", "item_column": "item_id"},
        ).json()
        client.get("/api/v1/training_data/", params={"project": project["id"]})

        idle_rss = _rss_mb(web.pid)
        idle_modules = _modules(web.pid, tmp_path / "modules")
        assert not (idle_modules & (ML_STACK | DATA_STACK)), sorted(idle_modules & ML_STACK)
        assert not (_mapped_packages(web.pid) & (ML_STACK | DATA_STACK))
        assert idle_rss <= 200, f"idle web RSS {idle_rss:.0f} MB"

        with csv.open("rb") as fh:
            upload = client.post(
                "/api/v1/training_data/",
                data={"project": str(project["id"])},
                files={"file": ("big.csv", fh, "text/csv")},
            )
        assert upload.status_code == 201, upload.text
        body = upload.json()
        assert (body["row_count"], body["n_users"], body["n_items"]) == (rows, n_users, n_items)
        assert body["fingerprint"].startswith("sha256:")
        after_rss = _rss_mb(web.pid)
        assert after_rss - idle_rss <= 50, f"web RSS {idle_rss:.0f} -> {after_rss:.0f} MB"
        assert not (_modules(web.pid, tmp_path / "modules") & (ML_STACK | DATA_STACK))

        # A file the child process refuses answers 400 with the parser's field message.
        bad = tmp_path / "bad.csv"
        bad.write_text("user,item\nu1,i1\n")
        with bad.open("rb") as fh:
            refused = client.post(
                "/api/v1/training_data/",
                data={"project": str(project["id"])},
                files={"file": ("bad.csv", fh, "text/csv")},
            )
        assert refused.status_code == 400, refused.text
        assert "user_id" in refused.text

        _use_the_algorithm_catalogue(client, base, project["id"], body["id"])
        assert not (_modules(web.pid, tmp_path / "modules") & ML_STACK)
        assert not (_mapped_packages(web.pid) & ML_STACK)

        # The /inference/ mount is still there; its first request loads the ML stack.
        assert client.get("/inference/health").status_code == 200
        assert "irspack" in _modules(web.pid, tmp_path / "modules")


def test_it_answers_413_with_the_row_limit_from_the_child_process(tmp_path: Path) -> None:
    env = _env(tmp_path, RECOTEM_MAX_ROWS="10")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    small = tmp_path / "small.csv"
    small.write_text("user_id,item_id\n" + "".join(f"u{i},i{i}\n" for i in range(50)))
    with (
        running(recotem("web", "--port", str(port)), env, tmp_path / "web.log") as web,
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        wait_http_ok(f"{base}/api/v1/ping/", timeout=90, proc=web)
        token = client.post(
            "/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
        ).json()["access"]
        client.headers["Authorization"] = f"Bearer {token}"
        project = client.post(
            "/api/v1/project/",
            json={"name": "rows", "user_column": "user_id", "item_column": "item_id"},
        ).json()
        with small.open("rb") as fh:
            refused = client.post(
                "/api/v1/training_data/",
                data={"project": str(project["id"])},
                files={"file": ("small.csv", fh, "text/csv")},
            )
    assert refused.status_code == 413, refused.text
    assert "RECOTEM_MAX_ROWS" in refused.text
