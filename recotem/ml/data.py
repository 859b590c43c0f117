"""Reading interaction logs into a DataFrame, with errors a person understands.

Supported: CSV, TSV, Parquet and JSON lines, each optionally gzipped (`.gz`). Only the columns
the project names are loaded, and ids are kept as strings whatever they look like, so `007`
and `7` stay different users.

Every format is read as a stream (CSV in blocks, Parquet by record batches, JSON lines in chunks
of lines), so a caller can bound the work with ``max_uncompressed_bytes`` and ``max_rows``: the
read stops as soon as either is passed and raises :class:`DataLimitExceeded`, before the rest
of a file is decompressed. A small gzip file that expands to gigabytes is refused after reading
a little more than the limit. :func:`read_preview` reads only the first rows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# The light half (formats, errors, the summary) lives in datafile so that processes which only
# name them (the web process) do not import pandas and pyarrow.
from .datafile import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    SUPPORTED,
    TEXT_FORMATS,
    DataLimitExceeded,
    DataSummary,
    InteractionDataError,
    LimitName,
    detect_format,
)

__all__ = [
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "SUPPORTED",
    "TEXT_FORMATS",
    "DataLimitExceeded",
    "DataSummary",
    "InteractionDataError",
    "LimitName",
    "detect_format",
    "fingerprint",
    "read_interactions",
    "read_preview",
    "read_table",
    "summarize",
]

_DELIMITERS = [",", "\t", ";", "|"]
_DELIMITER_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "pipes"}


_CSV_BLOCK_BYTES = 1 << 22
_PREVIEW_BLOCK_BYTES = 1 << 20
_PARQUET_BATCH_ROWS = 256 * 1024
_JSON_CHUNK_LINES = 50_000
_READ_BUFFER_BYTES = 1 << 20
_FIRST_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


@dataclass(frozen=True)
class _Limits:
    max_bytes: int | None = None
    max_rows: int | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("max_uncompressed_bytes", self.max_bytes),
            ("max_rows", self.max_rows),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}.")

    def check_bytes(self, count: int) -> None:
        if self.max_bytes is not None and count > self.max_bytes:
            raise DataLimitExceeded("max_uncompressed_bytes", self.max_bytes)

    def check_rows(self, count: int) -> None:
        if self.max_rows is not None and count > self.max_rows:
            raise DataLimitExceeded("max_rows", self.max_rows)


def _open_binary(path: str | Path, gzipped: bool) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if gzipped else open(path, "rb")


class _CountingReader(io.RawIOBase):
    """The decompressed bytes of ``raw``; raises once more than the byte limit went through.

    ``gzip.GzipFile.read(n)`` inflates at most ``n`` bytes, so nothing beyond the bytes asked
    for is ever decompressed: a gzip bomb costs a little more than the limit, not its size.
    """

    def __init__(self, raw: IO[bytes], limits: _Limits) -> None:
        super().__init__()
        self._raw = raw
        self._limits = limits
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self.count += len(data)
        self._limits.check_bytes(self.count)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


@contextmanager
def _open_uncompressed(path: str | Path, gzipped: bool, limits: _Limits) -> Iterator[IO[bytes]]:
    """A binary stream of the file's uncompressed bytes, under ``limits.max_bytes``.

    A plain file's size is known up front, so it is refused before any read; a gzipped one is
    counted as it is inflated.
    """
    if gzipped:
        with _CountingReader(_open_binary(path, True), limits) as counted:
            yield cast(IO[bytes], counted)
    else:
        limits.check_bytes(os.path.getsize(path))
        with open(path, "rb") as fh:
            yield fh


def _read_text_header(path: str | Path, gzipped: bool) -> str:
    """First line of a text file, decoded; raises for empty or undecodable input."""
    try:
        with _open_binary(path, gzipped) as fh:
            head = fh.read(64 * 1024)
    except (OSError, EOFError, zlib.error) as exc:
        raise InteractionDataError(f"The file could not be decompressed: {exc}.") from None
    if not head.strip():
        raise InteractionDataError("The file is empty.")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 64 KiB boundary is fine; anything earlier is not.
        if exc.start < len(head) - 4:
            raise InteractionDataError(
                f"The file is not UTF-8 text (undecodable byte at position {exc.start}). "
                "Save it as UTF-8 CSV, or upload Parquet."
            ) from None
        text = head[: exc.start].decode("utf-8-sig")
    return text.splitlines()[0] if text.splitlines() else ""


def _check_columns(found: Sequence[str], required: Sequence[str], *, delimiter: str | None) -> None:
    missing = [c for c in required if c not in found]
    if not missing:
        return
    named = (
        f"Missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}."
    )
    message = f"{named} Columns found: {', '.join(repr(c) for c in found) or '(none)'}."
    if delimiter is not None and len(found) == 1:
        for other in _DELIMITERS:
            if other != delimiter and other in found[0]:
                message += (
                    f" The header looks separated by {_DELIMITER_NAMES[other]}, but this file type "
                    f"expects {_DELIMITER_NAMES[delimiter]}."
                )
                break
    raise InteractionDataError(message, content_free=named)


def read_table(
    path: str | Path,
    *,
    required_columns: Sequence[str],
    optional_columns: Sequence[str] = (),
    string_columns: Sequence[str] = (),
    original_name: str | None = None,
    all_columns: bool = False,
    max_uncompressed_bytes: int | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Read `required_columns` (+ any `optional_columns` present) of a supported file.

    `string_columns` are read as text. With `all_columns`, every column is loaded (item metadata).
    `max_uncompressed_bytes` bounds the bytes after gzip (for Parquet also the decoded size of
    the columns read) and `max_rows` the data rows; passing either raises
    :class:`DataLimitExceeded` as soon as it is known, without reading the rest.
    """
    return _read(
        path,
        required_columns=required_columns,
        optional_columns=optional_columns,
        string_columns=string_columns,
        original_name=original_name,
        all_columns=all_columns,
        limits=_Limits(max_uncompressed_bytes, max_rows),
        first_rows=None,
    )


def read_preview(
    path: str | Path,
    n_rows: int,
    *,
    string_columns: Sequence[str] = (),
    original_name: str | None = None,
    max_uncompressed_bytes: int | None = None,
) -> pd.DataFrame:
    """The first `n_rows` data rows with every column, reading only the start of the file.

    CSV/TSV is parsed in 1 MiB blocks until `n_rows` rows are there, JSON lines `n_rows` lines,
    Parquet the first record batch. A gzipped Parquet file has its footer at the end, so it is
    decompressed to a temporary file first (bounded by `max_uncompressed_bytes`). Types are
    inferred from the rows read; `string_columns` are text as in :func:`read_table`.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}.")
    df = _read(
        path,
        required_columns=(),
        optional_columns=(),
        string_columns=string_columns,
        original_name=original_name,
        all_columns=True,
        limits=_Limits(max_uncompressed_bytes, None),
        first_rows=n_rows,
    )
    return df.head(n_rows)


def _read(
    path: str | Path,
    *,
    required_columns: Sequence[str],
    optional_columns: Sequence[str],
    string_columns: Sequence[str],
    original_name: str | None,
    all_columns: bool,
    limits: _Limits,
    first_rows: int | None,
) -> pd.DataFrame:
    suffix, gzipped = detect_format(original_name or str(path))
    wanted = [*required_columns, *[c for c in optional_columns if c not in required_columns]]
    try:
        if suffix in TEXT_FORMATS:
            df = _read_delimited(
                path,
                gzipped,
                TEXT_FORMATS[suffix],
                required_columns,
                wanted,
                string_columns,
                all_columns,
                limits,
                first_rows,
            )
        elif suffix in PARQUET_SUFFIXES:
            df = _read_parquet(
                path, gzipped, required_columns, wanted, all_columns, limits, first_rows
            )
        else:
            df = _read_jsonl(
                path, gzipped, required_columns, wanted, all_columns, limits, first_rows
            )
    except InteractionDataError:
        raise
    except UnicodeDecodeError as exc:
        raise InteractionDataError(
            f"The file is not UTF-8 text (undecodable byte at position {exc.start})."
        ) from None
    except pd.errors.EmptyDataError:
        raise InteractionDataError("The file is empty.") from None
    except pd.errors.ParserError as exc:
        raise InteractionDataError(
            f"The file could not be parsed: {exc}".rstrip(".") + ".",
            content_free="The file could not be parsed as the expected format.",
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InteractionDataError(f"The file could not be decompressed: {exc}.") from None
    except (OSError, EOFError) as exc:
        raise InteractionDataError(f"The file could not be read: {exc}.") from None
    if len(df) == 0:
        raise InteractionDataError("The file has a header but no data rows.")
    for column in string_columns:
        if column in df.columns and not isinstance(df[column].dtype, pd.StringDtype):
            df[column] = _clean_strings(
                pa.array(
                    df[column]
                    .astype(object)
                    .where(df[column].notna(), None)
                    .map(lambda v: v if v is None else str(v)),
                    type=pa.string(),
                )
            )
    return df


def _clean_strings(values: pa.Array | pa.ChunkedArray) -> pd.Series:
    """Trimmed text ids in Arrow memory (a few bytes per id, not a Python object each)."""
    # Trimming copies every string; most files have no padding, so look before copying.
    if pc.any(pc.match_substring_regex(values, r"^\s|\s$")).as_py():
        values = pc.utf8_trim_whitespace(values)
    return pd.Series(values, dtype=pd.StringDtype("pyarrow"))


def _read_delimited(
    path: str | Path,
    gzipped: bool,
    delimiter: str,
    required_columns: Sequence[str],
    wanted: Sequence[str],
    string_columns: Sequence[str],
    all_columns: bool,
    limits: _Limits,
    first_rows: int | None,
) -> pd.DataFrame:
    """CSV/TSV in blocks of whole lines: only the wanted columns ever reach memory."""
    header_line = _read_text_header(path, gzipped)
    raw_names = next(csv.reader([header_line], delimiter=delimiter))
    by_clean_name = {name.strip(): name for name in raw_names}
    _check_columns(list(by_clean_name), required_columns, delimiter=delimiter)
    clean_names = list(by_clean_name) if all_columns else [c for c in wanted if c in by_clean_name]
    text_columns = [by_clean_name[c] for c in string_columns if c in by_clean_name]
    included = [by_clean_name[c] for c in clean_names]
    convert = pacsv.ConvertOptions(
        include_columns=included,
        column_types={c: pa.string() for c in text_columns},
        strings_can_be_null=True,
    )
    parse = pacsv.ParseOptions(delimiter=delimiter)
    block = _PREVIEW_BLOCK_BYTES if first_rows is not None else _CSV_BLOCK_BYTES
    try:
        try:
            table = _parse_csv_blocks(path, gzipped, block, parse, convert, limits, first_rows)
        except pa.ArrowInvalid as exc:
            # Types are fixed by the first block (ints, then a float later): read_csv infers
            # over the whole file.
            if "conversion error" not in str(exc) or "UTF8" in str(exc):
                raise
            if first_rows is not None:
                # A preview shows text as it is rather than read the whole file to infer types.
                as_text = pacsv.ConvertOptions(
                    include_columns=included,
                    column_types={c: pa.string() for c in included},
                    strings_can_be_null=True,
                )
                table = _parse_csv_blocks(path, gzipped, block, parse, as_text, limits, first_rows)
            else:
                table = _read_csv_whole(path, gzipped, parse, convert, limits)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "UTF8" in text or "UTF-8" in text:
            raise InteractionDataError(
                "The file is not UTF-8 text. Save it as UTF-8 CSV, or upload Parquet."
            ) from None
        raise InteractionDataError(
            f"The file could not be parsed: {text.rstrip('.')}.",
            content_free="The file could not be parsed as the expected format.",
        ) from None
    columns: dict[str, object] = {}
    for clean, raw in zip(clean_names, included, strict=True):
        column = table.column(raw)
        columns[clean] = _clean_strings(column) if raw in text_columns else column.to_pandas()
    return pd.DataFrame(columns)


def _line_blocks(fh: IO[bytes], block_size: int) -> Iterator[bytes]:
    """Blocks of about `block_size` bytes cut after a line break (the first holds the header).

    Like pyarrow's own block reader this assumes no line break inside a quoted value. A line
    longer than two blocks is refused rather than buffered without end.
    """
    pending = b""
    while data := fh.read(block_size):
        data = pending + data if pending else data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if cut == 0:
            if len(data) > 2 * block_size:
                raise InteractionDataError(
                    f"The file could not be parsed: a line is longer than "
                    f"{2 * block_size // 2**20} MB."
                )
            pending = data
            continue
        pending = data[cut:]
        yield data[:cut]
    if pending:
        yield pending


def _parse_csv_blocks(
    path: str | Path,
    gzipped: bool,
    block_size: int,
    parse: pacsv.ParseOptions,
    convert: pacsv.ConvertOptions,
    limits: _Limits,
    first_rows: int | None,
) -> pa.Table:
    """Parse block by block in this thread, counting rows; stop at `first_rows` or the limit.

    Each block is parsed from memory with the header line in front and the first block's
    column types, so pyarrow never reads ahead: nothing beyond the current block is inflated
    and no pyarrow thread calls back into Python. Within a block pyarrow's threads share the
    parse (the block is native memory): ~1.4x faster reads of large files on two cores.
    """
    batches: list[pa.Table] = []
    rows = 0
    header = b""
    with _open_uncompressed(path, gzipped, limits) as fh:
        for block in _line_blocks(fh, block_size):
            if not header:
                first_line = _FIRST_LINE.match(block)
                header = first_line.group(0) if first_line else block
                data = block
            else:
                data = header + block
            table = pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(use_threads=True),
                parse_options=parse,
                convert_options=convert,
            )
            if not batches:
                types = {name: table.schema.field(name).type for name in table.schema.names}
                convert = pacsv.ConvertOptions(
                    include_columns=convert.include_columns,
                    column_types=types,
                    strings_can_be_null=convert.strings_can_be_null,
                )
            batches.append(table)
            rows += table.num_rows
            if first_rows is not None and rows >= first_rows:
                break
            limits.check_rows(rows)
    if not batches:
        return pacsv.read_csv(pa.BufferReader(header), parse_options=parse, convert_options=convert)
    return pa.concat_tables(batches)


def _read_csv_whole(
    path: str | Path,
    gzipped: bool,
    parse: pacsv.ParseOptions,
    convert: pacsv.ConvertOptions,
    limits: _Limits,
) -> pa.Table:
    """read_csv over the whole file (types inferred from every row), after a size pass.

    The first pass only inflates and counts, so the byte limit holds before read_csv takes
    the file into memory; rows are checked after.
    """
    if limits.max_bytes is not None and gzipped:
        with _open_uncompressed(path, gzipped, limits) as fh:
            while fh.read(_READ_BUFFER_BYTES):
                pass
    else:
        limits.check_bytes(0 if gzipped else os.path.getsize(path))
    with pa.input_stream(str(path), compression="gzip" if gzipped else None) as stream:
        table = pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
    limits.check_rows(table.num_rows)
    return table


@contextmanager
def _parquet_source(
    path: str | Path, gzipped: bool, limits: _Limits
) -> Iterator[str | Path | IO[bytes]]:
    """The Parquet file itself, or a gzipped one inflated to a temporary file under the limit.

    Parquet needs random access (its footer is at the end), so inflating to a file is the
    only way that keeps memory flat; the byte limit bounds the disk it takes.
    """
    if not gzipped:
        yield path
        return
    with tempfile.TemporaryFile(prefix="recotem-parquet-") as tmp:
        with _open_uncompressed(path, gzipped, limits) as fh:
            shutil.copyfileobj(fh, tmp, _READ_BUFFER_BYTES)
        tmp.seek(0)
        yield tmp


def _read_parquet(
    path: str | Path,
    gzipped: bool,
    required_columns: Sequence[str],
    wanted: Sequence[str],
    all_columns: bool,
    limits: _Limits,
    first_rows: int | None,
) -> pd.DataFrame:
    """Record batch by record batch, every size checked before the data is materialised.

    Before any page is read, the footer's row count and the uncompressed page size of the
    columns read are checked. Dictionary-encoded text is read as dictionary indices and its
    decoded size (the sum of the referenced values' lengths) checked before it is expanded:
    a file of a few hundred KB can otherwise hold one 10 KB string repeated a million times.
    """
    import pyarrow.parquet as pq

    with _parquet_source(path, gzipped, limits) as source:
        # A preview reads its few rows page by page instead of whole column chunks.
        options: dict[str, Any] = (
            {"pre_buffer": False, "buffer_size": 1 << 16} if first_rows is not None else {}
        )
        try:
            parquet = pq.ParquetFile(source, **options)
        except Exception as exc:  # pyarrow raises ArrowInvalid for non-parquet bytes
            raise InteractionDataError(
                f"The file is not a valid Parquet file: {exc}.",
                content_free="The file is not a valid Parquet file.",
            ) from None
        with parquet:
            schema = parquet.schema_arrow
            found = list(schema.names)
            _check_columns(found, required_columns, delimiter=None)
            columns = found if all_columns else [c for c in wanted if c in found]
            if columns != found:
                schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
            metadata = parquet.metadata
            if first_rows is None:
                limits.check_rows(metadata.num_rows)
            groups = range(
                min(metadata.num_row_groups, 1 if first_rows else metadata.num_row_groups)
            )
            positions = {metadata.schema.column(i).name: i for i in range(metadata.num_columns)}
            pages = sum(
                metadata.row_group(g).column(positions[c]).total_uncompressed_size
                for g in groups
                for c in columns
                if c in positions
            )
            limits.check_bytes(pages)
            # (A preview decodes `first_rows` values per column: no expansion to fear.)
            as_indices = [
                c
                for c in (columns if first_rows is None else ())
                if _is_text(schema.field(c).type)
                and c in positions
                and any(
                    "DICTIONARY" in "".join(metadata.row_group(g).column(positions[c]).encodings)
                    for g in groups
                )
            ]
            if as_indices:
                parquet.close()
                if not isinstance(source, (str, Path)):
                    source.seek(0)
                parquet = pq.ParquetFile(source, read_dictionary=as_indices, **options)
            batches: list[pa.RecordBatch] = []
            rows = decoded = 0
            for batch in parquet.iter_batches(
                batch_size=first_rows or _PARQUET_BATCH_ROWS, columns=columns
            ):
                decoded += _decoded_size(batch, schema)
                limits.check_bytes(decoded)
                batches.append(_expand(batch, schema))
                rows += batch.num_rows
                if first_rows is not None and rows >= first_rows:
                    break
                limits.check_rows(rows)
            parquet.close()
    if batches:
        # pandas' metadata (index, dtypes) in the footer applies as for ParquetFile.read().
        table = pa.Table.from_batches(batches, schema=schema)
    else:
        table = schema.empty_table()
    frame: pd.DataFrame = table.to_pandas()
    return frame


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _decoded_size(batch: pa.RecordBatch, schema: pa.Schema) -> int:
    """Bytes the batch takes once dictionary columns the schema wants plain are expanded."""
    size = 0
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_dictionary(column.type) and not pa.types.is_dictionary(
            schema.field(name).type
        ):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
            size += int(pc.sum(lengths).as_py() or 0) + 8 * len(column)
        else:
            size += column.nbytes
    return size


def _expand(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with the schema's own types (dictionary indices read for the size check)."""
    arrays = [
        column.cast(schema.field(name).type) if column.type != schema.field(name).type else column
        for name, column in zip(batch.schema.names, batch.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _read_jsonl(
    path: str | Path,
    gzipped: bool,
    required_columns: Sequence[str],
    wanted: Sequence[str],
    all_columns: bool,
    limits: _Limits,
    first_rows: int | None,
) -> pd.DataFrame:
    """JSON lines in chunks of lines; only the wanted columns of each chunk are kept."""
    _read_text_header(path, gzipped)  # empty / undecodable checks
    frames: list[pd.DataFrame] = []
    found: dict[str, None] = {}  # every key seen, in order of appearance
    rows = 0
    try:
        with (
            _open_uncompressed(path, gzipped, limits) as fh,
            pd.read_json(
                fh,
                lines=True,
                dtype=False,
                encoding="utf-8-sig",
                chunksize=first_rows or _JSON_CHUNK_LINES,
            ) as reader,
        ):
            for chunk in islice(reader, 1 if first_rows else None):
                found.update(dict.fromkeys(str(c) for c in chunk.columns))
                if not all_columns:
                    chunk = chunk[[c for c in wanted if c in chunk.columns]]
                frames.append(chunk)
                rows += len(chunk)
                limits.check_rows(rows)
    except (InteractionDataError, UnicodeDecodeError):
        raise
    except ValueError as exc:
        raise InteractionDataError(
            f"The file is not valid JSON lines (one JSON object per line): {exc}.",
            content_free="The file is not valid JSON lines (one JSON object per line).",
        ) from None
    _check_columns(list(found), required_columns, delimiter=None)
    if not frames:
        return pd.DataFrame(columns=list(found))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_interactions(
    path: str | Path,
    *,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
    original_name: str | None = None,
    max_uncompressed_bytes: int | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Read an interaction log: user and item ids as `str`, the time column parsed if given.

    Rows with an empty user or item id are an error (they would silently vanish otherwise).
    The limits are those of :func:`read_table` (:class:`DataLimitExceeded` when passed).
    """
    required = [user_column, item_column] + ([time_column] if time_column else [])
    df = read_table(
        path,
        required_columns=required,
        string_columns=[user_column, item_column],
        original_name=original_name,
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_rows=max_rows,
    )
    for column in (user_column, item_column):
        empty = df[column].isna() | (df[column] == "")
        if empty.any():
            first = int(np.flatnonzero(empty.to_numpy())[0])
            raise InteractionDataError(
                f"Column {column!r} is empty in {int(empty.sum())} row(s) (first at data row {first + 1})."
            )
    if time_column:
        df[time_column] = parse_time_column(df[time_column], time_column)
    return df


def parse_time_column(values: pd.Series, name: str) -> pd.Series:
    """Numbers are unix seconds; anything else must parse as a date-time."""
    if pd.api.types.is_numeric_dtype(values):
        if values.isna().any():
            raise InteractionDataError(f"Column {name!r} has empty values.")
        return values
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        example = values[bad].iloc[0]
        counted = f"Column {name!r} has {int(bad.sum())} value(s) that are not dates or unix times"
        raise InteractionDataError(f"{counted}, e.g. {example!r}.", content_free=f"{counted}.")
    return (parsed.astype("int64") // 10**9).astype("int64")


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _value_hashes(values: pd.Series) -> np.ndarray:
    """A 64-bit hash per value that depends only on the value's text (stable across processes)."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return pd.util.hash_array(values.to_numpy(dtype=np.int64))
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    unique_hashes = pd.util.hash_array(np.asarray(pd.Series(uniques).astype(str), dtype=object))
    return unique_hashes[codes]


def fingerprint(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """A content hash of the interactions, independent of row order.

    Equal content gives the same value even after re-sorting; changing, adding or removing a
    single row changes it, even when the row count stays the same. Unique values are hashed
    once and rows combined with numpy, so 4M rows take seconds and little memory.
    """
    row_hashes = np.zeros(len(df), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position, column in enumerate(columns):
            mixed = _value_hashes(df[column]) * _MIX[position % len(_MIX)]
            row_hashes = (row_hashes ^ mixed) * _MIX[(position + 1) % len(_MIX)]
    digest = hashlib.sha256()
    digest.update(f"{len(df)}|{'|'.join(columns)}|".encode())
    digest.update(np.sort(row_hashes).tobytes())
    return "sha256:" + digest.hexdigest()


def summarize(
    df: pd.DataFrame, *, user_column: str, item_column: str, time_column: str | None
) -> DataSummary:
    columns = [user_column, item_column] + ([time_column] if time_column else [])
    return DataSummary(
        row_count=len(df),
        n_users=int(df[user_column].nunique()),
        n_items=int(df[item_column].nunique()),
        fingerprint=fingerprint(df, columns),
    )
