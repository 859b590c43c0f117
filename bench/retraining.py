"""Scheduled-retraining benchmarks (issue 5): real web, worker and beat processes, on the embedded
default (SQLite + SQLAlchemy broker) and on PostgreSQL + Redis, side by side in one run.

1. Beat fire lag: 10 schedules at `* * * * *`; for each fire at the next minute boundary, the run
   row's `queued_at` (created by the worker when beat's message arrives) and `started_at` minus
   that boundary.
2. Trigger → COMPLETED: `POST /api/v1/retraining_schedule/{id}/trigger/ {"force": true}` for a
   train-only IALS run on ml-100k, polled over HTTP until COMPLETED; median of 5, with the
   stages read back from the run and trained-model rows.
3. 1,000 enabled schedules (`0 3 1 1 *`, never firing in the window): `schedule_create` /
   `schedule_sync` time per schedule (in a child process on the same database), and beat's CPU
   over 60 s idle (utime + stime from /proc).

    python bench/retraining.py     # prints a markdown fragment; bench/run.py appends it
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from recotem.testing.processes import (  # noqa: E402
    celery,
    free_port,
    fresh_postgres_database,
    postgres_available,
    process_env,
    recotem,
    redis_available,
    running,
    wait_http_ok,
    wait_until,
)

ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"
PASSWORD = "bench-pass-123"
REDIS_URL = "redis://127.0.0.1:6379/13"
N_FIRE_SCHEDULES = 10
N_TRIGGER_RUNS = 5
N_BULK_SCHEDULES = 1000
IDLE_SECONDS = 60
IALS_PARAMS = {"n_components": 64}
FINAL = ("COMPLETED", "FAILED", "SKIPPED")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ts(value: str | None) -> float:
    return datetime.fromisoformat(value).timestamp() if value else math.nan


def _cpu_seconds(pid: int) -> float:
    # Fields after the ")" of comm: utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# --- child: schedule_create/schedule_sync timing inside Django, on the backend's database ----------
def sync_child(n: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from recotem.projects.models import Project
    from recotem.retraining import services

    owner = get_user_model().objects.get(username="admin")
    projects = Project.objects.bulk_create(
        [
            Project(owner=owner, name=f"bulk-{i}", user_column="user_id", item_column="item_id")
            for i in range(n)
        ]
    )
    sync_times: list[float] = []
    original = services.schedule_sync

    def timed_sync(*, schedule: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(schedule=schedule)
        finally:
            sync_times.append(time.perf_counter() - t0)

    services.schedule_sync = timed_sync  # instrumentation only: schedule_create looks it up here
    create_times = []
    for project in projects:
        t0 = time.perf_counter()
        services.schedule_create(project=project, cron_expression="0 3 1 1 *")
        create_times.append(time.perf_counter() - t0)
    services.schedule_sync = original
    t0 = time.perf_counter()
    report = services.schedule_reconcile()
    reconcile_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "create": create_times,
                "sync": sync_times,
                "reconcile_s": reconcile_s,
                "report": report,
            }
        )
    )


# --- parent ----------------------------------------------------------------------------------------
class Backend:
    def __init__(
        self, label: str, tmp: Path, extra_env: dict[str, str], ml_csv: Path, tiny_csv: Path
    ) -> None:
        self.label, self.tmp, self.ml_csv, self.tiny_csv = label, tmp, ml_csv, tiny_csv
        self.data_dir = tmp / "data"
        self.data_dir.mkdir(parents=True)
        self.env = process_env(
            self.data_dir,
            RECOTEM_ADMIN_USERNAME="admin",
            RECOTEM_ADMIN_PASSWORD=PASSWORD,
            SECRET_KEY="bench-" + "k" * 44,
            **extra_env,
        )
        self.result: dict[str, Any] = {"label": label}

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.result["load"] = [os.getloadavg()[0]]
        subprocess.run(
            recotem("migrate"), env=self.env, check=True, capture_output=True, timeout=300
        )
        log(f"{self.label}: migrated in {time.monotonic() - t0:.1f} s")
        port = free_port()
        logs = self.tmp
        with ExitStack() as stack:
            stack.enter_context(
                running(recotem("web", "--port", str(port)), self.env, logs / "web.log")
            )
            stack.enter_context(
                running(
                    celery(
                        "worker",
                        "-l",
                        "INFO",
                        "-Q",
                        "celery,retraining,tuning",
                        "--concurrency",
                        "2",
                    ),
                    self.env,
                    logs / "worker.log",
                )
            )
            beat = stack.enter_context(running(recotem("beat"), self.env, logs / "beat.log"))
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base}/api/v1/ping/", timeout=90)
            token = httpx.post(
                f"{base}/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
            ).json()
            api = stack.enter_context(
                httpx.Client(
                    base_url=base,
                    headers={"Authorization": f"Bearer {token['access']}"},
                    timeout=60,
                )
            )
            try:
                self._scenarios(api, beat.pid)
            except BaseException:
                for name in ("worker", "beat", "web"):
                    log(
                        f"--- {self.label} {name}.log\n"
                        + (logs / f"{name}.log").read_text(errors="replace")[-4000:]
                    )
                raise
        self.result["load"].append(os.getloadavg()[0])
        log(f"{self.label}: done in {time.monotonic() - t0:.0f} s")
        return self.result

    # helpers -------------------------------------------------------------------------------------
    def _project(
        self,
        api: httpx.Client,
        name: str,
        csv: Path,
        class_name: str,
        params: dict[str, Any],
        **schedule: Any,
    ) -> int:
        pid = api.post(
            "/api/v1/project/",
            json={
                "name": name,
                "user_column": "user_id",
                "item_column": "item_id",
                "time_column": "timestamp",
            },
        ).json()["id"]
        with open(csv, "rb") as fh:
            r = api.post(
                "/api/v1/training_data/", data={"project": pid}, files={"file": (csv.name, fh)}
            )
        assert r.status_code == 201, r.text
        r = api.post(
            "/api/v1/model_configuration/",
            json={
                "project": pid,
                "name": "cfg",
                "recommender_class_name": class_name,
                "parameters_json": params,
            },
        )
        assert r.status_code == 201, r.text
        r = api.post(
            "/api/v1/retraining_schedule/",
            json={"project": pid, "model_configuration": r.json()["id"], **schedule},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def _trigger_once(self, api: httpx.Client, schedule_id: int) -> dict[str, Any]:
        t0 = time.time()
        r = api.post(f"/api/v1/retraining_schedule/{schedule_id}/trigger/", json={"force": True})
        t_post = time.time()
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        while True:
            run = _get(api, f"/api/v1/retraining_run/{run_id}/")
            if run["status"] in FINAL:
                break
            if time.time() - t0 > 120:
                raise TimeoutError(f"run {run_id} still {run['status']}")
            time.sleep(0.02)
        t_seen = time.time()
        assert run["status"] == "COMPLETED", run
        tm = _get(api, f"/api/v1/trained_model/{run['trained_model']}/")
        q, s, c = _ts(run["queued_at"]), _ts(run["started_at"]), _ts(run["completed_at"])
        tm_created, tm_started, tm_done = (
            _ts(tm["created_at"]),
            _ts(tm["started_at"]),
            _ts(tm["completed_at"]),
        )
        return {
            "total": t_seen - t0,
            "post": t_post - t0,
            "pickup": s - q,
            "run_setup": tm_created - s,  # data resolve + data check + trained-model row
            "read_holdout": (tm_done - tm_started)
            - tm["training_time"],  # read CSV, holdout refit+score, file save
            "fit_artifact": tm["training_time"],  # fit on all data + signed artifact dump
            "finish": c - tm_done,  # run_finish + retention
            "observed": t_seen - c,  # poll granularity + HTTP
            "tm_claim": tm_started - tm_created,
        }

    def _scenarios(self, api: httpx.Client, beat_pid: int) -> None:
        # Part 2's project first: a disabled schedule, triggered by hand.
        ml_schedule = self._project(
            api,
            "ml100k",
            self.ml_csv,
            "IALSRecommender",
            IALS_PARAMS,
            cron_expression="0 3 1 1 *",
            is_enabled=False,
        )
        # Created well clear of a minute boundary, so beat (5 s poll) has them before the next one.
        if 60 - time.time() % 60 < 12:
            time.sleep(60 - time.time() % 60 + 1)
        fire_ids = [
            self._project(
                api,
                f"fire-{i}",
                self.tiny_csv,
                "TopPopRecommender",
                {},
                cron_expression="* * * * *",
            )
            for i in range(N_FIRE_SCHEDULES)
        ]
        boundary = math.ceil(time.time() / 60) * 60
        log(
            f"{self.label}: {len(fire_ids)} schedules created; boundary in {boundary - time.time():.1f} s"
        )

        # Part 2 in the wait, as long as a run cannot spill over the boundary.
        triggers: list[dict[str, Any]] = []
        while len(triggers) < N_TRIGGER_RUNS:
            longest = max((t["total"] for t in triggers), default=8.0)
            if boundary - time.time() < longest + 4:
                break
            triggers.append(self._trigger_once(api, ml_schedule))
            log(f"{self.label}: trigger run {len(triggers)}: {triggers[-1]['total']:.2f} s")

        # Part 1: every schedule's fire at the boundary, created and finished.
        def fired() -> list[dict[str, Any]] | None:
            runs = _get(api, "/api/v1/retraining_run/?trigger=schedule&page_size=200")["results"]
            mine = [
                r for r in runs if r["schedule"] in fire_ids and _ts(r["queued_at"]) >= boundary - 1
            ]
            done = [r for r in mine if r["status"] in FINAL]
            return done if len({r["schedule"] for r in done}) == len(fire_ids) else None

        time.sleep(max(0.0, boundary - time.time()))
        try:
            runs = wait_until(fired, 70, interval=1, message="all fires")
        except TimeoutError:
            runs = api.get("/api/v1/retraining_run/?trigger=schedule&page_size=200").json()[
                "results"
            ]
            log(f"{self.label}: not all schedules fired: {runs}")
            raise
        first = {}
        for r in sorted(runs, key=lambda r: r["id"]):
            first.setdefault(r["schedule"], r)
        self.result["fire_queued"] = [_ts(r["queued_at"]) - boundary for r in first.values()]
        self.result["fire_started"] = [_ts(r["started_at"]) - boundary for r in first.values()]
        self.result["fire_statuses"] = sorted({r["status"] for r in first.values()})
        self.result["fire_boundary"] = datetime.fromtimestamp(boundary, UTC).isoformat()
        self.result["fire_sent"] = _beat_sent(self.tmp / "beat.log", boundary)
        log(f"{self.label}: fires {sorted(round(x, 2) for x in self.result['fire_queued'])}")
        for sid in fire_ids:  # no more fires: they would disturb what follows
            api.patch(
                f"/api/v1/retraining_schedule/{sid}/", json={"is_enabled": False}
            ).raise_for_status()

        while len(triggers) < N_TRIGGER_RUNS:
            triggers.append(self._trigger_once(api, ml_schedule))
            log(f"{self.label}: trigger run {len(triggers)}: {triggers[-1]['total']:.2f} s")
        self.result["triggers"] = triggers

        # Part 3: 1,000 schedules through the service, then beat idle.
        self.result["beat_rss_before_mb"] = _rss_mb(beat_pid)
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, __file__, "--sync-child", str(N_BULK_SCHEDULES)],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.result["sync"] = json.loads(out.stdout.strip().splitlines()[-1])
        log(f"{self.label}: {N_BULK_SCHEDULES} schedules in {time.monotonic() - t0:.1f} s")
        time.sleep(8)  # beat reloads its 1,000 entries after the last change (5 s poll)
        cpu0, w0 = _cpu_seconds(beat_pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu1, w1 = _cpu_seconds(beat_pid), time.monotonic()
        self.result["beat_cpu_pct"] = 100 * (cpu1 - cpu0) / (w1 - w0)
        self.result["beat_rss_mb"] = _rss_mb(beat_pid)
        log(f"{self.label}: beat idle CPU {self.result['beat_cpu_pct']:.2f} %")


def _beat_sent(beat_log: Path, boundary: float) -> list[float]:
    """Seconds after the minute at which beat logged sending each `recotem-retrain-*` task."""
    sent = []
    for line in beat_log.read_text(errors="replace").splitlines():
        if "Sending due task recotem-retrain-" in line:
            stamp = datetime.strptime(
                line[1:24], "%Y-%m-%d %H:%M:%S,%f"
            ).timestamp()  # local time, like the log
            if boundary - 1 <= stamp < boundary + 50:
                sent.append(stamp - boundary)
    return sent


def _get(api: httpx.Client, url: str) -> Any:
    """GET JSON, riding out a transient 5xx (e.g. a shared PostgreSQL briefly out of connections)."""
    for _attempt in range(20):
        r = api.get(url)
        if r.status_code < 500:
            r.raise_for_status()
            return r.json()
        log(f"GET {url} → {r.status_code}; retrying")
        time.sleep(0.5)
    r.raise_for_status()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _lag(values: list[float]) -> str:
    return f"p50 {_pct(values, 50):.2f} s · p99 {_pct(values, 99):.2f} s · max {max(values):.2f} s"


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "### Scheduled retraining (`bench/retraining.py`)",
        "",
        "Real `recotem web`, `celery worker -Q celery,retraining,tuning --concurrency 2` and "
        "`recotem beat` (the DatabaseScheduler that records runs at the fire instant) per backend; embedded = SQLite + SQLAlchemy broker in a temp "
        "RECOTEM_DATA_DIR, PG = PostgreSQL + Redis. Fire lag: 10 schedules `* * * * *` (TopPop, 30 users of ml-100k), "
        "first fire each, minus the cron minute. Trigger: IALS (64 factors) on ml-100k, train-only, `force`; stages "
        "from the run and trained-model rows (median).",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
    ]
    for r in results:
        n = len(r["fire_queued"])
        lines.append(
            f"| {r['label']}: beat fire → run created (`queued_at` − minute), {n} fires "
            f"({'/'.join(r['fire_statuses'])}) | {_lag(r['fire_queued'])} | p99 ≤ 2 s |"
        )
        lines.append(
            f"| {r['label']}: beat fire → run started (`started_at` − minute) | {_lag(r['fire_started'])} | — |"
        )
        if r["fire_sent"]:
            lines.append(
                f"| {r['label']}: beat logged sending the {len(r['fire_sent'])} tasks (− minute) | "
                f"{min(r['fire_sent']):.2f}–{max(r['fire_sent']):.2f} s | — |"
            )
    for r in results:
        t = r["triggers"]
        med = {k: statistics.median(x[k] for x in t) for k in t[0]}
        lines.append(
            f"| {r['label']}: trigger → COMPLETED over HTTP, ml-100k IALS ({len(t)} runs) | "
            f"median {med['total']:.2f} s (min {min(x['total'] for x in t):.2f}, "
            f"max {max(x['total'] for x in t):.2f}); training_time {med['fit_artifact']:.2f} s | ≤ 3 s |"
        )
        lines.append(
            f"| {r['label']}: where it goes (medians) | POST {med['post']:.2f} · queue pickup {med['pickup']:.2f} · "
            f"data check + model row {med['run_setup']:.2f} · read CSV + holdout refit/score + file save "
            f"{med['read_holdout']:.2f} · fit + artifact {med['fit_artifact']:.2f} · finish + retention "
            f"{med['finish']:.2f} · seen by poller {med['observed']:.2f} s | — |"
        )
    for r in results:
        s = r["sync"]
        create_ms = [x * 1000 for x in s["create"]]
        sync_ms = [x * 1000 for x in s["sync"]]
        lines.append(
            f"| {r['label']}: {len(create_ms):,} schedules via `schedule_create` (row + `schedule_sync`) | "
            f"{statistics.mean(create_ms):.1f} ms each (p99 {_pct(create_ms, 99):.1f}); `schedule_sync` alone "
            f"{statistics.mean(sync_ms):.1f} ms (p99 {_pct(sync_ms, 99):.1f}) | — |"
        )
        n = s["report"]["synced"]
        lines.append(
            f"| {r['label']}: `schedule_reconcile` over {n:,} schedules | {s['reconcile_s']:.1f} s "
            f"({1000 * s['reconcile_s'] / max(n, 1):.1f} ms each) | — |"
        )
        lines.append(
            f"| {r['label']}: beat idle with {len(create_ms):,} enabled schedules, {IDLE_SECONDS} s | "
            f"{r['beat_cpu_pct']:.2f} % of one core (beat RSS {r['beat_rss_before_mb']:.0f} MB before them, "
            f"{r['beat_rss_mb']:.0f} MB with them) | — |"
        )
    loads = " · ".join(f"{r['label']} {r['load'][0]:.1f} → {r['load'][1]:.1f}" for r in results)
    lines.append(
        f"| 1-min load average at start → end (others' work on the machine skews every row) | {loads} "
        f"on {os.cpu_count()} cores | — |"
    )
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="recotem-bench-rt-"))
    df = pd.read_csv(ML100K, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    ml_csv, tiny_csv = tmp / "ml100k.csv", tmp / "tiny.csv"
    df.to_csv(ml_csv, index=False)
    df[df.user_id <= 30].to_csv(tiny_csv, index=False)
    results = [Backend("embedded", tmp / "embedded", {}, ml_csv, tiny_csv).run()]
    if postgres_available() and redis_available(REDIS_URL):
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        try:
            with fresh_postgres_database("recotem_bench_rt") as db_url:
                results.append(
                    Backend(
                        "PG",
                        tmp / "pg",
                        {"DATABASE_URL": db_url, "CELERY_BROKER_URL": REDIS_URL},
                        ml_csv,
                        tiny_csv,
                    ).run()
                )
        finally:
            redis.Redis.from_url(REDIS_URL).flushdb()
    else:
        log("PostgreSQL or Redis not available: embedded only")
    print(render(results))
    log(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sync-child"]:
        sync_child(int(sys.argv[2]))
    else:
        main()
