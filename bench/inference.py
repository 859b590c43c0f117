"""Inference benchmark (issue 4): IALS on MovieLens-100k behind `POST /inference/predict/project/{id}`,
driven by wrk from this machine at c=1 and c=16 (20 s each), beside a bare ASGI endpoint served the
same way (one uvicorn process each); then a hot swap under c=16 load.

    python bench/inference.py            # prints a markdown section and appends it to BENCHMARKS.md
    BENCH_SECONDS=5 python bench/inference.py   # a quick run

Needs the Debian package `wrk` (apt-get install -y wrk).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from recotem.inference.testing import free_port, isolated_env, run_cli, start_server, stop_server  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
REFERENCE = {  # recotem 2.1.0 `serve`, measured on this kind of machine (issue 4)
    1: {"rps": 214, "p50": 4.6, "p99": 8.4},
    16: {"rps": 253, "p50": None, "p99": 231.0},
}

LUA = """
local users = {%(users)s}
local path = "%(path)s"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(os.time() + (seed or 0) * 7919)
end
request = function()
  local u = users[math.random(#users)]
  return wrk.format(nil, path, nil, '{"user_id":"' .. u .. '","cutoff":10}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99),
    latency.mean, summary.duration))
end
"""


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, status_errors, socket_errors, p50, p99, _mean, duration_us = map(int, match.groups())
    return {
        "requests": requests,
        "rps": requests / (duration_us / 1e6),
        "p50": p50 / 1000,
        "p99": p99 / 1000,
        "errors": status_errors + socket_errors,
        "status_errors": status_errors,  # non-2xx answers
        "socket_errors": socket_errors,  # connect/read/write errors and wrk's 2 s timeouts
    }


def swap_under_load(env: dict[str, str], base: str, world: dict, script: Path) -> dict[str, float]:
    """wrk c=16 for 12 s; at 4 s the slot is pointed at the second model in another process."""
    url = f"{base}/inference/predict/project/{world['project_id']}"
    result: dict[str, float] = {}
    load = threading.Thread(target=lambda: result.update(wrk(url, script, 16, 12)))
    load.start()
    time.sleep(4)
    new_model = world["model_ids"][1]
    run_cli(env, "set-model", "--slot", str(world["slot_ids"][0]), "--model", str(new_model))
    changed = time.monotonic()
    seen = None
    with httpx.Client(headers={"X-API-Key": world["key"]}) as client:
        while time.monotonic() - changed < 7:
            r = client.post(url, json={"user_id": "1"})
            if r.status_code == 200 and r.json()["model_id"] == new_model:
                seen = time.monotonic() - changed
                break
            time.sleep(0.02)
    load.join()
    return {
        "failed": result["errors"],
        "requests": result["requests"],
        "swap_seconds": seen if seen is not None else float("nan"),
    }


def ml100k_workdir(name: str) -> tuple[Path, Path, pd.DataFrame]:
    """A fresh temp dir holding MovieLens-100k as ``ml100k.csv`` (also returned as a frame) and an
    empty ``data`` dir.

    Exits when wrk or the data set is missing: both load benches need them.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    if not ML100K.exists():
        raise SystemExit(f"MovieLens-100k not found at {ML100K}")
    tmp = Path(tempfile.mkdtemp(prefix=f"recotem-bench-{name}-"))
    df = pd.read_csv(
        ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )
    csv = tmp / "ml100k.csv"
    df.to_csv(csv, index=False)
    (tmp / "data").mkdir()
    return tmp, csv, df


def main() -> str:
    tmp, csv, df = ml100k_workdir("inference")
    env = isolated_env(tmp / "data")
    t0 = time.monotonic()
    world = json.loads(
        run_cli(
            env,
            "setup",
            "--csv",
            str(csv),
            "--models",
            'IALS:{"n_components": 64}',
            'IALS:{"n_components": 32}',
            "--weights",
            "100",
        )
    )
    print(
        f"set up and trained in {time.monotonic() - t0:.1f} s: {world['model_ids']}",
        file=sys.stderr,
    )
    path = f"/inference/predict/project/{world['project_id']}"
    users = sorted(df["user_id"].astype(str).unique().tolist())
    script = tmp / "predict.lua"
    script.write_text(
        LUA % {"users": ",".join(f'"{u}"' for u in users), "path": path, "key": world["key"]}
    )

    rows: dict[str, dict[int, dict[str, float]]] = {"recotem": {}, "bare": {}}
    port, bare_port = free_port(), free_port()
    proc = start_server("recotem.inference.app:application", env, port)
    base = f"http://127.0.0.1:{port}"
    bare = None
    try:
        sample = httpx.post(
            base + path, json={"user_id": "1", "cutoff": 10}, headers={"X-API-Key": world["key"]}
        )
        sample.raise_for_status()
        assert len(sample.json()["items"]) == 10
        size = len(sample.content)
        bare = start_server(
            "bare_asgi:app",
            {**env, "BARE_RESPONSE_BYTES": str(size), "PYTHONPATH": str(ROOT / "bench")},
            bare_port,
        )
        urls = {"recotem": base + path, "bare": f"http://127.0.0.1:{bare_port}{path}"}
        for url in urls.values():
            wrk(url, script, 16, 3)  # warm-up (every user's answer memoised once)
        # Interleaved, so both servers see the same background load on this shared machine.
        for c in (1, 16):
            for name, url in urls.items():
                rows[name][c] = wrk(url, script, c, SECONDS)
        swap = swap_under_load(env, base, world, script)
    finally:
        stop_server(proc)
        if bare is not None:
            stop_server(bare)

    ours, ref, base_rows = rows["recotem"], REFERENCE, rows["bare"]
    lines = [
        "### Inference (issue 4): `POST /inference/predict/project/{id}`, IALS (64 factors) on ml-100k",
        "",
        f"wrk on the same machine, random known users (943), cutoff 10, {SECONDS} s per row; one uvicorn "
        f"process per server; response {size} bytes (bare endpoint returns the same size). "
        f"`uname -a`: {subprocess.run(['uname', '-a'], capture_output=True, text=True).stdout.strip()}; "
        f"nproc {os.cpu_count()}.",
        "",
        "| server | c | req/s | p50 ms | p99 ms | non-2xx/errors |",
        "|---|---|---|---|---|---|",
    ]
    for c in (1, 16):
        r = ref[c]
        lines.append(
            f"| reference recotem 2.1.0 `serve` (issue's figures, same machine kind, not re-run) | {c} | {r['rps']} | {r['p50'] or '—'} | {r['p99']} | — |"
        )
        for name, label in (
            ("recotem", "recotem inference"),
            ("bare", "bare ASGI (same JSON parse, same size)"),
        ):
            m = rows[name][c]
            lines.append(
                f"| {label} | {c} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['errors']} |"
            )
    ratio16 = ours[16]["rps"] / base_rows[16]["rps"] * 100
    ratio1 = ours[1]["rps"] / base_rows[1]["rps"] * 100
    lines += [
        "",
        f"Throughput vs bare: {ratio1:.0f} % at c=1, {ratio16:.0f} % at c=16 (goal ≥ 50 %). "
        f"Goals: ≥ 1,250 req/s at c=16 ({ours[16]['rps']:.0f}), p99 ≤ 25 ms at c=16 ({ours[16]['p99']:.2f}), "
        f"p50 ≤ 1.5 ms at c=1 ({ours[1]['p50']:.2f}); vs reference {ours[16]['rps'] / ref[16]['rps']:.1f}× at c=16.",
        "",
        f"Hot swap under c=16 load (slot pointed at a second IALS model from another process): "
        f"{swap['failed']} failed of {swap['requests']} requests; new model served {swap['swap_seconds']:.2f} s "
        f"after the change was committed (goal: 0 failed, ≤ 5 s).",
        "",
    ]
    return "\n".join(lines)


def _called_by_runner() -> bool:
    try:
        return "bench/run.py" in Path(f"/proc/{os.getppid()}/cmdline").read_text().replace(
            "\0", " "
        )
    except OSError:
        return False


if __name__ == "__main__":
    section = main()
    print(section)
    if not _called_by_runner() and not os.environ.get(
        "BENCH_NO_APPEND"
    ):  # bench/run.py appends our stdout itself, with the same header
        out = ROOT / "BENCHMARKS.md"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if not out.exists():
            out.write_text("# Benchmarks\n\nAppended by `make bench`; newest last.\n")
        with out.open("a") as fh:
            fh.write(
                f"\n## {stamp} — {platform.node()} · {os.cpu_count()} cores (bench/inference.py)\n\n{section}"
            )
