"""Data sources: read fresh interactions at the start of each run (SQL query, CSV/Parquet URL,
or the project's stored feedback events).

Kinds whose rows live in a higher room register a reader here (``register_reader``, from that
app's ``AppConfig.ready``): the ``events`` reader belongs to the experiments app, which owns the
events table, so this module never imports it.

Every source URL is checked against RECOTEM_ALLOWED_SOURCE_HOSTS when it is saved and again
before every read (DNS answers and the allow list can change); a database on the same server
as Recotem's own (by resolved address and port, whatever its name) is never a valid source.
A new ``TrainingData`` snapshot is stored only when the content fingerprint differs from the
project's newest snapshot, so an unchanged source costs no disk space and the run's data
check then skips.

Reading cannot write or escape: SQL runs read-only with a statement timeout and a row cap
(``recotem.lib.sqlsource``); URLs are fetched from the address that was checked, with checked
redirects, a byte cap and a deadline (``recotem.lib.safehttp``). Snapshots are parsed with the
upload limits (``recotem.projects.limits``). Error messages never repeat what a source sent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from recotem.core.exceptions import ApplicationError
from recotem.lib import safehttp
from recotem.lib.netguard import UrlNotAllowed, check_sqlalchemy_url_allowed, check_url_allowed
from recotem.ml.datafile import DataLimitExceeded, InteractionDataError, detect_format
from recotem.projects.limits import data_limits, limit_message
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.projects.validation import event_types_errors, window_days_errors

# Connect, between reads, whole download (seconds).
DOWNLOAD_TIMEOUTS = safehttp.Timeouts(connect=10.0, read=60.0, total=600.0)
SQL_STATEMENT_TIMEOUT_SECONDS = 600.0
_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz", ".parquet.gz")


class SourceError(Exception):
    """The source could not be read; ``retryable`` is False for configuration errors."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# A reader writes the source's interactions to a file in the given folder (named by the
# project's columns) and returns its path; it raises SourceError when it cannot.
SnapshotReader = Callable[[DataSource, Path], Path]
_READERS: dict[str, SnapshotReader] = {}


def register_reader(kind: str, reader: SnapshotReader) -> None:
    """Let the app that owns a kind's rows read them (called from its ``AppConfig.ready``)."""
    _READERS[kind] = reader


def source_check(
    *,
    kind: str,
    url: str,
    query: str,
    event_types: list[str] | None = None,
    window_days: int | None = None,
) -> None:
    """Raise ApplicationError (400) for a source the policy refuses or that cannot work."""
    if kind == DataSource.Kind.EVENTS:
        _check_events(url=url, query=query, event_types=event_types, window_days=window_days)
        return
    if event_types is not None or window_days is not None:
        field = "event_types" if event_types is not None else "window_days"
        raise ApplicationError(
            "Only an events source has event_types and window_days.", field=field
        )
    try:
        _check_allowed(kind, url)
    except UrlNotAllowed as exc:
        raise ApplicationError(str(exc), field="url") from None
    if kind == DataSource.Kind.SQL and not query.strip():
        raise ApplicationError("An SQL source needs a query.", field="query")
    if kind == DataSource.Kind.URL:
        if query.strip():
            raise ApplicationError("A URL source has no query.", field="query")
        name = _file_name(url)
        if not name.lower().endswith(_SUFFIXES):
            raise ApplicationError(
                "The URL path must end in .csv, .tsv or .parquet (optionally .gz) so the format is known.",
                field="url",
            )


def _check_events(
    *, url: str, query: str, event_types: list[str] | None, window_days: int | None
) -> None:
    if url.strip():
        raise ApplicationError("An events source has no URL.", field="url")
    if query.strip():
        raise ApplicationError("An events source has no query.", field="query")
    for field, errors in (
        ("event_types", event_types_errors(event_types)),
        ("window_days", window_days_errors(window_days)),
    ):
        if errors:
            raise ApplicationError(errors[0], field=field)


def _check_allowed(kind: str, url: str) -> None:
    if kind == DataSource.Kind.EVENTS:
        return  # the project's own table: nothing leaves the database

    allowed = settings.RECOTEM_ALLOWED_SOURCE_HOSTS
    if kind == DataSource.Kind.SQL:
        check_sqlalchemy_url_allowed(
            url,
            allowed_hosts=allowed,
            own_database=settings.DATABASES["default"],
            allow_own_server=False,
        )
    elif kind == DataSource.Kind.URL:
        check_url_allowed(url, allowed_hosts=allowed)
    else:
        raise UrlNotAllowed(f"Unknown source kind '{kind}'.")


def source_create(
    *,
    project: Project,
    kind: str,
    url: str = "",
    query: str = "",
    event_types: list[str] | None = None,
    window_days: int | None = None,
) -> DataSource:
    source_check(kind=kind, url=url, query=query, event_types=event_types, window_days=window_days)
    return DataSource.objects.create(
        project=project,
        kind=kind,
        url=url.strip(),
        query=query,
        event_types=event_types,
        window_days=window_days,
    )


def source_update(*, source: DataSource, **fields: Any) -> DataSource:
    for key, value in fields.items():
        setattr(source, key, value)
    source_check(
        kind=source.kind,
        url=source.url,
        query=source.query,
        event_types=source.event_types,
        window_days=source.window_days,
    )
    source.save()
    return source


def _file_name(url: str) -> str:
    return PurePosixPath(urlsplit(url).path).name or "source.csv"


def source_read(*, source: DataSource) -> TrainingData:
    """Read the source; return a new snapshot, or the newest one when the content is unchanged.

    Raises SourceError (retryable for network/database/parse errors, not for a refused URL).
    Records ``last_read_at``/``last_error`` on the source.
    """
    project = source.project
    try:
        _check_allowed(source.kind, source.url)
    except UrlNotAllowed as exc:
        _record(source, str(exc))
        raise SourceError(f"Data source refused: {exc}", retryable=False) from None
    from recotem.ml.data import read_interactions, summarize  # a worker's job: load here

    with tempfile.TemporaryDirectory(prefix="recotem-source-") as tmp:
        try:
            if source.kind == DataSource.Kind.SQL:
                path = _read_sql(source, Path(tmp))
            elif source.kind == DataSource.Kind.URL:
                path = _download(source, Path(tmp))
            else:
                path = _read_registered(source, Path(tmp))
            # A download is a file someone else crafted; a SQL result was written by us.
            crafted = path if source.kind == DataSource.Kind.URL else None
            df = read_interactions(
                path, original_name=path.name, **project.columns, **data_limits(crafted)
            )
        except SourceError as exc:
            _record(source, str(exc))
            raise
        except DataLimitExceeded as exc:
            _record(source, limit_message(exc))
            raise SourceError(
                f"Data source refused: {limit_message(exc)}", retryable=False
            ) from None
        except InteractionDataError as exc:
            # The fetched bytes are not the caller's to see (a source may point anywhere the
            # allow list permits): say what is wrong without quoting any of them.
            message = exc.content_free
            _record(source, message)
            raise SourceError(f"Data source returned unusable data: {message}") from None
        summary = summarize(df, **project.columns)
        del df
        newest = TrainingData.objects.filter(project=project).order_by("-id").first()
        if newest is not None and newest.fingerprint == summary.fingerprint:
            _record(source, "")
            return newest
        snapshot = training_data_create_from_frame_file(
            project=project, path=path, name=path.name, data_source_id=source.pk
        )
    _record(source, "")
    return snapshot


def _record(source: DataSource, error: str) -> None:
    DataSource.objects.filter(pk=source.pk).update(
        last_read_at=timezone.now(), last_error=error[:4000]
    )


def _read_registered(source: DataSource, tmp: Path) -> Path:
    reader = _READERS.get(source.kind)
    if reader is None:
        raise SourceError(f"No reader for data sources of kind '{source.kind}'.", retryable=False)
    return reader(source, tmp)


def _read_sql(source: DataSource, tmp: Path) -> Path:
    """Run the query read-only, streamed to Parquet, at most RECOTEM_MAX_ROWS rows."""
    # pyarrow is loaded by the worker that reads a source, never by web or beat for the import.
    from recotem.lib.sqlsource import SqlSourceError, read_sql_to_parquet

    path = tmp / "sql-source.parquet"
    try:
        read_sql_to_parquet(
            source.url,
            source.query,
            path,
            max_rows=data_limits()["max_rows"],
            statement_timeout_seconds=SQL_STATEMENT_TIMEOUT_SECONDS,
        )
    except SqlSourceError as exc:
        raise SourceError(str(exc), retryable=exc.retryable) from None
    return path


def _download(source: DataSource, tmp: Path) -> Path:
    """GET the URL from the address that was checked, at most RECOTEM_MAX_UPLOAD_MB."""
    name = _file_name(source.url)
    detect_format(name)  # raises for an unknown suffix before any byte is fetched
    path = tmp / name
    try:
        safehttp.download_to_file(
            source.url,
            path,
            allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS,
            max_bytes=settings.RECOTEM_MAX_UPLOAD_MB * 2**20,
            timeouts=DOWNLOAD_TIMEOUTS,
        )
    except (safehttp.FetchRefused, safehttp.FetchTooLarge) as exc:
        raise SourceError(f"Fetching the source was refused: {exc}", retryable=False) from None
    except safehttp.FetchError as exc:
        raise SourceError(f"Fetching the source failed: {exc}", retryable=exc.retryable) from None
    return path


@transaction.atomic
def source_delete(*, source: DataSource) -> None:
    source.delete()


__all__ = [
    "SnapshotReader",
    "SourceError",
    "register_reader",
    "source_check",
    "source_create",
    "source_delete",
    "source_read",
    "source_update",
]
