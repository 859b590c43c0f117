"""Foundation benchmarks: `recotem up` start-up to first HTTP 200, and a 100 MB CSV upload."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from recotem.testing.processes import (  # noqa: E402
    children,
    command_line,
    free_port,
    peak_rss_mb,
    process_env,
    recotem,
    running,
    wait_http_ok,
)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="recotem-bench-"))
    startups = []
    for run in range(3):
        port = free_port()
        env = process_env(tmp / f"data{run}", RECOTEM_ADMIN_PASSWORD="bench-pass-123")
        started = time.monotonic()
        with running(recotem("up", "--port", str(port)), env, tmp / f"up{run}.log") as up:
            wait_http_ok(f"http://127.0.0.1:{port}/api/v1/ping/", timeout=120, proc=up)
            startups.append(time.monotonic() - started)
            if run == 2:
                base = f"http://127.0.0.1:{port}"
                rng = np.random.default_rng(0)
                n = 4_000_000
                csv_path = tmp / "big.csv"
                pd.DataFrame(
                    {
                        "user_id": rng.integers(0, 200_000, n),
                        "item_id": rng.integers(0, 50_000, n),
                        "rating": rng.integers(1, 6, n),
                        "timestamp": rng.integers(1_500_000_000, 1_700_000_000, n),
                    }
                ).to_csv(csv_path, index=False)
                size_mb = csv_path.stat().st_size / 1e6
                web = next(pid for pid in children(up.pid) if "uvicorn" in command_line(pid))
                before = peak_rss_mb(web)
                token = httpx.post(
                    f"{base}/api/v1/auth/login/",
                    json={"username": "admin", "password": "bench-pass-123"},
                ).json()["access"]
                headers = {"Authorization": f"Bearer {token}"}
                project = httpx.post(
                    f"{base}/api/v1/project/",
                    json={
                        "name": "big",
                        "user_column": "user_id",
                        "item_column": "item_id",
                        "time_column": "timestamp",
                    },
                    headers=headers,
                ).json()
                t0 = time.monotonic()
                with open(csv_path, "rb") as fh:
                    response = httpx.post(
                        f"{base}/api/v1/training_data/",
                        data={"project": str(project["id"])},
                        files={"file": ("big.csv", fh)},
                        headers=headers,
                        timeout=600,
                    )
                upload_s = time.monotonic() - t0
                assert response.status_code == 201, response.text
                after = peak_rss_mb(web)
    print("### Foundation (`bench/foundation.py`)\n")
    print("| measure | value | goal |\n|---|---|---|")
    print(
        f"| `recotem up` on a fresh data dir → first HTTP 200 (3 runs) | median {statistics.median(startups):.1f} s (max {max(startups):.1f} s) | ≤ 15 s |"
    )
    print(f"| upload {size_mb:.0f} MB CSV (4,000,000 rows) over HTTP | {upload_s:.1f} s | — |")
    print(
        f"| web process peak RSS before → after that upload | {before:.0f} MB → {after:.0f} MB (+{after - before:.0f} MB) | body streamed to disk; only the project's columns parsed |"
    )


if __name__ == "__main__":
    main()
