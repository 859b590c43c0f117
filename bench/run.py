"""`make bench`: run every benchmark and append one dated section to BENCHMARKS.md.

Each bench/<name>.py prints a markdown fragment on stdout; this runner adds the machine and date
so numbers measured side by side stay together.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [
    "foundation.py",
    "ml_holdout.py",
    "ml_scale.py",
    "inference.py",
    "events.py",
    "retraining.py",
    "ui.py",
    "events_source.py",
    "scale.py",  # heavy (5M and 20M interactions); alone: `python bench/run.py --case scale20m`
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{platform.node()} · {os.cpu_count()} cores · {cpu} · {mem_gb:.0f} GiB · Python {platform.python_version()}"


def main(argv: list[str]) -> int:
    # `--case NAME` (repeatable) selects cases of bench/scale.py and runs only that bench.
    cases: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--case":
            cases += ["--case", next(it)]
        else:
            rest.append(arg)
    argv = rest or (["scale.py"] if cases else [])
    selected = [b for b in BENCHES if not argv or any(a in b for a in argv)]
    sections = []
    failed = 0
    for name in selected:
        script = ROOT / "bench" / name
        if not script.exists():
            continue
        print(f"== {name}", flush=True)
        result = subprocess.run(
            [sys.executable, str(script), *(cases if name == "scale.py" else [])],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        sys.stderr.write(result.stderr[-4000:])
        if result.returncode != 0:
            failed += 1
            sections.append(
                f"### {name}\n\nFAILED (exit {result.returncode}); see the console output.\n"
            )
        else:
            sections.append(result.stdout.strip() + "\n")
        print(result.stdout, flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = f"\n## {stamp} — {machine()}\n\n"
    out = ROOT / "BENCHMARKS.md"
    if not out.exists():
        out.write_text(
            "# Benchmarks\n\nAppended by `make bench`; newest last. Ratios are measured side by side in one run.\n"
        )
    with out.open("a") as fh:
        fh.write(header + "\n".join(sections))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
