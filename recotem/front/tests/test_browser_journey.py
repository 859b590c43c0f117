"""The whole workflow in a real Chromium against a real `recotem up` (web + worker + beat).

Sign in, create a project, upload ml-100k, tune to completion, train, deploy, set up a retraining
schedule (watching the live cron preview), press Run now and watch the run reach COMPLETED; then
deploy a second slot, run an experiment between the two with events sent through the inference
API, read its results and promote the winner; the Data page's Events panel shows the events.
With RECOTEM_SCREENSHOTS=1 a screenshot of each page is saved under docs/screenshots/ (how the
README's pictures are made); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import ML100K, REPO_ROOT, require
from recotem.testing.processes import free_port, process_env, recotem, running, wait_http_ok

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SHOTS = REPO_ROOT / "docs" / "screenshots"
SHOTS = DOCS_SHOTS


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert (SHOTS / f"{name}.png").stat().st_size > 1000


def _send_events(base: str, key: str, project_id: int) -> None:
    """Predict for 300 users (each sticky to one slot) and report an impression for each; users
    served by the variant click 1 in 2 times, the others 1 in 10. The experiment reaches the
    routing within a second of Start, so predictions wait until they carry an arm."""
    import time

    import httpx

    headers = {"X-API-Key": key}
    events: list[dict[str, str]] = []
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        deadline = time.monotonic() + 30
        while True:
            answer = client.post(f"/inference/predict/project/{project_id}", json={"user_id": "1"})
            assert answer.status_code == 200, answer.text
            # r1.<project>.<slot>.<model>.<experiment>.<arm>.…: the arm is "-" outside experiments.
            if answer.json()["request_id"].split(".")[5] != "-" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for user in range(1, 301):
            body = client.post(
                f"/inference/predict/project/{project_id}", json={"user_id": str(user)}
            ).json()
            item, rid = body["items"][0]["item_id"], body["request_id"]
            common = {"user_id": str(user), "item_id": item, "request_id": rid}
            events.append({"type": "impression", **common})
            if user % (2 if body["slot_name"] == "variant" else 10) == 0:
                events.append({"type": "click", **common})
        sent = client.post("/inference/events", json={"events": events})
        assert sent.status_code == 202, sent.text


def test_it_goes_from_csv_to_a_retrained_deployed_model(tmp_path: Path, ml100k_csv: Path) -> None:
    require(CHROMIUM.exists(), "Chromium not installed (apt-get install -y chromium)")
    require(ML100K.exists(), f"MovieLens-100k not found at {ML100K}")
    global SHOTS
    SHOTS = DOCS_SHOTS if os.environ.get("RECOTEM_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(
        tmp_path / "data", RECOTEM_ADMIN_PASSWORD="admin-pass-123", RECOTEM_ADMIN_USERNAME="admin"
    )
    server_errors: list[str] = []
    with (
        running(
            recotem("up", "--port", str(port), "--concurrency", "2"), env, tmp_path / "up.log"
        ) as up,
        sync_playwright() as pw,
    ):
        wait_http_ok(f"{base}/api/v1/ping/", timeout=120, proc=up)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on(
            "response", lambda r: r.status >= 500 and server_errors.append(f"{r.status} {r.url}")
        )
        expect.set_options(timeout=20_000)

        # Sign in.
        page.goto(f"{base}/")
        expect(page).to_have_url(re.compile(r"/login/"))
        _shot(page, "login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("admin-pass-123")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("No projects yet.")).to_be_visible()

        # Create a project.
        page.get_by_label("Project name").fill("movies")
        page.get_by_label("User column").fill("user_id")
        page.get_by_label("Item column").fill("item_id")
        page.get_by_label("Time column (optional)").fill("timestamp")
        page.get_by_role("button", name="Create project").click()
        expect(page.locator("h1")).to_have_text("Data")

        # Upload ml-100k: a broken file first (inline error), then the real one (progress + preview).
        bad = tmp_path / "bad.csv"
        bad.write_text("who,what\n1,2\n")
        page.locator("#id_data-file").set_input_files(str(bad))
        page.locator("#upload-form button[type=submit]").click()
        expect(page.locator("#upload-result .upload-error")).to_contain_text("user_id")
        page.locator("#id_data-file").set_input_files(str(ml100k_csv))
        page.locator("#upload-form button[type=submit]").click()
        expect(page).to_have_url(re.compile(r"\?preview="), timeout=60_000)
        expect(page.locator("#training-data-table")).to_contain_text("100000")
        expect(page.locator(".preview-table tbody tr")).to_have_count(20)
        _shot(page, "data")

        # Tuning: default split and evaluation configs, then a short job run by the worker.
        page.get_by_role("link", name="Tuning").click()
        page.locator("#split-form button").click()
        page.locator("#eval-form button").click()
        page.get_by_label("Trials").fill("4")
        for box in page.locator("#job-form input[name='job-tried_algorithms']").all():
            box.uncheck()
        page.get_by_label("TopPop").check()
        page.get_by_label("RP3beta").check()
        page.get_by_role("button", name="Start tuning").click()
        expect(page.locator("#job-status")).to_have_text("COMPLETED", timeout=240_000)
        expect(page.locator("#best-config")).to_be_visible()
        expect(page.locator("#optimization-history .main-svg").first).to_be_visible()
        expect(page.locator("#trials-table tbody tr")).to_have_count(4)
        _shot(page, "tuning-job")
        page.get_by_role("link", name="← Tuning").click()
        _shot(page, "tuning")

        # Models: the job trained its best configuration; wait for it, then sample recommendations.
        page.get_by_role("link", name="Models").click()
        expect(page.locator("#models-table .badge-COMPLETED").first).to_be_visible(timeout=180_000)
        page.reload()
        page.get_by_label("User id").fill("1")
        page.get_by_role("button", name="Recommend").click()
        expect(page.locator("#sample-table tbody tr")).to_have_count(10)
        _shot(page, "models")

        # Deploy it.
        page.get_by_role("link", name="Deployment").click()
        page.get_by_role("button", name="Deploy").click()
        expect(page.locator("#slots-table")).to_contain_text("main")
        _shot(page, "deployment")

        # Retraining: live cron preview while typing, save, Run now, watch the run complete.
        page.get_by_role("link", name="Retraining").click()
        expect(page.locator("#run-now")).to_be_disabled()
        cron = page.get_by_label("Cron Expression")
        cron.fill("")
        cron.press_sequentially("0 2 * *", delay=30)
        expect(page.locator("#cron-description")).to_contain_text("Expected 5 fields")
        cron.press_sequentially(" 0", delay=30)
        expect(page.locator("#cron-description")).to_contain_text("At 02:00, only on Sunday")
        page.get_by_label("Timezone").select_option("Asia/Tokyo")
        expect(page.locator("#cron-next-runs li")).to_have_count(5)
        expect(page.locator("#cron-next-runs li").first).to_contain_text(
            re.compile(r"Sun .* 02:00 JST")
        )
        for label in ("Training Data", "Model Configuration", "Retune", "Auto Deploy", "Enabled"):
            expect(page.get_by_label(label, exact=True)).to_be_visible()
        page.get_by_label("Model Configuration", exact=True).select_option(index=1)
        page.get_by_label("Auto Deploy", exact=True).check()
        expect(page.get_by_label("Enabled", exact=True)).to_be_checked()
        page.get_by_role("button", name="Save schedule").click()
        expect(page.get_by_text("Schedule enabled.")).to_be_visible()
        expect(page.locator("#run-now")).to_be_enabled()
        page.locator("#run-now").click()
        expect(page.locator("#runs-table tbody tr").first.locator(".badge").first).to_have_text(
            re.compile("PENDING|RUNNING|COMPLETED")
        )
        expect(page.locator("#runs-table tbody tr").first.locator(".badge").first).to_have_text(
            "COMPLETED", timeout=240_000
        )
        expect(page.locator("#runs-table tbody tr").first).to_contain_text("manual")
        page.reload()
        expect(page.locator("#metric-chart .main-svg").first).to_be_visible()
        _shot(page, "retraining")

        # API key, shown once with a copy button; then the overview and the project list.
        page.get_by_role("link", name="API keys").click()
        page.get_by_label("Key name").fill("shop backend")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#raw-key")).to_contain_text("rctm_")
        raw_key = page.locator("#raw-key").inner_text().strip()
        _shot(page, "api-keys")

        # Experiments: a second slot, an experiment between the two, live events attributed by
        # request_id through the real inference API, the results, then Promote.
        project_id = int(re.search(r"/projects/(\d+)/", page.url).group(1))  # type: ignore[union-attr]
        page.get_by_role("link", name="Deployment").click()
        page.get_by_label("Slot name").fill("variant")
        page.get_by_role("button", name="Deploy").click()
        expect(page.locator("#slots-table")).to_contain_text("variant")
        page.get_by_role("link", name="Experiments").click()
        expect(page.get_by_text("No experiments yet.")).to_be_visible()
        page.get_by_label("Name").fill("main vs variant")
        page.get_by_label("Control slot").select_option(label="main")
        page.get_by_label("Variant slot").select_option(label="variant")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#experiment-status")).to_have_text("DRAFT")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#experiment-status")).to_have_text("RUNNING")
        _send_events(base, raw_key, project_id)
        page.reload()
        expect(page.locator("#arms-table tbody tr")).to_have_count(2)
        expect(page.locator("#decision")).to_contain_text("variant_better")
        expect(page.locator("#lift-chart .main-svg").first).to_be_visible()
        _shot(page, "experiment")
        page.locator("#promote-form button").click()
        expect(page.get_by_text("now gets all traffic")).to_be_visible()
        expect(page.locator("#experiment-status")).to_have_text("STOPPED")
        page.get_by_role("link", name="Deployment").click()
        expect(page.locator("#slots-table tbody tr").filter(has_text="main")).to_contain_text(
            "inactive"
        )
        page.get_by_role("link", name="Data").click()
        expect(page.locator("#events-table")).to_contain_text("impression")
        expect(page.locator("#events-chart .main-svg").first).to_be_visible()
        page.get_by_role("link", name="Overview").click()
        expect(page.locator(".stat").filter(has_text="Last run")).to_contain_text("COMPLETED")
        _shot(page, "overview")
        page.get_by_role("link", name="Recotem").click()
        _shot(page, "projects")
        browser.close()
    assert server_errors == []
