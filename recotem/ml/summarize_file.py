"""Parse and fingerprint an interaction file in a short-lived process of its own.

Why a process: parsing a 93 MB upload inside the web process raised its RSS by ~200 MB for
good (the allocator keeps freed arenas, and pandas/pyarrow stay imported). A child process
that reads the file, summarises it and exits gives every byte back, and keeps the ML stack
out of the web process. The result is the same :class:`~recotem.ml.data.DataSummary` and the
same errors (:class:`~recotem.ml.data.DataLimitExceeded`, :class:`~recotem.ml.data.
InteractionDataError`, with their messages) as calling :func:`read_interactions` and
:func:`summarize` in-process.

Protocol: one JSON request on stdin, one JSON answer on stdout (exit 0). A crash (anything
but a data error) exits non-zero with the traceback on stderr.

    python -m recotem.ml.summarize_file < request.json
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .datafile import DataLimitExceeded, DataSummary, InteractionDataError

logger = logging.getLogger(__name__)


class SummaryProcessError(RuntimeError):
    """The child process failed for a reason that is not the data's fault."""


def _summarize(request: Mapping[str, Any]) -> dict[str, Any]:
    from .data import read_interactions, summarize

    columns = {
        "user_column": request["user_column"],
        "item_column": request["item_column"],
        "time_column": request.get("time_column"),
    }
    try:
        df = read_interactions(
            request["path"],
            original_name=request.get("original_name"),
            max_uncompressed_bytes=request.get("max_uncompressed_bytes"),
            max_rows=request.get("max_rows"),
            **columns,
        )
        summary = summarize(df, **columns)
    except DataLimitExceeded as exc:
        return {"ok": False, "kind": "limit", "limit": exc.limit, "value": exc.value}
    except InteractionDataError as exc:
        return {
            "ok": False,
            "kind": "data",
            "message": str(exc),
            "content_free": exc.content_free,
        }
    return {
        "ok": True,
        "row_count": summary.row_count,
        "n_users": summary.n_users,
        "n_items": summary.n_items,
        "fingerprint": summary.fingerprint,
    }


def summarize_in_subprocess(
    path: str | Path,
    *,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
    original_name: str | None = None,
    max_uncompressed_bytes: int | None = None,
    max_rows: int | None = None,
    timeout: float | None = None,
) -> DataSummary:
    """``summarize(read_interactions(path, ...))`` computed in a child Python process.

    Returns a :class:`~recotem.ml.data.DataSummary`; raises the same DataLimitExceeded /
    InteractionDataError the in-process call would, and SummaryProcessError if the child
    crashed or timed out. The caller's process never imports pandas or pyarrow for it.
    """
    request = {
        "path": str(path),
        "user_column": user_column,
        "item_column": item_column,
        "time_column": time_column,
        "original_name": original_name,
        "max_uncompressed_bytes": max_uncompressed_bytes,
        "max_rows": max_rows,
    }
    began = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SummaryProcessError(f"reading the file took longer than {timeout:g} s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise SummaryProcessError(f"the file reader exited with {done.returncode}: {tail}")
    answer = json.loads(done.stdout)
    logger.info(
        "parsed %s in a child process in %.1f s: peak RSS %.0f MB",
        path,
        time.perf_counter() - began,
        answer.get("peak_rss_mb", 0.0),
    )
    if answer["ok"]:
        return DataSummary(
            row_count=int(answer["row_count"]),
            n_users=int(answer["n_users"]),
            n_items=int(answer["n_items"]),
            fingerprint=str(answer["fingerprint"]),
        )
    if answer["kind"] == "limit":
        raise DataLimitExceeded(answer["limit"], int(answer["value"]))
    raise InteractionDataError(answer["message"], content_free=answer["content_free"])


def main() -> int:
    import resource

    request = json.loads(sys.stdin.buffer.read())
    answer = _summarize(request)
    # The child's own peak, so the cost of a parse stays visible after the process is gone.
    answer["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
