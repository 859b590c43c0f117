"""Ten times the data, measured (issue 13, item 5), through real processes.

One case = a synthetic MovieLens-shaped interaction log (power-law users and items, fixed seed,
distinct pairs, written as CSV into a temp dir), then, against a fresh PostgreSQL database and a
private Redis with live `recotem web`, `recotem worker --concurrency 1` and `recotem inference`:

1. raw fit: irspack's `IALSRecommender(X).learn()` with default parameters on the same matrix,
   in a child process (read with pyarrow, ids factorised; only `learn()` is timed);
2. upload: `POST /api/v1/training_data/` (201 with counts), wall time and the web process's
   peak RSS (the parse runs in a child process whose own peak is read from the web log);
3. train: an IALS model with default parameters, POST -> COMPLETED, and -> test metrics ready
   (the holdout evaluation runs after the model is stored); the model's phase `timings`;
4. deploy: a slot with the model, POST -> the inference process answers for it;
5. predict: wrk c=16 for 15 s on random known users, cutoff 10 (p50 / p99 / rps);
6. tuning: 20 trials (IALS, RP3beta, TopPop...) with `timeout_overall`, wall + trials done + timings;
7. a retraining run (trigger with force, auto_deploy with the gate), wall + the run's timings;
and the peak RSS (VmHWM) of every process.

    python bench/scale.py --case scale5m          # or scale20m; prints a markdown fragment
    python bench/run.py --case scale20m           # the same, appended to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from inference import LUA, wrk  # noqa: E402

from recotem.testing.processes import (  # noqa: E402
    descendants,
    free_port,
    fresh_postgres_database,
    peak_rss_mb,
    postgres_available,
    private_redis,
    process_env,
    recotem,
    rss_mb,
    running,
    wait_http_ok,
)

CASES = {  # rows, users, items
    "scale1m": (1_000_000, 40_000, 10_000),
    "scale5m": (5_000_000, 83_000, 25_000),
    "scale20m": (20_000_000, 140_000, 27_000),
}
PASSWORD = "bench-pass-123"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "SKIPPED"}


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synthetic_csv(path: Path, rows: int, n_users: int, n_items: int, seed: int = 20) -> None:
    """``rows`` distinct (user, item) pairs: user activity ~ rank^-0.6, item popularity ~
    (rank + 10)^-1 (Zipf-like, as in MovieLens), ranks shuffled onto ids; every user >= 1 row."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.6
    user_p /= user_p.sum()
    item_p = 1.0 / (np.arange(n_items) + 10.0)
    item_p /= item_p.sum()
    user_of_rank, item_of_rank = rng.permutation(n_users), rng.permutation(n_items)
    item_cdf = np.cumsum(item_p)

    def draw(users: np.ndarray) -> np.ndarray:
        picks = np.minimum(np.searchsorted(item_cdf, rng.random(users.size)), n_items - 1)
        return np.unique(users.astype(np.int64) * n_items + item_of_rank[picks])

    # No user may want more than a fifth of the catalogue: at 20 M rows the heaviest user of a
    # rank^-0.6 law would otherwise ask for more distinct items than exist, and the top-up
    # below would never finish.
    cap = n_items // 5
    counts = np.minimum(1 + rng.multinomial(rows - n_users, user_p), cap)
    pairs = draw(user_of_rank[np.repeat(np.arange(n_users), counts)])
    while pairs.size < rows:  # top up the pairs lost to repeats, from users below the cap
        have = np.bincount(pairs // n_items, minlength=n_users)[user_of_rank]
        weights = np.where(have < cap, user_p, 0.0)
        user_cdf = np.cumsum(weights / weights.sum())
        need = int((rows - pairs.size) * 1.2) + 1000
        extra = user_of_rank[np.minimum(np.searchsorted(user_cdf, rng.random(need)), n_users - 1)]
        pairs = np.union1d(pairs, draw(extra))
    pairs = rng.permutation(pairs)
    first = np.zeros(pairs.size, dtype=bool)
    first[np.unique(pairs // n_items, return_index=True)[1]] = True
    pairs = np.delete(pairs, np.flatnonzero(~first)[: pairs.size - rows])
    table = pa.table(
        {
            "user_id": pairs // n_items,
            "item_id": pairs % n_items,
            "timestamp": rng.integers(1_500_000_000, 1_700_000_000, pairs.size),
        }
    )
    pacsv.write_csv(table, path)


def raw_fit_child(csv_path: str) -> None:
    """The reference: irspack alone on the same interactions (only ``learn()`` is timed)."""
    import resource

    import pyarrow.csv as pacsv
    import scipy.sparse as sps
    from irspack import IALSRecommender

    table = pacsv.read_csv(csv_path)
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    X = sps.csr_matrix((np.ones(len(u)), (u, i)))
    X.data[:] = 1.0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # irspack's progress bar is not our answer
        IALSRecommender(X).learn()
    fit = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"fit_s": fit, "peak_mb": peak, "nnz": int(X.nnz)}))


def _ts(value: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else 0.0


def _wait(api: httpx.Client, url: str, done: Any, timeout: float, poll: float = 0.5) -> Any:
    t0 = time.time()
    while True:
        body = api.get(url).json()
        if done(body):
            return body
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{url}: {body}")
        time.sleep(poll)


def _peaks(procs: dict[str, Any]) -> dict[str, float]:
    """VmHWM of each process; a worker's is the largest of it and its pool children."""
    out = {}
    for name, proc in procs.items():
        out[name] = max([peak_rss_mb(proc.pid)] + [peak_rss_mb(p) for p in descendants(proc.pid)])
    return out


def run_case(
    case: str, trials: int, tuning_timeout: int, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    rows, n_users, n_items = CASES[case]
    tmp = Path(tempfile.mkdtemp(prefix=f"recotem-bench-{case}-"))
    res: dict[str, Any] = {"case": case, "rows": rows}
    try:
        csv = tmp / f"{case}.csv"
        t0 = time.perf_counter()
        synthetic_csv(csv, rows, n_users, n_items)
        res["csv_mb"] = csv.stat().st_size / 1e6
        log(f"{case}: {res['csv_mb']:.0f} MB CSV in {time.perf_counter() - t0:.0f} s")
        if "raw" not in skip:
            t0 = time.perf_counter()
            raw = subprocess.run(
                [sys.executable, __file__, "--raw-fit", str(csv)],
                capture_output=True,
                text=True,
                check=True,
            )
            res["raw"] = json.loads(raw.stdout.strip().splitlines()[-1])
            res["raw"]["process_s"] = time.perf_counter() - t0
            log(f"raw fit {res['raw']}")
        with ExitStack() as stack:
            db = stack.enter_context(fresh_postgres_database(prefix="h_scale_lean_bench"))
            redis_url = stack.enter_context(private_redis(tmp))
            env = process_env(
                tmp / "data",
                DATABASE_URL=db,
                CELERY_BROKER_URL=redis_url,
                RECOTEM_ADMIN_PASSWORD=PASSWORD,
                RECOTEM_MAX_UPLOAD_MB="2048",
                PYTHONHASHSEED="0",
            )
            subprocess.run(recotem("migrate"), env=env, check=True, capture_output=True)
            port, iport = free_port(), free_port()
            base, ibase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{iport}"
            procs = {
                "web": stack.enter_context(
                    running(recotem("web", "--port", str(port)), env, tmp / "web.log")
                ),
                "worker": stack.enter_context(
                    running(recotem("worker", "--concurrency", "1"), env, tmp / "worker.log")
                ),
                "inference": stack.enter_context(
                    running(recotem("inference", "--port", str(iport)), env, tmp / "inf.log")
                ),
            }
            wait_http_ok(f"{base}/api/v1/ping/", timeout=120, proc=procs["web"])
            wait_http_ok(f"{ibase}/health", timeout=120, proc=procs["inference"])
            api = stack.enter_context(httpx.Client(base_url=base, timeout=3600))
            token = api.post(
                "/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
            ).json()["access"]
            api.headers["Authorization"] = f"Bearer {token}"
            res["idle_mb"] = {n: rss_mb(p.pid) for n, p in procs.items()}
            pid = api.post(
                "/api/v1/project/",
                json={
                    "name": case,
                    "user_column": "user_id",
                    "item_column": "item_id",
                    "time_column": "timestamp",
                },
            ).json()["id"]

            # 2. upload
            t0 = time.perf_counter()
            with csv.open("rb") as fh:
                r = api.post(
                    "/api/v1/training_data/", data={"project": pid}, files={"file": (csv.name, fh)}
                )
            res["upload_s"] = time.perf_counter() - t0
            assert r.status_code == 201, r.text
            data = r.json()
            res["counts"] = (data["row_count"], data["n_users"], data["n_items"])
            res["web_peak_after_upload_mb"] = peak_rss_mb(procs["web"].pid)
            found = re.findall(r"peak RSS (\d+) MB", (tmp / "web.log").read_text())
            res["parse_child_peak_mb"] = float(found[-1]) if found else None
            took = re.findall(r"in a child process in ([\d.]+) s", (tmp / "web.log").read_text())
            res["parse_child_s"] = float(took[-1]) if took else None
            log(f"upload {res['upload_s']:.1f} s {res['counts']}")

            if "train" in skip:
                res["peaks_mb"] = _peaks(procs)
                return res
            # 3. train
            cfg = api.post(
                "/api/v1/model_configuration/",
                json={
                    "project": pid,
                    "name": "ials",
                    "recommender_class_name": "IALSRecommender",
                    "parameters_json": {},
                },
            ).json()
            t0 = time.perf_counter()
            tm = api.post(
                "/api/v1/trained_model/", json={"configuration": cfg["id"], "data_loc": data["id"]}
            ).json()
            tm = _wait(
                api, f"/api/v1/trained_model/{tm['id']}/", lambda b: b["status"] in FINAL, 7200
            )
            res["train_completed_s"] = time.perf_counter() - t0
            assert tm["status"] == "COMPLETED", tm
            tm = _wait(api, f"/api/v1/trained_model/{tm['id']}/", lambda b: b["test_metrics"], 7200)
            res["train_metrics_s"] = time.perf_counter() - t0
            res["train_timings"] = tm["timings"]
            res["test_metrics"] = {k: tm["test_metrics"].get(k) for k in ("ndcg@10", "recall@10")}
            res["artifact_mb"] = (tm["filesize"] or 0) / 1e6
            log(
                f"train {res['train_completed_s']:.1f} s / {res['train_metrics_s']:.1f} s {tm['timings']}"
            )

            # 4. deploy
            key = api.post(
                "/api/v1/api_keys/", json={"project": pid, "name": "bench", "scopes": ["predict"]}
            ).json()["key"]
            t0 = time.perf_counter()
            slot = api.post(
                "/api/v1/deployment_slot/",
                json={"project": pid, "name": "main", "trained_model": tm["id"], "weight": 100},
            ).json()
            path = f"/predict/project/{pid}"
            headers = {"X-API-Key": key}
            user = "0"
            while True:
                try:
                    r = httpx.post(
                        ibase + path,
                        json={"user_id": user, "cutoff": 10},
                        headers=headers,
                        timeout=60,
                    )
                except httpx.TimeoutException:  # the model is loading (and precomputing)
                    continue
                if r.status_code == 200 and r.json().get("items"):
                    break
                if time.perf_counter() - t0 > 1800:
                    raise TimeoutError(r.text)
                time.sleep(0.2)
            res["deploy_s"] = time.perf_counter() - t0
            log(f"deploy {res['deploy_s']:.1f} s")

            # 5. predict at c=16
            script = tmp / "predict.lua"
            users = [str(u) for u in np.random.default_rng(1).integers(0, n_users, 2000)]
            script.write_text(
                LUA % {"users": ",".join(f'"{u}"' for u in users), "path": path, "key": key}
            )
            if shutil.which("wrk"):
                wrk(ibase + path, script, 16, 3)  # warm-up
                res["predict"] = wrk(ibase + path, script, 16, 15)
                log(f"predict {res['predict']}")

            if "tuning" in skip:
                res["peaks_mb"] = _peaks(procs)
                return res
            # 6. tuning
            split = api.post("/api/v1/split_config/", json={"project": pid, "name": "s"}).json()
            ev = api.post(
                "/api/v1/evaluation_config/", json={"project": pid, "name": "e", "cutoff": 10}
            ).json()
            t0 = time.perf_counter()
            job = api.post(
                "/api/v1/parameter_tuning_job/",
                json={
                    "project": pid,
                    "data": data["id"],
                    "split": split["id"],
                    "evaluation": ev["id"],
                    "n_trials": trials,
                    "timeout_overall": tuning_timeout,
                },
            )
            assert job.status_code == 201, job.text
            job = _wait(
                api,
                f"/api/v1/parameter_tuning_job/{job.json()['id']}/",
                lambda b: b["status"] in FINAL,
                tuning_timeout * 4 + 3600,
                poll=2,
            )
            res["tuning"] = {
                "wall_s": time.perf_counter() - t0,
                "status": job["status"],
                "trials_done": job["trials_done"],
                "best_score": job["best_score"],
                "timings": job["timings"],
                "error": job["error"][:200],
            }
            log(f"tuning {res['tuning']}")

            if "retraining" in skip:
                res["peaks_mb"] = _peaks(procs)
                return res
            # 7. a retraining run
            sched = api.post(
                "/api/v1/retraining_schedule/",
                json={
                    "project": pid,
                    "model_configuration": cfg["id"],
                    "cron_expression": "0 3 * * *",
                    "auto_deploy": True,
                    "deploy_slot": slot["id"],
                },
            )
            assert sched.status_code == 201, sched.text
            t0 = time.perf_counter()
            r = api.post(
                f"/api/v1/retraining_schedule/{sched.json()['id']}/trigger/", json={"force": True}
            )
            assert r.status_code == 202, r.text
            run = _wait(
                api,
                f"/api/v1/retraining_run/{r.json()['run_id']}/",
                lambda b: b["status"] in FINAL,
                7200,
                poll=1,
            )
            res["retraining"] = {
                "wall_s": time.perf_counter() - t0,
                "status": run["status"],
                "gate": run.get("gate_decision"),
                "timings": run["timings"],
            }
            log(f"retraining {res['retraining']}")
            res["peaks_mb"] = _peaks(procs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def render(r: dict[str, Any]) -> str:
    peaks = r.get("peaks_mb", {})
    lines = [
        f"### scale: {r['case']} ({r['rows']:,} interactions, {r['csv_mb']:.0f} MB CSV)",
        "",
        "| step | result | goal |",
        "|---|---|---|",
    ]
    if "raw" in r:
        lines.append(
            f"| raw irspack IALS fit (defaults), same matrix | {r['raw']['fit_s']:.1f} s, peak {r['raw']['peak_mb']:.0f} MB | — |"
        )
    lines.append(
        f"| upload (201, counts {r['counts']}) | {r['upload_s']:.1f} s; web peak {r['web_peak_after_upload_mb']:.0f} MB; parse child {_fmt(r.get('parse_child_s'))} s, peak {_fmt(r['parse_child_peak_mb'])} MB | ≤ 60 s, web ≤ 1024 MB |"
    )
    if "train_completed_s" not in r:
        lines.append(
            "| peak RSS (VmHWM) | "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items())
            + " | — |"
        )
        return "\n".join(lines) + "\n"
    raw = r["raw"]["fit_s"]
    lines += [
        f"| train IALS, POST → COMPLETED | {r['train_completed_s']:.1f} s = **{r['train_completed_s'] / raw:.2f}× raw fit** | ≤ 1.5× |",
        f"| … → test metrics stored (holdout after COMPLETED) | {r['train_metrics_s']:.1f} s = {r['train_metrics_s'] / raw:.2f}× raw fit | — |",
        f"| model timings | {r['train_timings']} | — |",
        f"| deploy → inference answers | {r['deploy_s']:.1f} s (artifact {r['artifact_mb']:.0f} MB) | — |",
    ]
    if "predict" in r:
        p = r["predict"]
        lines.append(
            f"| predict c=16, 15 s | p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms, {p['rps']:.0f} req/s, {p['errors']} errors | p99 ≤ 10 ms |"
        )
    if "tuning" in r:
        t = r["tuning"]
        lines.append(
            f"| tuning, {t['trials_done']} trials done, {t['status']} | {t['wall_s']:.0f} s; timings {t['timings']} | — |"
        )
    if "retraining" in r:
        rt = r["retraining"]
        lines.append(
            f"| retraining run ({rt['status']}, gate {rt['gate']}) | {rt['wall_s']:.0f} s; timings {rt['timings']} | — |"
        )
    lines.append(
        "| peak RSS (VmHWM) | "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items())
        + f"; idle {', '.join(f'{k} {v:.0f} MB' for k, v in r['idle_mb'].items())} | worker ≤ 6144 MB |"
    )
    lines.append("")
    lines.append(f"Quality on the holdout: {r['test_metrics']}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tuning-timeout", type=int, default=600)
    parser.add_argument("--raw-fit")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated steps to leave out: raw, train (and what follows), tuning, retraining",
    )
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.raw_fit:
        raw_fit_child(args.raw_fit)
        return 0
    if not postgres_available():
        raise SystemExit("PostgreSQL at 127.0.0.1:5432 is needed for this bench")
    out = []
    results = []
    for case in args.case or ["scale5m", "scale20m"]:
        skip = frozenset(s for s in args.skip.split(",") if s)
        r = run_case(case, args.trials, args.tuning_timeout, skip)
        results.append(r)
        out.append(render(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
