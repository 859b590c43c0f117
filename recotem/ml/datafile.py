"""What an interaction file is, without reading one: formats, the errors of a read, its summary.

Split from :mod:`recotem.ml.data` (which parses with pandas and pyarrow) so that code which only
checks a file name, catches a read error or holds a summary - the web process handing the
parse to a child process (:mod:`recotem.ml.summarize_file`) - imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TEXT_FORMATS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SUPPORTED = sorted([*TEXT_FORMATS, *JSONL_SUFFIXES, *PARQUET_SUFFIXES])

LimitName = Literal["max_uncompressed_bytes", "max_rows"]


class InteractionDataError(ValueError):
    """The file cannot be used as it is; the message says why and what was found.

    ``content_free`` says the same without quoting the file (no column names found, no
    values, no parser excerpts): what to show when the bytes came from somewhere the reader
    of the message must not see, such as a data source URL.
    """

    def __init__(self, message: str, *, content_free: str | None = None) -> None:
        super().__init__(message)
        self.content_free = message if content_free is None else content_free


class DataLimitExceeded(InteractionDataError):
    """Reading stopped because the data passed a limit the caller set.

    ``limit`` is the name of the keyword argument (``"max_uncompressed_bytes"`` or
    ``"max_rows"``) and ``value`` its value, so a caller can name its own setting.
    """

    def __init__(self, limit: LimitName, value: int) -> None:
        self.limit: LimitName = limit
        self.value = value
        if limit == "max_rows":
            text = f"The data has more than {value:,} rows, the row limit (max_rows={value})."
        else:
            text = (
                f"The data is larger than {value / 2**20:g} MB once uncompressed, the "
                f"uncompressed size limit (max_uncompressed_bytes={value})."
            )
        super().__init__(text)


@dataclass(frozen=True)
class DataSummary:
    row_count: int
    n_users: int
    n_items: int
    fingerprint: str


def detect_format(name: str) -> tuple[str, bool]:
    """Return (format suffix, gzipped) for a file name, or raise for unknown extensions."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in SUPPORTED:
        shown = suffix or "(none)"
        raise InteractionDataError(
            f"Unsupported file extension {shown!r} in {Path(name).name!r}. "
            f"Use one of {', '.join(SUPPORTED)}, optionally followed by .gz."
        )
    return suffix, gzipped
