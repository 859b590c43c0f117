"""Data sources: read fresh interactions at the start of each run (SQL query or CSV/Parquet URL).

Every source URL is checked against RECOTEM_ALLOWED_SOURCE_HOSTS when it is saved and again
before every read (DNS answers and the allow list can change); Recotem's own database is never
a valid source. A new ``TrainingData`` snapshot is stored only when the content fingerprint
differs from the project's newest snapshot, so an unchanged source costs no disk space and the
run's data check then skips.
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from recotem.core.exceptions import ApplicationError
from recotem.lib.netguard import UrlNotAllowed, check_sqlalchemy_url_allowed, check_url_allowed
from recotem.ml.data import InteractionDataError, detect_format, read_interactions, summarize
from recotem.projects.models import DataSource, Project, TrainingData

_TIMEOUT_SECONDS = 60
_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz", ".parquet.gz")


class SourceError(Exception):
    """The source could not be read; ``retryable`` is False for configuration errors."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def source_check(*, kind: str, url: str, query: str) -> None:
    """Raise ApplicationError (400) for a source the policy refuses or that cannot work."""
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


def _check_allowed(kind: str, url: str) -> None:
    allowed = settings.RECOTEM_ALLOWED_SOURCE_HOSTS
    if kind == DataSource.Kind.SQL:
        check_sqlalchemy_url_allowed(url, allowed_hosts=allowed, own_database=settings.DATABASES["default"])
    elif kind == DataSource.Kind.URL:
        check_url_allowed(url, allowed_hosts=allowed)
    else:
        raise UrlNotAllowed(f"Unknown source kind '{kind}'.")


def source_create(*, project: Project, kind: str, url: str, query: str = "") -> DataSource:
    source_check(kind=kind, url=url, query=query)
    return DataSource.objects.create(project=project, kind=kind, url=url.strip(), query=query)


def source_update(*, source: DataSource, **fields: Any) -> DataSource:
    for key, value in fields.items():
        setattr(source, key, value)
    source_check(kind=source.kind, url=source.url, query=source.query)
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
    with tempfile.TemporaryDirectory(prefix="recotem-source-") as tmp:
        try:
            if source.kind == DataSource.Kind.SQL:
                path = _read_sql(source, Path(tmp))
            else:
                path = _download(source, Path(tmp))
            df = read_interactions(path, original_name=path.name, **project.columns)
        except SourceError as exc:
            _record(source, str(exc))
            raise
        except InteractionDataError as exc:
            _record(source, str(exc))
            raise SourceError(f"Data source returned unusable data: {exc}") from None
        summary = summarize(df, **project.columns)
        del df
        newest = TrainingData.objects.filter(project=project).order_by("-id").first()
        if newest is not None and newest.fingerprint == summary.fingerprint:
            _record(source, "")
            return newest
        from recotem.projects.services import training_data_create_from_frame_file

        snapshot = training_data_create_from_frame_file(
            project=project, path=path, name=path.name, data_source_id=source.pk
        )
    _record(source, "")
    return snapshot


def _record(source: DataSource, error: str) -> None:
    DataSource.objects.filter(pk=source.pk).update(last_read_at=timezone.now(), last_error=error[:4000])


def _read_sql(source: DataSource, tmp: Path) -> Path:
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    url = sa.make_url(source.url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        # A source is read-only by construction, and a runaway query cannot hold the run forever.
        connect_args = {"options": "-c default_transaction_read_only=on -c statement_timeout=600000",
                        "connect_timeout": 10}
    engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            df = pd.read_sql_query(sa.text(source.query), conn)
    except SQLAlchemyError as exc:
        raise SourceError(f"SQL source failed: {str(exc).splitlines()[0][:500]}") from None
    finally:
        engine.dispose()
    path = tmp / "sql-source.parquet"
    df.to_parquet(path, index=False)
    return path


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        check_url_allowed(newurl, allowed_hosts=settings.RECOTEM_ALLOWED_SOURCE_HOSTS)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(source: DataSource, tmp: Path) -> Path:
    name = _file_name(source.url)
    detect_format(name)  # raises for an unknown suffix before any byte is fetched
    limit = settings.RECOTEM_MAX_UPLOAD_MB * 1024 * 1024
    path = tmp / name
    opener = urllib.request.build_opener(_CheckedRedirect)
    try:
        with opener.open(source.url, timeout=_TIMEOUT_SECONDS) as response, open(path, "wb") as fh:
            size = 0
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise SourceError(f"The source is larger than {settings.RECOTEM_MAX_UPLOAD_MB} MB.")
                fh.write(chunk)
    except UrlNotAllowed as exc:
        raise SourceError(f"Data source redirect refused: {exc}", retryable=False) from None
    except urllib.error.HTTPError as exc:
        raise SourceError(f"Fetching the source failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"Fetching the source failed: {getattr(exc, 'reason', exc)}") from None
    return path


@transaction.atomic
def source_delete(*, source: DataSource) -> None:
    source.delete()


__all__ = ["SourceError", "source_check", "source_create", "source_delete", "source_read", "source_update"]
