"""ML engine at scale (issue 3, item 4): one IALS fit on 1M interactions, and parallel tuning.

1. A synthetic power-law log (100,000 users x 20,000 items, 1,000,000 rows; seeded numpy) is
   written as CSV and, in a child process, read back through the upload path
   (`recotem.ml.data.read_interactions`: ids become Arrow-backed strings) and fitted with
   `recotem.ml.training.train_model(df, "IALSRecommender", {})` - irspack's default IALS
   parameters. The child reports the time, its peak RSS (/proc VmHWM, reset after reading so
   the fit's own peak is separate from the read's) and the size of the signed artifact
   (`recotem.ml.artifact.dump_artifact`).
2. Tuning wall time, `n_tasks_parallel` 1 versus 2, on a fresh PostgreSQL database + Redis with a
   live `recotem web` and two `celery -A recotem worker --concurrency 1` processes. Same job
   otherwise: ml-100k uploaded as CSV over HTTP, RG split defaults, ndcg@10, 16 trials, default
   algorithms, train_after_tuning (the default). Wall = POST -> status COMPLETED (polled every
   0.2 s). Two discarded warm-up jobs first (so no measured job pays a worker's first imports),
   then three jobs of each setting in the order 1-2-2-1-1-2; medians are reported.

    python bench/ml_scale.py        # prints a markdown fragment; bench/run.py appends it
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
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
REDIS_URL = "redis://127.0.0.1:6379/12"  # our own db number (tests use 11/13/14/15)
N_USERS, N_ITEMS, N_ROWS = 100_000, 20_000, 1_000_000
RSS_GOAL_MB = 1536
N_TRIALS = 16
ORDER = (1, 2, 2, 1, 1, 2)  # ABBAAB: neither setting always runs first


def log(message: str) -> None:
    print(f"[ml_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. the 1M-interaction IALS fit ------------------------------------------------------------
def synthetic_csv(path: Path, seed: int = 0) -> dict[str, Any]:
    """1,000,000 distinct (user, item) rows with power-law margins, written as a CSV upload.

    User activity ~ rank^-0.5 over 100,000 users (every user >= 1 row; the heaviest ~1,400),
    item popularity ~ (rank + 5)^-1 over 20,000 items (Zipf-like: the top 1 % of items hold about
    45 % of the rows); ranks are shuffled onto ids so popularity is unrelated to id order.
    Repeated pairs are dropped and topped up, so the matrix really holds 1M non-zeros.
    """
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, N_USERS + 1) ** 0.5
    user_p /= user_p.sum()
    item_p = 1.0 / (np.arange(N_ITEMS) + 5.0)
    item_p /= item_p.sum()
    user_of_rank, item_of_rank = rng.permutation(N_USERS), rng.permutation(N_ITEMS)

    def draw(users: np.ndarray) -> np.ndarray:
        return np.unique(
            users * N_ITEMS + item_of_rank[rng.choice(N_ITEMS, size=users.size, p=item_p)]
        )

    counts = 1 + rng.multinomial(N_ROWS - N_USERS, user_p)
    pairs = draw(user_of_rank[np.repeat(np.arange(N_USERS), counts)])
    while pairs.size < N_ROWS:  # top up the pairs lost to repeats, with the same user weights
        extra = user_of_rank[
            rng.choice(N_USERS, size=int((N_ROWS - pairs.size) * 1.1) + 100, p=user_p)
        ]
        pairs = np.union1d(pairs, draw(extra))
    pairs = rng.permutation(pairs)
    # Trim the surplus from users with more than one row, so every user keeps at least one.
    first = np.zeros(pairs.size, dtype=bool)
    first[np.unique(pairs // N_ITEMS, return_index=True)[1]] = True
    surplus = pairs.size - N_ROWS
    drop = np.flatnonzero(~first)[:surplus]
    pairs = np.delete(pairs, drop)
    users, items = pairs // N_ITEMS, pairs % N_ITEMS
    df = pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": rng.integers(1, 6, N_ROWS),
            "timestamp": rng.integers(1_500_000_000, 1_700_000_000, N_ROWS),
        }
    )
    df.to_csv(path, index=False)
    per_user = np.bincount(users, minlength=N_USERS)
    return {
        "rows": len(df),
        "users": int(np.unique(users).size),
        "items": int(np.unique(items).size),
        "csv_mb": path.stat().st_size / 1e6,
        "max_user": int(per_user.max()),
        "median_user": float(np.median(per_user)),
        "top1pct_items_share": float(
            np.sort(np.bincount(items))[::-1][: N_ITEMS // 100].sum() / N_ROWS
        ),
    }


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _plain(value: Any) -> Any:
    """irspack keeps some parameters as enums; report their names."""
    return value if isinstance(value, (int, float, str)) else getattr(value, "name", str(value))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def fit_child(csv_path: str) -> None:
    """Runs in its own process so nothing of the parent (or of generating the data) counts."""
    import resource

    import irspack  # noqa: F401  (imports counted in the baseline, not in the fit)

    from recotem.ml.artifact import dump_artifact
    from recotem.ml.data import read_interactions
    from recotem.ml.training import train_model

    out: dict[str, Any] = {"baseline_mb": _status_mb("VmRSS")}
    t0 = time.perf_counter()
    df = read_interactions(
        csv_path, user_column="user_id", item_column="item_id", time_column="timestamp"
    )
    out["read_s"] = time.perf_counter() - t0
    out["df_mb"] = float(df.memory_usage(deep=True).sum() / 2**20)
    out["dtypes"] = {c: str(t) for c, t in df.dtypes.items()}
    out["read_peak_mb"] = _status_mb("VmHWM")
    out["after_read_mb"] = _status_mb("VmRSS")
    out["peak_reset"] = _reset_peak()
    t0 = time.perf_counter()
    fitted = train_model(df, "IALSRecommender", {}, user_column="user_id", item_column="item_id")
    out["train_s"] = time.perf_counter() - t0
    out["learn_s"] = fitted.fit_seconds
    out["fit_peak_mb"] = _status_mb("VmHWM")
    out["after_fit_mb"] = _status_mb("VmRSS")
    out["params"] = fitted.parameters
    rec = fitted.recommender
    out["defaults"] = {
        k: _plain(getattr(rec, k))
        for k in ("n_components", "train_epochs", "solver_type", "loss_type", "alpha0", "reg")
    }
    out["n_users"], out["n_items"] = len(fitted.user_ids), len(fitted.item_ids)
    out["X_dtype"] = str(rec.X_train_all.dtype)
    out["X_nnz"] = int(rec.X_train_all.nnz)
    _reset_peak()
    t0 = time.perf_counter()
    artifact = dump_artifact(fitted, key=b"k" * 32, key_id="bench")
    out["dump_s"] = time.perf_counter() - t0
    out["artifact_mb"] = len(artifact) / 1e6
    out["dump_peak_mb"] = _status_mb("VmHWM")
    out["maxrss_mb"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # whole-process peak
    print(json.dumps(out))


def bench_fit(tmp: Path) -> dict[str, Any]:
    csv_path = tmp / "synthetic-1m.csv"
    t0 = time.perf_counter()
    data = synthetic_csv(csv_path)
    log(f"synthetic data in {time.perf_counter() - t0:.1f} s: {data}")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    t0 = time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--fit-child", str(csv_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    if child.returncode != 0:
        raise RuntimeError(f"fit child failed ({child.returncode}):\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = time.perf_counter() - t0
    result["data"] = data
    log(f"fit: {result}")
    return result


# --- 2. tuning wall time, n_tasks_parallel 1 vs 2 -----------------------------------------------
def _wait_job(api: httpx.Client, job_id: int, timeout: float = 600) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = api.get(f"/api/v1/parameter_tuning_job/{job_id}/")
        if r.status_code != 200:  # e.g. a shared PostgreSQL momentarily out of connections
            log(f"poll: HTTP {r.status_code}")
            return None
        body = r.json()
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    return wait_until(done, timeout, interval=0.2, message=f"tuning job {job_id} finished")


def _parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _tune(api: httpx.Client, ids: dict[str, int], n_trials: int, parallel: int) -> dict[str, Any]:
    t0 = time.monotonic()
    posted_at = time.time()
    r = api.post(
        "/api/v1/parameter_tuning_job/",
        json={
            "data": ids["data"],
            "split": ids["split"],
            "evaluation": ids["evaluation"],
            "n_trials": n_trials,
            "n_tasks_parallel": parallel,
        },
    )
    assert r.status_code == 201, r.text
    job = _wait_job(api, r.json()["id"])
    wall = time.monotonic() - t0
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"tuning job {job['id']} {job['status']}: {job['error']}")
    trials = api.get(f"/api/v1/parameter_tuning_job/{job['id']}/trials/").json()
    logs = api.get("/api/v1/task_log/", params={"tuning_job": job["id"], "page_size": 100}).json()
    entries = logs["results"] if isinstance(logs, dict) else logs
    finished = [e["contents"] for e in entries if e["contents"].startswith("Tuning task ")]
    pids = sorted({t.split("pid ")[1].split(")")[0] for t in finished})
    return {
        "id": job["id"],
        "parallel": parallel,
        "wall_s": wall,
        "trials": len(trials),
        "trial_s_sum": sum(t.get("duration") or 0 for t in trials),
        "queue_s": _parse_ts(job["started_at"]) - posted_at,
        "run_s": _parse_ts(job["completed_at"]) - _parse_ts(job["started_at"]),
        "best_score": job["best_score"],
        "test_ndcg": (job["test_metrics"] or {}).get("ndcg"),
        "worker_pids": pids,
        "finished_logs": finished,
    }


def _loadavg() -> float:
    """1-minute load average: the machine may be shared, so say how busy it was."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _connections(db_url: str) -> int:
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(db_url.rsplit("/", 1)[0] + "/test") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else -1


def bench_parallel(tmp: Path) -> dict[str, Any]:
    if not (postgres_available() and redis_available(REDIS_URL)):
        raise RuntimeError("PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379 are required")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # leftovers of an aborted run must not be consumed
    csv_path = tmp / "ml100k.csv"
    pd.read_csv(
        ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    ).to_csv(csv_path, index=False)
    data_dir = tmp / "data"
    data_dir.mkdir()
    with ExitStack() as stack:
        db_url = stack.enter_context(fresh_postgres_database("recotem_bench_scale"))
        env = process_env(
            data_dir,
            RECOTEM_ADMIN_USERNAME="admin",
            RECOTEM_ADMIN_PASSWORD=PASSWORD,
            SECRET_KEY="bench-" + "k" * 44,
            DATABASE_URL=db_url,
            CELERY_BROKER_URL=REDIS_URL,
        )
        subprocess.run(
            recotem("migrate"), env=env, check=True, capture_output=True, timeout=300, cwd=ROOT
        )
        port = free_port()
        stack.enter_context(
            running(
                recotem("web", "--host", "127.0.0.1", "--port", str(port)), env, tmp / "web.log"
            )
        )
        for i in range(2):
            stack.enter_context(
                running(
                    celery(
                        "worker",
                        "-l",
                        "INFO",
                        "--concurrency",
                        "1",
                        "-Q",
                        "celery,tuning,retraining",
                        "-n",
                        f"bench{i}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ),
                    env,
                    tmp / f"worker{i}.log",
                )
            )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{base}/api/v1/ping/", timeout=90)
            token = httpx.post(
                f"{base}/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
            ).json()["access"]
            api = stack.enter_context(
                httpx.Client(
                    base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
                )
            )
            project = api.post(
                "/api/v1/project/",
                json={
                    "name": "ml100k",
                    "user_column": "user_id",
                    "item_column": "item_id",
                    "time_column": "timestamp",
                },
            ).json()
            with open(csv_path, "rb") as fh:
                data = api.post(
                    "/api/v1/training_data/",
                    data={"project": str(project["id"])},
                    files={"file": ("ml100k.csv", fh)},
                )
            assert data.status_code == 201, data.text
            split = api.post(
                "/api/v1/split_config/", json={"project": project["id"], "scheme": "RG"}
            ).json()
            evaluation = api.post(
                "/api/v1/evaluation_config/",
                json={"project": project["id"], "cutoff": 10, "target_metric": "ndcg"},
            ).json()
            ids = {"data": data.json()["id"], "split": split["id"], "evaluation": evaluation["id"]}
            # Warm-up (discarded): each worker's first fits of each algorithm pay imports/JIT.
            warm = [_tune(api, ids, N_TRIALS, parallel) for parallel in (2, 1)]
            log(f"warm-up: {warm}")
            runs = []
            for parallel in ORDER:
                runs.append(_tune(api, ids, N_TRIALS, parallel))
                runs[-1]["pg_connections"] = _connections(db_url)
                runs[-1]["loadavg"] = _loadavg()
                log(f"n_tasks_parallel={parallel}: {runs[-1]}")
        except BaseException:
            for path in sorted(tmp.glob("*.log")):
                log(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
            raise
    return {"warm": warm, "runs": runs}


# --- report -----------------------------------------------------------------------------------------
def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recotem-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        fit = bench_fit(tmp)
        (tmp / "tune").mkdir()
        par = bench_parallel(tmp / "tune")
    log(f"total {time.monotonic() - started:.0f} s")

    d = fit["data"]
    shown = fit["defaults"]
    by = {n: [r for r in par["runs"] if r["parallel"] == n] for n in (1, 2)}
    wall = {n: statistics.median(r["wall_s"] for r in by[n]) for n in (1, 2)}

    def walls(n: int) -> str:
        return " / ".join(f"{r['wall_s']:.1f}" for r in by[n])

    def scores(n: int) -> str:
        return " / ".join(f"{r['best_score']:.4f}" for r in by[n])

    two = by[2][0]
    sums = ", ".join(f"{r['parallel']}→{r['trial_s_sum']:.1f} s" for r in par["runs"])
    queues = ", ".join(f"{r['queue_s']:.1f} s" for r in par["runs"])
    loads = ", ".join(f"{r['loadavg']:.1f}" for r in par["runs"])
    conns = ", ".join(str(r["pg_connections"]) for r in par["runs"])
    peak_ok = "✅" if fit["fit_peak_mb"] <= RSS_GOAL_MB else "❌"
    print("### ML engine at scale (`bench/ml_scale.py`)\n")
    print("| measure | value | goal |\n|---|---|---|")
    print(
        f"| synthetic power-law log | {d['rows']:,} rows, {d['users']:,} users × {d['items']:,} items, "
        f"{fit['X_nnz']:,} distinct pairs (matrix {fit['X_dtype']}); user rows median {d['median_user']:.0f} / max {d['max_user']:,}; "
        f"top 1 % of items = {d['top1pct_items_share']:.0%} of rows; CSV {d['csv_mb']:.0f} MB | — |"
    )
    print(
        f"| read through the upload path (`read_interactions`, Arrow strings) | {fit['read_s']:.1f} s; "
        f"DataFrame {fit['df_mb']:.0f} MB; RSS {fit['baseline_mb']:.0f} MB (imports) → "
        f"{fit['after_read_mb']:.0f} MB (peak {fit['read_peak_mb']:.0f} MB) | — |"
    )
    print(
        f"| one IALS fit, default parameters ({', '.join(f'{k}={v}' for k, v in shown.items())}): "
        f"`train_model` (matrix + learn) | {fit['train_s']:.1f} s (learn {fit['learn_s']:.1f} s) | — |"
    )
    print(
        f"| peak RSS of the fit process (DataFrame held, as in the worker) | {fit['fit_peak_mb']:.0f} MB "
        f"(RSS after fit {fit['after_fit_mb']:.0f} MB) {peak_ok} | ≤ {RSS_GOAL_MB} MB |"
    )
    print(
        f"| signed artifact (`dump_artifact`) | {fit['artifact_mb']:.1f} MB in {fit['dump_s']:.1f} s; "
        f"peak RSS while dumping {fit['dump_peak_mb']:.0f} MB; whole-process ru_maxrss "
        f"{fit['maxrss_mb']:.0f} MB | — |"
    )
    print(
        f"| tuning wall POST → COMPLETED, `n_tasks_parallel=1` ({N_TRIALS} trials, ml-100k, ndcg@10, "
        f"incl. final fit) | median {wall[1]:.1f} s ({walls(1)}); "
        f"best ndcg {scores(1)} | — |"
    )
    print(
        f"| same, `n_tasks_parallel=2` (chord of 2 trial tasks on one Optuna study) | "
        f"median {wall[2]:.1f} s ({walls(2)}); best ndcg {scores(2)}; trial tasks ran in "
        f"{len(two['worker_pids'])} worker pids | — |"
    )
    print(
        f"| speed-up parallel 2 vs 1 (median wall₁ / median wall₂) | {wall[1] / wall[2]:.2f}× | "
        f"measured ({os.cpu_count()} cores) |"
    )
    print(
        f"\nSet-up: PostgreSQL (fresh database) + Redis, a live `recotem web`, two "
        f"`celery -A recotem worker --concurrency 1` processes, {os.cpu_count()} cores; after two discarded "
        f"warm-up jobs, {len(ORDER)} measured jobs in the order {'-'.join(map(str, ORDER))}. With "
        f"n_tasks_parallel=1 the one task fits with irspack's default threads (all cores); with 2 each "
        f"task gets cores/2 threads. Sum of trial durations (n_tasks_parallel→s): "
        f"{sums}. Queue delay POST → RUNNING: {queues}. 1-min load average after each job: {loads} "
        f"(other work on the machine makes these walls noisy). PostgreSQL connections held by this stack "
        f"after each job: {conns} (connections are not kept between requests under ASGI)."
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fit-child":
        fit_child(sys.argv[2])
    else:
        main()
