"""How much data one read may produce: the one home of RECOTEM_MAX_UNCOMPRESSED_MB,
RECOTEM_MAX_ROWS and RECOTEM_MAX_INFLATE_RATIO, and of the 413 that names the limit passed.

The uncompressed limit alone would let a 60 KB ``.csv.gz`` of 17 million tiny rows through
(68 MB is far below 4 x the upload limit) and cost a gigabyte to parse. So a compressed file
(gzip, or Parquet's encodings) may also expand at most RECOTEM_MAX_INFLATE_RATIO times its
stored size, plus 1 MB: real interaction logs compress 3-10x, bombs 100-1000x, and the read
stops a few megabytes in.

Every read of a stored or fetched file passes these to ``recotem.ml.data`` (uploads, data
source snapshots, item metadata in the inference app), so a small compressed file cannot
expand into gigabytes anywhere, whichever process parses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from django.conf import settings

from recotem.core.exceptions import ApplicationError
from recotem.ml.datafile import (
    PARQUET_SUFFIXES,
    DataLimitExceeded,
    InteractionDataError,
    detect_format,
)


class DataLimits(TypedDict):
    max_uncompressed_bytes: int
    max_rows: int


_INFLATE_SLACK = 2**20  # small files may always expand this much, whatever their ratio


def data_limits(path: Path | None = None, name: str | None = None) -> DataLimits:
    """The limits for reading the file at ``path`` (its format from ``name``, else the path).

    Without a path: the configured limits alone (e.g. for a stream of unknown size).
    """
    max_bytes = int(settings.RECOTEM_MAX_UNCOMPRESSED_MB) * 2**20
    if path is not None:
        max_bytes = min(max_bytes, inflate_cap(path, name))
    return {"max_uncompressed_bytes": max_bytes, "max_rows": int(settings.RECOTEM_MAX_ROWS)}


def inflate_cap(path: Path, name: str | None = None) -> int:
    """The most a compressed file may expand to (no cap for uncompressed formats)."""
    try:
        suffix, gzipped = detect_format(name or path.name)
    except InteractionDataError:
        return 2**62  # the reader refuses the format itself, with its own message
    if not gzipped and suffix not in PARQUET_SUFFIXES:
        return 2**62
    return int(settings.RECOTEM_MAX_INFLATE_RATIO) * path.stat().st_size + _INFLATE_SLACK


def limit_message(exc: DataLimitExceeded) -> str:
    """The passed limit in words, naming the setting that raises it."""
    if exc.limit == "max_rows":
        return (
            f"The data has more than {settings.RECOTEM_MAX_ROWS:,} rows, the row limit "
            "(RECOTEM_MAX_ROWS). Reading stopped there."
        )
    if exc.value < int(settings.RECOTEM_MAX_UNCOMPRESSED_MB) * 2**20:
        return (
            f"The file expands more than {settings.RECOTEM_MAX_INFLATE_RATIO} times its "
            "compressed size, the inflate ratio limit (RECOTEM_MAX_INFLATE_RATIO); real "
            "interaction data does not compress that well. Reading stopped there."
        )
    return (
        f"The data is larger than {settings.RECOTEM_MAX_UNCOMPRESSED_MB:,} MB once "
        "uncompressed, the uncompressed size limit (RECOTEM_MAX_UNCOMPRESSED_MB). "
        "Reading stopped there."
    )


class DataTooLarge(ApplicationError):
    """413 for data that passed a limit while being read; ``field`` names the input."""

    def __init__(self, exc: DataLimitExceeded, *, field: str = "file") -> None:
        super().__init__(limit_message(exc), field=field, status=413)
        self.limit = exc.limit
