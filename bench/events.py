"""Events benchmark (issue 12): `POST /inference/events` in batches of 500 on PostgreSQL, one
inference process, beside that process's predict throughput.

    python bench/events.py                 # prints a markdown section (appended by bench/run.py)
    BENCH_SECONDS=5 python bench/events.py

Needs wrk and a PostgreSQL server (BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/);
the benchmark creates and drops its own database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from inference import LUA, ml100k_workdir, wrk  # noqa: E402

from recotem.inference.testing import free_port, isolated_env, run_cli, start_server, stop_server  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))
PG = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
DB_NAME = os.environ.get("BENCH_EVENTS_DB", "recotem_bench_events")
BATCH = 500
CONNECTIONS = 8

EVENTS_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99),
    latency.mean, summary.duration))
end
"""


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG + "postgres", autocommit=True) as conn:
        conn.execute(sql)


def main() -> str:
    tmp, csv, df = ml100k_workdir("events")
    _admin(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
    _admin(f'CREATE DATABASE "{DB_NAME}"')
    env = isolated_env(tmp / "data", DATABASE_URL=PG + DB_NAME)
    proc = None
    try:
        world = json.loads(
            run_cli(
                env,
                "setup",
                "--csv",
                str(csv),
                "--models",
                'IALS:{"n_components": 64}',
                "TopPop:{}",
                "--weights",
                "50",
                "50",
            )
        )
        port = free_port()
        proc = start_server("recotem.inference.app:application", env, port)
        base = f"http://127.0.0.1:{port}"
        predict_path = f"/inference/predict/project/{world['project_id']}"
        headers = {"X-API-Key": world["key"]}
        users = sorted(df["user_id"].astype(str).unique().tolist())
        # Real request ids: every event is attributed (its token verified) as in production.
        tokens = []
        with httpx.Client(base_url=base, headers=headers) as client:
            for user in users[:50]:
                r = client.post(predict_path, json={"user_id": user, "cutoff": 10})
                r.raise_for_status()
                tokens.append((user, r.json()["request_id"], r.json()["items"][0]["item_id"]))
            events = []
            for i in range(BATCH):
                user, token, item = tokens[i % len(tokens)]
                events.append(
                    {
                        "type": "impression" if i % 2 == 0 else "click",
                        "user_id": user,
                        "item_id": item,
                        "request_id": token,
                        "timestamp": 1_764_583_200 + i,
                    }
                )
            body = tmp / "events.json"
            body.write_bytes(json.dumps({"events": events}).encode())
            check = client.post("/inference/events", content=body.read_bytes(), headers=headers)
            assert check.status_code == 202 and check.json()["accepted"] == BATCH, check.text
        events_script = tmp / "events.lua"
        events_script.write_text(EVENTS_LUA % {"key": world["key"], "body": str(body)})
        predict_script = tmp / "predict.lua"
        predict_script.write_text(
            LUA
            % {
                "users": ",".join(f'"{u}"' for u in users),
                "path": predict_path,
                "key": world["key"],
            }
        )
        wrk(base + predict_path, predict_script, 16, 3)  # warm-up
        wrk(base + "/inference/events", events_script, CONNECTIONS, 3)
        load_before = os.getloadavg()[0]
        ev = wrk(base + "/inference/events", events_script, CONNECTIONS, SECONDS)
        pr = wrk(base + predict_path, predict_script, 16, SECONDS)
        load_after = os.getloadavg()[0]
        import psycopg

        with psycopg.connect(PG + DB_NAME) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM experiments_event").fetchone()[0]
    finally:
        if proc is not None:
            stop_server(proc)
        time.sleep(0.5)
        _admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    events_per_s = ev["rps"] * BATCH
    expected_rows = (ev["requests"]) * BATCH
    lines = [
        "### Events (issue 12): `POST /inference/events`, batches of 500, PostgreSQL",
        "",
        f"One uvicorn inference process; wrk c={CONNECTIONS} posting the same 500-event batch "
        f"(impressions and clicks, each with a signed request id, no event_id) for {SECONDS} s; "
        f"then predict throughput of the same process (wrk c=16, random known users, 50/50 "
        f"IALS/TopPop slots, sticky) for {SECONDS} s. `uname -a`: "
        f"{subprocess.run(['uname', '-a'], capture_output=True, text=True).stdout.strip()}; "
        f"nproc {os.cpu_count()}; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (other sessions share the machine).",
        "",
        "| endpoint | c | req/s | events/s | p50 ms | p99 ms | non-2xx | socket errors / timeouts |",
        "|---|---|---|---|---|---|---|---|",
        f"| events (500 per batch) | {CONNECTIONS} | {ev['rps']:.1f} | {events_per_s:,.0f} | "
        f"{ev['p50']:.1f} | {ev['p99']:.1f} | {ev['status_errors']} | {ev['socket_errors']} |",
        f"| predict (project route) | 16 | {pr['rps']:.0f} | — | {pr['p50']:.2f} | "
        f"{pr['p99']:.2f} | {pr['status_errors']} | {pr['socket_errors']} |",
        "",
        f"Goal ≥ 20,000 events/s: {events_per_s:,.0f}. Rows in the table at the end: {stored:,} "
        f"(the check batch, warm-up and {expected_rows:,} from the measured run; each 202 was a "
        "commit).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
