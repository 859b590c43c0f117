"""SQL sources cannot write or escape: real SQLite files, real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recotem.lib import sqlsource
from recotem.lib.sqlsource import (
    SqlRowLimitExceeded,
    SqlSourceError,
    read_sql_to_parquet,
    sqlite_connect_read_only,
    wrap_query,
)
from recotem.ml.data import read_interactions

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql://root:@127.0.0.1:3306/test"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime (ns)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    db = tmp_path / "sources" / "shop.db"
    db.parent.mkdir()
    (tmp_path / "elsewhere").mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE events (user_id TEXT, item_id TEXT, ts INTEGER)")
    con.executemany(
        "INSERT INTO events VALUES (?, ?, ?)", [(f"u{i}", f"i{i % 7}", 1000 + i) for i in range(50)]
    )
    con.commit()
    con.close()
    return db


def _tables(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT name FROM sqlite_master ORDER BY name")]
    finally:
        con.close()


def test_it_reads_a_sqlite_query_to_parquet(shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = read_sql_to_parquet(
        f"sqlite:///{shop}",
        "SELECT user_id, item_id, ts FROM events WHERE item_id LIKE 'i%' ORDER BY ts;  ",
        out,
        max_rows=1000,
        batch_rows=7,
    )
    assert (result.rows, result.columns) == (50, ["user_id", "item_id", "ts"])
    df = read_interactions(out, user_column="user_id", item_column="item_id", time_column="ts")
    assert len(df) == 50
    assert df["user_id"].iloc[0] == "u0"


SQLITE_ATTACKS = [
    "VACUUM INTO '{elsewhere}/copy.db'",
    "VACUUM",
    "ATTACH DATABASE '{elsewhere}/new.db' AS x",
    "CREATE TABLE stolen (a)",
    "DROP TABLE events",
    "INSERT INTO events VALUES ('x', 'y', 1)",
    "UPDATE events SET ts = 0",
    "DELETE FROM events",
    "PRAGMA journal_mode = WAL",
    "PRAGMA query_only = OFF",
    "SELECT 1; DROP TABLE events",
    "SELECT 1) AS a; VACUUM INTO '{elsewhere}/copy2.db' /*",
    "WITH x AS (SELECT 1) INSERT INTO events SELECT 'a', 'b', 2 FROM x",
    "SELECT * FROM events -- trailing comment",
]


def test_it_refuses_writes_and_escapes_on_sqlite_before_they_run(
    shop: Path, tmp_path: Path
) -> None:
    before = _snapshot(tmp_path)
    tables = _tables(shop)
    for attack in SQLITE_ATTACKS[:-1]:
        query = attack.format(elsewhere=tmp_path / "elsewhere")
        with pytest.raises(SqlSourceError) as info:
            read_sql_to_parquet(f"sqlite:///{shop}", query, tmp_path / "out.parquet", max_rows=10)
        assert info.value.retryable is False, query
        assert _snapshot(tmp_path) == before, query  # nothing new on disk, db bytes + mtime same
    assert _tables(shop) == tables
    # A trailing comment cannot swallow the wrapper's closing parenthesis.
    read_sql_to_parquet(
        f"sqlite:///{shop}", SQLITE_ATTACKS[-1], tmp_path / "ok.parquet", max_rows=50
    )


def test_it_refuses_writes_at_the_sqlite_connection_even_without_the_wrapper(
    shop: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    # The attack is real: mode=ro alone lets VACUUM INTO and ATTACH create files.
    plain = sqlite3.connect(f"{shop.as_uri()}?mode=ro", uri=True)
    plain.execute(f"VACUUM INTO '{elsewhere}/proof.db'")
    plain.execute(f"ATTACH DATABASE '{elsewhere}/proof2.db' AS x")
    plain.close()
    assert sorted(os.listdir(elsewhere)) == ["proof.db", "proof2.db"]
    for name in ("proof.db", "proof2.db"):
        (elsewhere / name).unlink()
    before = _snapshot(tmp_path)
    con = sqlite_connect_read_only(shop)
    try:
        for attack in SQLITE_ATTACKS[:10]:
            with pytest.raises(sqlite3.DatabaseError):
                con.execute(attack.format(elsewhere=elsewhere)).fetchall()
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(50,)]
    finally:
        con.close()
    assert _snapshot(tmp_path) == before
    assert _tables(shop) == ["events"]


def test_it_never_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(f"sqlite:///{missing}", "SELECT 1", tmp_path / "o.parquet", max_rows=1)
    assert "unable to open" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_it_stops_an_endless_query_at_the_row_limit(shop: Path, tmp_path: Path) -> None:
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    out = tmp_path / "out.parquet"
    started = time.monotonic()
    with pytest.raises(SqlRowLimitExceeded) as info:
        read_sql_to_parquet(f"sqlite:///{shop}", endless, out, max_rows=100_000)
    assert time.monotonic() - started < 5
    assert info.value.limit == 100_000
    assert "row limit (max_rows=100000)" in str(info.value)
    assert not out.exists()


def test_it_times_out_a_runaway_sqlite_query(shop: Path, tmp_path: Path) -> None:
    slow = "SELECT COUNT(*) FROM events a, events b, events c, events d, events e"
    started = time.monotonic()
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(
            f"sqlite:///{shop}",
            slow,
            tmp_path / "o.parquet",
            max_rows=1,
            statement_timeout_seconds=0.3,
        )
    assert time.monotonic() - started < 3
    assert "timed out" in str(info.value)
    assert info.value.retryable is True


def test_it_stores_mixed_sqlite_types_as_text(tmp_path: Path) -> None:
    db = tmp_path / "mixed.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (user_id, item_id)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(1, 10), (2, 11), ("x3", 12), (None, 1.5)])
    con.commit()
    con.close()
    out = tmp_path / "o.parquet"
    read_sql_to_parquet(f"sqlite:///{db}", "SELECT * FROM t", out, max_rows=10, batch_rows=2)
    table = pq.read_table(out)
    assert table.column("user_id").to_pylist() == ["1", "2", "x3", None]
    assert table.column("item_id").to_pylist() == [10.0, 11.0, 12.0, 1.5]


def test_it_gives_short_errors_without_echoing_the_query(shop: Path, tmp_path: Path) -> None:
    marker = "SECRET_MARKER_7f3a"
    query = (
        "SELECT nope FROM events WHERE user_id IN (" + ", ".join(["'x'"] * 2000) + f") -- {marker}"
    )
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(f"sqlite:///{shop}", query, tmp_path / "o.parquet", max_rows=1)
    message = str(info.value)
    assert "no such column: nope" in message
    assert marker not in message and "\n" not in message and len(message) < 250


def test_it_refuses_unknown_drivers_and_empty_queries(shop: Path, tmp_path: Path) -> None:
    with pytest.raises(SqlSourceError, match="driver 'pg8000'"):
        read_sql_to_parquet("postgresql+pg8000://u@h/db", "SELECT 1", tmp_path / "o", max_rows=1)
    with pytest.raises(SqlSourceError, match="not supported"):
        read_sql_to_parquet("mssql://u@h/db", "SELECT 1", tmp_path / "o", max_rows=1)
    with pytest.raises(SqlSourceError, match="empty"):
        wrap_query(" ;; ")


# --- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture()
def pg_table() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        con = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not reachable")
    name = f"guard_src_{uuid.uuid4().hex[:10]}"
    con.execute(f"CREATE TABLE {name} (user_id text, item_id text, ts bigint)")
    con.execute(
        f"INSERT INTO {name} SELECT 'u' || g, 'i' || (g % 5), g FROM generate_series(1, 30) g"
    )
    con.execute(
        f"CREATE FUNCTION {name}_write() RETURNS int LANGUAGE sql AS "
        f"$$ INSERT INTO {name} VALUES ('w', 'w', 0) RETURNING 1 $$"
    )
    try:
        yield name
    finally:
        con.execute(f"DROP FUNCTION IF EXISTS {name}_write()")
        con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute(f"DROP TABLE IF EXISTS {name}_new")
        con.close()


def _pg_count(table: str) -> int:
    import psycopg

    with psycopg.connect(PG_URL) as con:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


def test_it_reads_postgresql_and_refuses_writes(pg_table: str, tmp_path: Path) -> None:
    out = tmp_path / "pg.parquet"
    result = read_sql_to_parquet(
        PG_URL, f"SELECT user_id, item_id, ts FROM {pg_table}", out, max_rows=100, batch_rows=4
    )
    assert result.rows == 30
    with pytest.raises(SqlSourceError, match="twice"):
        read_sql_to_parquet(PG_URL, f"SELECT ts, ts FROM {pg_table}", out, max_rows=100)
    for attack in (
        f"INSERT INTO {pg_table} VALUES ('x', 'y', 1)",
        f"CREATE TABLE {pg_table}_new (a int)",
        f"DROP TABLE {pg_table}",
        f"WITH w AS (INSERT INTO {pg_table} VALUES ('x', 'y', 1) RETURNING *) SELECT * FROM w",
        "SET TRANSACTION READ WRITE",
        f"SELECT 1) AS a; INSERT INTO {pg_table} VALUES ('x', 'y', 1); SELECT (1",
    ):
        with pytest.raises(SqlSourceError):
            read_sql_to_parquet(PG_URL, attack, out, max_rows=100)
    # A plain SELECT that writes through a function: only the read-only transaction stops it.
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(PG_URL, f"SELECT {pg_table}_write()", out, max_rows=100)
    assert "read-only transaction" in str(info.value)
    assert _pg_count(pg_table) == 30


def test_it_streams_postgresql_and_stops_at_the_row_limit(pg_table: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SqlRowLimitExceeded):
        read_sql_to_parquet(
            PG_URL,
            # generate_series materialises its result; a join of two small ones streams.
            "SELECT a.g AS user_id FROM generate_series(1, 100000) AS a(g), "
            "generate_series(1, 100000) AS b(g)",
            tmp_path / "o.parquet",
            max_rows=50_000,
        )
    # A client-side cursor would fetch ten billion rows first.
    assert time.monotonic() - started < 10


def test_it_times_out_a_slow_postgresql_query(pg_table: str, tmp_path: Path) -> None:
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(
            PG_URL, "SELECT pg_sleep(5)", tmp_path / "o", max_rows=1, statement_timeout_seconds=0.3
        )
    assert "timed out" in str(info.value)
    assert info.value.retryable is True


# --- MariaDB / MySQL ----------------------------------------------------------------------------
@pytest.fixture()
def maria_db() -> Iterator[str]:
    pymysql = pytest.importorskip("pymysql")
    try:
        con = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", autocommit=True
        )
    except pymysql.err.OperationalError:
        pytest.skip("MariaDB is not reachable")
    name = f"guard_src_{uuid.uuid4().hex[:10]}"
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(
            f"CREATE TABLE {name}.events (user_id VARCHAR(20), item_id VARCHAR(20), ts BIGINT)"
        )
        cur.executemany(
            f"INSERT INTO {name}.events VALUES (%s, %s, %s)",
            [(f"u{i}", f"i{i % 3}", i) for i in range(25)],
        )
        cur.execute(
            f"CREATE FUNCTION {name}.write_one() RETURNS INT MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {name}.events VALUES ('w', 'w', 0); RETURN 1; END"
        )
    try:
        yield name
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        con.close()


def _maria_state(db: str) -> tuple[int, list[str]]:
    import pymysql

    con = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM events")
            count = int(cur.fetchone()[0])  # type: ignore[index]
            cur.execute("SHOW TABLES")
            return count, sorted(str(r[0]) for r in cur.fetchall())
    finally:
        con.close()


def test_it_reads_mariadb_and_refuses_writes_and_server_files(
    maria_db: str, tmp_path: Path
) -> None:
    url = f"mysql://root:@127.0.0.1:3306/{maria_db}"
    out = tmp_path / "m.parquet"
    assert (
        read_sql_to_parquet(url, "SELECT * FROM events", out, max_rows=99, batch_rows=4).rows == 25
    )
    outfile = f"/tmp/{maria_db}.txt"
    for attack in (
        "INSERT INTO events VALUES ('x', 'y', 1)",
        "CREATE TABLE stolen (a INT)",
        "DROP TABLE events",
        f"SELECT * FROM events INTO OUTFILE '{outfile}'",
        f"SELECT 1 AS a) s INTO OUTFILE '{outfile}' /*",
        "SELECT 1; INSERT INTO events VALUES ('x', 'y', 1)",
        "COMMIT",
    ):
        with pytest.raises(SqlSourceError):
            read_sql_to_parquet(url, attack, out, max_rows=99)
    with pytest.raises(SqlSourceError) as info:
        read_sql_to_parquet(url, "SELECT write_one()", out, max_rows=99)
    assert "READ ONLY transaction" in str(info.value)
    assert _maria_state(maria_db) == (25, ["events"])
    assert not os.path.exists(outfile)


def test_it_keeps_a_mariadb_session_read_only_even_for_ddl_without_the_wrapper(
    maria_db: str,
) -> None:
    # START TRANSACTION READ ONLY alone lets CREATE TABLE commit implicitly and run; the
    # session-wide READ ONLY refuses it.
    url = sqlsource._parse(f"mysql://root:@127.0.0.1:3306/{maria_db}")
    for statement in ("CREATE TABLE stolen (a INT)", "INSERT INTO events VALUES ('x', 'y', 1)"):
        with pytest.raises(Exception, match="READ ONLY"):
            with sqlsource._mysql_cursor(url, statement, 10, 5):
                pass
    assert _maria_state(maria_db) == (25, ["events"])


def test_it_streams_mariadb_and_stops_at_the_row_limit(maria_db: str, tmp_path: Path) -> None:
    url = f"mysql://root:@127.0.0.1:3306/{maria_db}"
    started = time.monotonic()
    with pytest.raises(SqlRowLimitExceeded):
        read_sql_to_parquet(
            url, "SELECT seq FROM seq_1_to_1000000000", tmp_path / "o", max_rows=50_000
        )
    # A buffered cursor (or draining the rest on close) would read a billion rows.
    assert time.monotonic() - started < 10
