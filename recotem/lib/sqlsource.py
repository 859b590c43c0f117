"""Read an SQL data source into a Parquet file without being able to write anything.

:func:`read_sql_to_parquet` runs one user query against PostgreSQL, MySQL/MariaDB or a SQLite
file and streams the rows to Parquet in batches, so memory stays bounded by the batch size and
a result larger than ``max_rows`` stops with :class:`SqlRowLimitExceeded`.

Layers, each enough on its own for the attacks it names:

* The query is wrapped as a derived table, ``SELECT * FROM (<query>) AS recotem_source``, so it
  must be a single SELECT (or VALUES/WITH ... SELECT): DDL, DML, ``VACUUM INTO``, ``ATTACH``,
  ``PRAGMA``, ``COMMIT``, ``SET``, MySQL's ``SELECT ... INTO OUTFILE`` and PostgreSQL's
  data-modifying ``WITH`` are syntax errors before anything runs. Drivers run one statement
  per call (sqlite3 refuses a second one, PostgreSQL's ``DECLARE`` takes one query, PyMySQL
  connects without ``MULTI_STATEMENTS``).
* SQLite: opened through a ``file:...?mode=ro`` URI (the file is never created or written),
  ``PRAGMA query_only=ON``, and an authorizer that allows only reads (``SELECT``, ``READ``,
  functions, recursive CTEs): ``ATTACH`` and ``VACUUM INTO`` (which attaches its target) are
  denied while the statement is compiled. A progress handler enforces the statement timeout.
* PostgreSQL: ``default_transaction_read_only`` and ``statement_timeout`` as connection
  options, and ``SET TRANSACTION READ ONLY`` before the query, read through a server-side
  cursor (``DECLARE``) in batches.
* MySQL/MariaDB: ``SET SESSION TRANSACTION READ ONLY`` (needed: ``CREATE TABLE`` inside a mere
  ``START TRANSACTION READ ONLY`` commits it implicitly and runs), then ``START TRANSACTION
  READ ONLY``, ``max_execution_time`` (MySQL, ms) or ``max_statement_time`` (MariaDB, s), read
  through an unbuffered cursor in batches.

A read-only transaction does not stop side effects that a server grants through privileges
(PostgreSQL's ``lo_export``/``dblink``, any function the user may call): give the source a
role that may only SELECT.

Errors are :class:`SqlSourceError` with a short message: the first line of the driver's
message, capped at 200 characters, never the SQL text SQLAlchemy adds on later lines.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "SqlReadResult",
    "SqlRowLimitExceeded",
    "SqlSourceError",
    "read_sql_to_parquet",
    "wrap_query",
]

_MESSAGE_CHARS: Final = 200
_DRIVERS: Final = {
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
    "sqlite": "pysqlite",
}
# sqlite3 authorizer action codes that only read.
_SQLITE_READS: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_SQLITE_PROGRESS_OPS: Final = 10_000


class SqlSourceError(Exception):
    """The SQL source could not be read; ``str()`` is short and safe to show.

    ``retryable`` is True when trying again later may help (the server was unreachable, the
    query timed out), False for errors in the URL, the query or the data.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class SqlRowLimitExceeded(SqlSourceError):
    """The query returned more than ``limit`` rows; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The query returned more than {limit:,} rows, the row limit (max_rows={limit}).",
            retryable=False,
        )
        self.limit = limit


@dataclass(frozen=True)
class SqlReadResult:
    path: Path
    rows: int
    columns: list[str]


class _Cursor(Protocol):
    @property
    def description(self) -> Sequence[Sequence[Any]] | None: ...

    def fetchmany(self, size: int = ..., /) -> Sequence[Sequence[Any]]: ...


def wrap_query(query: str) -> str:
    """The user's query as a derived table, so only a single SELECT can run.

    Trailing semicolons and whitespace are dropped; the closing parenthesis goes on its own
    line so a trailing ``-- comment`` cannot swallow it.
    """
    body = query.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body:
        raise SqlSourceError("The SQL query is empty.", retryable=False)
    return f"SELECT * FROM (\n{body}\n) AS recotem_source"


def read_sql_to_parquet(
    url: str,
    query: str,
    dest: str | Path,
    *,
    max_rows: int,
    batch_rows: int = 10_000,
    statement_timeout_seconds: float = 600.0,
    connect_timeout_seconds: float = 10.0,
) -> SqlReadResult:
    """Run ``query`` read-only against ``url`` and write the rows to the Parquet file ``dest``.

    Rows are fetched ``batch_rows`` at a time and written as they come; more than ``max_rows``
    rows raise :class:`SqlRowLimitExceeded` and leave no file. ``url`` is a SQLAlchemy URL
    (``postgresql[+psycopg]://``, ``mysql[+pymysql]://``, ``mariadb[+pymysql]://``,
    ``sqlite:////abs/path.db``); check it with
    :func:`recotem.lib.netguard.check_sqlalchemy_url_allowed` first. Column types come from
    the values; a column whose values do not share one type (SQLite) is stored as text.
    Raises :class:`SqlSourceError` for every failure.
    """
    if max_rows < 0 or batch_rows < 1:
        raise ValueError("max_rows must be >= 0 and batch_rows >= 1.")
    parsed = _parse(url)
    wrapped = wrap_query(query)
    dest = Path(dest)
    try:
        with _cursor(parsed, wrapped, statement_timeout_seconds, connect_timeout_seconds) as cur:
            columns = _column_names(cur)
            rows = _write_parquet(cur, columns, dest, max_rows=max_rows, batch_rows=batch_rows)
    except SqlSourceError:
        dest.unlink(missing_ok=True)
        raise
    except Exception as exc:
        dest.unlink(missing_ok=True)
        raise _translate(exc) from None
    return SqlReadResult(path=dest, rows=rows, columns=columns)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise SqlSourceError("Not a valid SQLAlchemy database URL.", retryable=False) from exc
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise SqlSourceError(
            f"Database type '{backend}' is not supported; use postgresql, mysql or sqlite.",
            retryable=False,
        )
    driver = parsed.get_driver_name()
    # SQLAlchemy's defaults (psycopg2, mysqlclient) are not installed; these drivers are.
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")
    elif driver != _DRIVERS[backend]:
        raise SqlSourceError(
            f"Database driver '{driver}' is not supported; use {backend}+{_DRIVERS[backend]}.",
            retryable=False,
        )
    return parsed


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    text = lines[0].strip() if lines else type(orig).__name__
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 1] + "…"
    return text


def _translate(exc: Exception) -> SqlSourceError:
    """Driver/SQLAlchemy errors as a short SqlSourceError (retryable for connection trouble)."""
    import psycopg
    import pymysql

    retryable = False
    if isinstance(exc, psycopg.OperationalError | pymysql.err.OperationalError | OSError):
        retryable = True
        code = getattr(exc, "args", (None,))[0]
        # Access denied (1044/1045/1142) and unknown database (1049) fail the same way next
        # time; other MySQL operational errors (lost connection, timeouts) may not.
        if isinstance(exc, pymysql.err.OperationalError) and code in (1044, 1045, 1049, 1142):
            retryable = False
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return SqlSourceError(f"The SQL query timed out: {_short(exc)}", retryable=True)
    if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
        return SqlSourceError("The SQL query timed out.", retryable=True)
    if isinstance(exc, sqlite3.DatabaseError) and "not authorized" in str(exc).lower():
        return SqlSourceError(
            f"SQL source refused: only reading queries are allowed ({_short(exc)}).",
            retryable=False,
        )
    return SqlSourceError(f"SQL source failed: {_short(exc)}", retryable=retryable)


def _column_names(cur: _Cursor) -> list[str]:
    if not cur.description:
        raise SqlSourceError("The SQL query returned no result set.", retryable=False)
    names = [str(d[0]) for d in cur.description]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SqlSourceError(
                f"The query returns the column '{name[:60]}' twice; give each column its own name.",
                retryable=False,
            )
        seen.add(name)
    return names


@contextmanager
def _cursor(
    url: URL, wrapped: str, statement_timeout: float, connect_timeout: float
) -> Iterator[_Cursor]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        with _sqlite_cursor(url, wrapped, statement_timeout) as cur:
            yield cur
    elif backend == "postgresql":
        with _postgres_cursor(url, wrapped, statement_timeout, connect_timeout) as cur:
            yield cur
    else:
        with _mysql_cursor(url, wrapped, statement_timeout, connect_timeout) as cur:
            yield cur


def _sqlite_authorizer(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def sqlite_connect_read_only(
    path: str | Path, *, timeout_seconds: float | None = None
) -> sqlite3.Connection:
    """A connection to an existing SQLite file that cannot write, attach or change settings.

    ``mode=ro`` (never creates or writes the file), ``PRAGMA query_only``, then an authorizer
    that allows only reads. With ``timeout_seconds``, every statement run on the connection is
    interrupted once that long has passed since it was opened. Raises
    ``sqlite3.OperationalError`` when the file does not exist.
    """
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        con.execute("PRAGMA query_only = ON")
        con.set_authorizer(_sqlite_authorizer)
        if timeout_seconds is not None:
            deadline = time.monotonic() + timeout_seconds
            con.set_progress_handler(lambda: int(time.monotonic() > deadline), _SQLITE_PROGRESS_OPS)
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def _sqlite_cursor(url: URL, wrapped: str, statement_timeout: float) -> Iterator[_Cursor]:
    if url.query:
        raise SqlSourceError("SQLite URLs take no options.", retryable=False)
    path = url.database or ""
    if not os.path.isabs(path):
        raise SqlSourceError(
            "A SQLite path must be absolute (sqlite:////abs/path.db).", retryable=False
        )
    con = sqlite_connect_read_only(path, timeout_seconds=statement_timeout)
    try:
        yield cast(_Cursor, con.execute(wrapped))
    finally:
        con.close()


def _connect_args(url: URL) -> tuple[list[Any], dict[str, Any]]:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        cargs, cparams = engine.dialect.create_connect_args(url)
    finally:
        engine.dispose()
    return list(cargs), dict(cparams)


@contextmanager
def _postgres_cursor(
    url: URL, wrapped: str, statement_timeout: float, connect_timeout: float
) -> Iterator[_Cursor]:
    import psycopg

    _, params = _connect_args(url)
    params.pop("context", None)
    timeout_ms = max(1, int(statement_timeout * 1000))
    params["options"] = (
        f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms} "
        f"-c idle_in_transaction_session_timeout={timeout_ms}"
    )
    params["connect_timeout"] = max(1, int(connect_timeout))
    con = psycopg.connect(**params)
    try:
        con.execute("SET TRANSACTION READ ONLY")
        cur = con.cursor(name="recotem_source")
        cur.execute(wrapped)
        yield cast(_Cursor, cur)
    finally:
        con.close()


@contextmanager
def _mysql_cursor(
    url: URL, wrapped: str, statement_timeout: float, connect_timeout: float
) -> Iterator[_Cursor]:
    import pymysql
    import pymysql.cursors
    from pymysql.constants import CLIENT

    _, params = _connect_args(url)
    params["client_flag"] = int(params.get("client_flag", 0)) & ~CLIENT.MULTI_STATEMENTS
    params.update(
        connect_timeout=max(1, int(connect_timeout)),
        read_timeout=max(1, int(statement_timeout)) + 30,
        local_infile=False,
        autocommit=False,
    )
    con = pymysql.connect(**params)
    try:
        with con.cursor() as setup:
            setup.execute("SELECT VERSION()")
            version = str((setup.fetchone() or ("",))[0])
            setup.execute("SET SESSION TRANSACTION READ ONLY")
            if "mariadb" in version.lower():
                setup.execute(f"SET SESSION max_statement_time = {float(statement_timeout):.3f}")
            else:
                setup.execute(f"SET SESSION max_execution_time = {int(statement_timeout * 1000)}")
            setup.execute("START TRANSACTION READ ONLY")
        cur = con.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(wrapped)
            yield cast(_Cursor, cur)
        finally:
            # Closing the cursor (or garbage-collecting its result) would read every row
            # left of an unbuffered result; forget it and let QUIT end the query instead.
            result = getattr(cur, "_result", None)
            if result is not None:
                result.unbuffered_active = False
            setattr(cur, "_result", None)  # noqa: B010 - private, no public way
    finally:
        con.close()


def _column_array(values: list[Any]) -> pa.Array:
    """One column of a batch, its type inferred; values without one common type become text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _widen(old: pa.DataType, new: pa.DataType) -> pa.DataType:
    if pa.types.is_null(old):
        return new
    if pa.types.is_null(new) or old == new:
        return old
    numbers = (pa.types.is_integer, pa.types.is_floating)
    if any(f(old) for f in numbers) and any(f(new) for f in numbers):
        return pa.float64()
    return pa.string()


class _ParquetSink:
    """Writes batches to one Parquet file; when a later batch needs a wider type for a column
    (SQLite is dynamically typed), the part already written is rewritten once with it."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        arrays = [_column_array([row[i] for row in rows]) for i in range(len(self.columns))]
        table = pa.Table.from_arrays(arrays, names=self.columns)
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            wider = pa.schema(
                [
                    pa.field(
                        name, _widen(self.schema.field(name).type, table.schema.field(name).type)
                    )
                    for name in self.columns
                ]
            )
            if wider != self.schema:
                self._rewrite(wider)
            table = table.cast(wider)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table)

    def _rewrite(self, schema: pa.Schema) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            old = self.path.with_name(self.path.name + ".old")
            os.replace(self.path, old)
            try:
                with pq.ParquetFile(old) as source:
                    self.writer = pq.ParquetWriter(self.path, schema)
                    for batch in source.iter_batches():
                        self.writer.write_table(pa.Table.from_batches([batch]).cast(schema))
            finally:
                old.unlink(missing_ok=True)
        self.schema = schema

    def close(self) -> None:
        if self.writer is None:
            schema = self.schema or pa.schema([pa.field(c, pa.string()) for c in self.columns])
            self.writer = pq.ParquetWriter(self.path, schema)
        self.writer.close()


def _write_parquet(
    cur: _Cursor, columns: list[str], dest: Path, *, max_rows: int, batch_rows: int
) -> int:
    sink = _ParquetSink(dest, columns)
    rows = 0
    try:
        while batch := cur.fetchmany(batch_rows):
            rows += len(batch)
            if rows > max_rows:
                raise SqlRowLimitExceeded(max_rows)
            sink.write(batch)
    finally:
        sink.close()
    return rows
