"""Bounded reads: gzip and Parquet bombs, row limits and previews that read only the start.

Memory is measured in a fresh child process (VmHWM before and after the read), so the peak
belongs to the read alone and not to whatever this test process did before.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recotem.ml.data import (
    DataLimitExceeded,
    InteractionDataError,
    read_interactions,
    read_preview,
    read_table,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
MB = 2**20
ROW = b"u1,i1,1700000000\n"


def _gzip_bomb(path: Path, *, members: int = 32, member_mb: int = 64) -> int:
    """Concatenated gzip members (valid gzip) of repeated rows; returns the inflated size."""
    chunk = ROW * (member_mb * MB // len(ROW))
    member = gzip.compress(chunk, compresslevel=9)
    header = b"user,item,ts\n"
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(members):
            fh.write(member)
    return len(header) + members * len(chunk)


def _in_child(call: str) -> dict[str, Any]:
    """Run `call` (an expression using recotem.ml.data as `data`) in a fresh interpreter."""
    script = textwrap.dedent(
        f"""
        import json, time
        from recotem.ml import data

        def hwm_mb():
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
            raise RuntimeError("no VmHWM")

        before = hwm_mb()
        started = time.monotonic()
        out = {{}}
        try:
            result = {call}
            out["rows"] = len(result)
            out["head"] = result.astype(str).values.tolist()[:3]
        except data.DataLimitExceeded as exc:
            out.update(limit=exc.limit, value=exc.value, message=str(exc))
        out["seconds"] = time.monotonic() - started
        out["growth_mb"] = hwm_mb() - before
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.csv.gz"
    inflated = _gzip_bomb(path)
    assert inflated > 2000 * MB  # 2 GB of rows ...
    assert path.stat().st_size < 6 * MB  # ... in about 5 MB of gzip
    return path


def test_it_refuses_a_gzip_bomb_at_the_uncompressed_limit_with_flat_memory(bomb: Path) -> None:
    out = _in_child(
        f"data.read_interactions({str(bomb)!r}, user_column='user', item_column='item', "
        f"time_column='ts', max_uncompressed_bytes={32 * MB})"
    )
    assert out["limit"] == "max_uncompressed_bytes"
    assert out["value"] == 32 * MB
    assert "uncompressed size limit" in out["message"]
    assert "max_uncompressed_bytes=33554432" in out["message"]
    assert out["growth_mb"] < 100, out
    assert out["seconds"] < 10, out


def test_it_refuses_a_gzip_bomb_at_the_row_limit_with_flat_memory(bomb: Path) -> None:
    out = _in_child(
        f"data.read_interactions({str(bomb)!r}, user_column='user', item_column='item', "
        "time_column='ts', max_rows=1_000_000)"
    )
    assert out["limit"] == "max_rows"
    assert "more than 1,000,000 rows" in out["message"]
    assert out["growth_mb"] < 100, out
    assert out["seconds"] < 10, out


def test_it_previews_the_first_rows_of_a_gzip_bomb_without_inflating_it(bomb: Path) -> None:
    out = _in_child(f"data.read_preview({str(bomb)!r}, 20, string_columns=['user', 'item'])")
    assert out["rows"] == 20
    assert out["head"][0] == ["u1", "i1", "1700000000"]
    assert out["growth_mb"] < 50, out
    assert out["seconds"] < 2, out


def _csv(path: Path, rows: int, sep: str = ",") -> Path:
    df = pd.DataFrame(
        {"user": [f"u{i}" for i in range(rows)], "item": ["i1"] * rows, "ts": range(rows)}
    )
    df.to_csv(path, index=False, sep=sep)
    return path


def test_it_stops_csv_and_tsv_at_the_row_limit(tmp_path: Path) -> None:
    for name, sep in (("a.csv", ","), ("a.tsv", "\t"), ("a.csv.gz", ",")):
        path = _csv(tmp_path / name, 1001, sep)
        with pytest.raises(DataLimitExceeded) as info:
            read_interactions(path, user_column="user", item_column="item", max_rows=1000)
        assert (info.value.limit, info.value.value) == ("max_rows", 1000)
        assert "row limit (max_rows=1000)" in str(info.value)
        assert isinstance(info.value, InteractionDataError)
        ok = read_interactions(path, user_column="user", item_column="item", max_rows=1001)
        assert len(ok) == 1001


def test_it_refuses_a_plain_file_over_the_uncompressed_limit_before_reading(
    tmp_path: Path,
) -> None:
    path = _csv(tmp_path / "a.csv", 5000)
    size = path.stat().st_size
    with pytest.raises(DataLimitExceeded) as info:
        read_table(path, required_columns=["user"], max_uncompressed_bytes=size - 1)
    assert info.value.limit == "max_uncompressed_bytes"
    assert len(read_table(path, required_columns=["user"], max_uncompressed_bytes=size)) == 5000


def test_it_stops_parquet_at_the_row_limit_from_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pd.DataFrame({"user": ["u"] * 5_000_000, "item": ["i"] * 5_000_000}).to_parquet(path)
    assert path.stat().st_size < MB
    started = time.monotonic()
    with pytest.raises(DataLimitExceeded) as info:
        read_table(path, required_columns=["user", "item"], max_rows=4_999_999)
    assert time.monotonic() - started < 0.5  # the footer says so; nothing is decoded
    assert info.value.limit == "max_rows"
    small = tmp_path / "b.parquet"
    pd.DataFrame({"user": ["u1", "u2", "u3"], "item": ["1", "2", "3"]}).to_parquet(small)
    with pytest.raises(DataLimitExceeded):
        read_table(small, required_columns=["user"], max_rows=2)
    assert len(read_table(small, required_columns=["user"], max_rows=3)) == 3


def test_it_refuses_a_parquet_dictionary_bomb_before_expanding_it(tmp_path: Path) -> None:
    # One 10 KB user id repeated 100,000 times: 1 GB once decoded, ~600 KB on disk.
    path = tmp_path / "bomb.parquet"
    ids = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(100_000, dtype=np.int32)), pa.array(["u" * 10_000])
    )
    table = pa.table({"user": ids, "item": pa.array(np.arange(100_000))})
    pq.write_table(table, path, store_schema=False)  # read back as plain strings
    assert path.stat().st_size < MB
    assert pq.ParquetFile(path).schema_arrow.field("user").type == pa.string()
    out = _in_child(
        f"data.read_table({str(path)!r}, required_columns=['user', 'item'], "
        f"string_columns=['user'], max_uncompressed_bytes={64 * MB})"
    )
    assert out["limit"] == "max_uncompressed_bytes", out
    assert out["growth_mb"] < 100, out


def test_it_refuses_parquet_whose_compressed_pages_inflate_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "zstd.parquet"
    table = pa.table({"user": pa.array(["u" * 10_000] * 20_000), "item": pa.array([1] * 20_000)})
    pq.write_table(table, path, use_dictionary=False, compression="zstd")
    assert path.stat().st_size < MB  # 200 MB of pages
    out = _in_child(
        f"data.read_table({str(path)!r}, required_columns=['user'], "
        f"max_uncompressed_bytes={64 * MB})"
    )
    assert out["limit"] == "max_uncompressed_bytes", out
    assert out["growth_mb"] < 30, out  # refused from the footer, before any page is read


def test_it_refuses_gzipped_parquet_past_the_limit_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "a.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame({"user": rng.integers(0, 10**9, 200_000).astype(str), "item": "i"}).to_parquet(raw)
    path = tmp_path / "a.parquet.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()))
    size = raw.stat().st_size
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(DataLimitExceeded):
        read_table(path, required_columns=["user"], max_uncompressed_bytes=size // 2)
    assert set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) <= before
    # For Parquet the limit also bounds the pages once inflated (more than the file itself).
    assert len(read_table(path, required_columns=["user"], max_uncompressed_bytes=20 * size)) == (
        200_000
    )


def test_it_stops_jsonl_at_the_row_and_uncompressed_limits(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"user": "u{i}", "item": "i{i}"}}\n' for i in range(1001)))
    with pytest.raises(DataLimitExceeded) as info:
        read_interactions(path, user_column="user", item_column="item", max_rows=1000)
    assert info.value.limit == "max_rows"
    assert len(read_interactions(path, user_column="user", item_column="item", max_rows=1001)) == (
        1001
    )
    bomb = tmp_path / "bomb.jsonl.gz"
    line = b'{"user": "u1", "item": "i1"}\n'
    member = gzip.compress(line * (64 * MB // len(line)), compresslevel=9)
    bomb.write_bytes(member * 8)  # 512 MB of lines in about 0.5 MB
    out = _in_child(
        f"data.read_interactions({str(bomb)!r}, user_column='user', item_column='item', "
        f"max_uncompressed_bytes={16 * MB})"
    )
    assert out["limit"] == "max_uncompressed_bytes", out
    assert out["growth_mb"] < 100, out


def test_it_previews_only_the_first_rows_of_large_files(tmp_path: Path) -> None:
    rows = 2_000_000
    df = pd.DataFrame(
        {"user": [f"u{i}" for i in range(rows)], "item": ["007"] * rows, "ts": range(rows)}
    )
    csv_path = tmp_path / "big.csv"
    df.to_csv(csv_path, index=False)
    parquet_path = tmp_path / "big.parquet"
    df.to_parquet(parquet_path, row_group_size=500_000)
    jsonl_path = tmp_path / "big.jsonl"
    df.head(500_000).to_json(jsonl_path, orient="records", lines=True)
    for path in (csv_path, parquet_path, jsonl_path):
        out = _in_child(f"data.read_preview({str(path)!r}, 20, string_columns=['user', 'item'])")
        assert out["rows"] == 20, (path, out)
        assert out["head"][1] == ["u1", "007", "1"], (path, out)
        assert out["seconds"] < 1.5, (path, out)
        assert out["growth_mb"] < 40, (path, out)


def test_it_keeps_ids_as_text_and_limits_optional(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("user,item,ts\n007,1,10\n7,2,20\n")
    df = read_interactions(path, user_column="user", item_column="item", time_column="ts")
    assert df["user"].tolist() == ["007", "7"]
    preview = read_preview(path, 1, string_columns=["user"])
    assert preview["user"].tolist() == ["007"]
    assert list(preview.columns) == ["user", "item", "ts"]
    with pytest.raises(ValueError):
        read_preview(path, 0)
    with pytest.raises(ValueError):
        read_table(path, required_columns=["user"], max_rows=-1)
