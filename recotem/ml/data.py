"""Reading interaction logs into a DataFrame, with errors a person understands.

Supported: CSV, TSV, Parquet and JSON lines, each optionally gzipped (`.gz`). Only the columns
the project names are loaded, and ids are kept as strings whatever they look like, so `007`
and `7` stay different users.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

TEXT_FORMATS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SUPPORTED = sorted([*TEXT_FORMATS, *JSONL_SUFFIXES, *PARQUET_SUFFIXES])
_DELIMITERS = [",", "\t", ";", "|"]
_DELIMITER_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "pipes"}


class InteractionDataError(ValueError):
    """The file cannot be used as it is; the message says why and what was found."""


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


def _open_binary(path: str | Path, gzipped: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_text_header(path: str | Path, gzipped: bool) -> str:
    """First line of a text file, decoded; raises for empty or undecodable input."""
    try:
        with _open_binary(path, gzipped) as fh:
            head = fh.read(64 * 1024)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
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
    message = (
        f"Missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}. "
        f"Columns found: {', '.join(repr(c) for c in found) or '(none)'}."
    )
    if delimiter is not None and len(found) == 1:
        for other in _DELIMITERS:
            if other != delimiter and other in found[0]:
                message += (
                    f" The header looks separated by {_DELIMITER_NAMES[other]}, but this file type "
                    f"expects {_DELIMITER_NAMES[delimiter]}."
                )
                break
    raise InteractionDataError(message)


def read_table(
    path: str | Path,
    *,
    required_columns: Sequence[str],
    optional_columns: Sequence[str] = (),
    string_columns: Sequence[str] = (),
    original_name: str | None = None,
    all_columns: bool = False,
) -> pd.DataFrame:
    """Read `required_columns` (+ any `optional_columns` present) of a supported file.

    `string_columns` are read as text. With `all_columns`, every column is loaded (item metadata).
    """
    suffix, gzipped = detect_format(original_name or str(path))
    wanted = [*required_columns, *[c for c in optional_columns if c not in required_columns]]
    try:
        if suffix in TEXT_FORMATS:
            df = _read_delimited(
                path, gzipped, TEXT_FORMATS[suffix], required_columns, wanted, string_columns, all_columns
            )
        elif suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            with _open_binary(path, gzipped) as fh:
                source: IO[bytes] = io.BytesIO(fh.read()) if gzipped else fh
                try:
                    parquet = pq.ParquetFile(source)
                except Exception as exc:  # pyarrow raises ArrowInvalid for non-parquet bytes
                    raise InteractionDataError(
                        f"The file is not a valid Parquet file: {exc}."
                    ) from None
                found = list(parquet.schema_arrow.names)
                _check_columns(found, required_columns, delimiter=None)
                columns = None if all_columns else [c for c in wanted if c in found]
                df = parquet.read(columns=columns).to_pandas()
        else:
            _read_text_header(path, gzipped)  # empty / undecodable checks
            try:
                df = pd.read_json(
                    path, lines=True, compression="gzip" if gzipped else None, dtype=False
                )
            except ValueError as exc:
                raise InteractionDataError(
                    f"The file is not valid JSON lines (one JSON object per line): {exc}."
                ) from None
            _check_columns([str(c) for c in df.columns], required_columns, delimiter=None)
            if not all_columns:
                df = df[[c for c in wanted if c in df.columns]]
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
            f"The file could not be parsed: {exc}".rstrip(".") + "."
        ) from None
    except (OSError, EOFError) as exc:
        raise InteractionDataError(f"The file could not be read: {exc}.") from None
    if len(df) == 0:
        raise InteractionDataError("The file has a header but no data rows.")
    for column in string_columns:
        if column in df.columns and not isinstance(df[column].dtype, pd.StringDtype):
            df[column] = _clean_strings(pa.array(df[column].astype(object).where(df[column].notna(), None).map(
                lambda v: v if v is None else str(v)), type=pa.string()))
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
) -> pd.DataFrame:
    """CSV/TSV through pyarrow's streaming reader: only the wanted columns ever reach memory."""
    header_line = _read_text_header(path, gzipped)
    raw_names = next(csv.reader([header_line], delimiter=delimiter))
    by_clean_name = {name.strip(): name for name in raw_names}
    _check_columns(list(by_clean_name), required_columns, delimiter=delimiter)
    clean_names = list(by_clean_name) if all_columns else [c for c in wanted if c in by_clean_name]
    text_columns = [by_clean_name[c] for c in string_columns if c in by_clean_name]
    included = [by_clean_name[c] for c in clean_names]
    convert = pacsv.ConvertOptions(
        include_columns=included, column_types={c: pa.string() for c in text_columns}, strings_can_be_null=True
    )
    parse = pacsv.ParseOptions(delimiter=delimiter)
    compression = "gzip" if gzipped else None
    try:
        try:
            # The streaming reader peaks at about half the memory of read_csv on a 100 MB file.
            with pa.input_stream(str(path), compression=compression) as stream:
                table = pacsv.open_csv(
                    stream, read_options=pacsv.ReadOptions(block_size=1 << 22), parse_options=parse,
                    convert_options=convert,
                ).read_all()
        except pa.ArrowInvalid as exc:
            # It fixes each column's type after the first block (ints, then a float later):
            # read_csv infers over the whole file.
            if "conversion error" not in str(exc) or "UTF8" in str(exc):
                raise
            with pa.input_stream(str(path), compression=compression) as stream:
                table = pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "UTF8" in text or "UTF-8" in text:
            raise InteractionDataError(
                "The file is not UTF-8 text. Save it as UTF-8 CSV, or upload Parquet."
            ) from None
        raise InteractionDataError(f"The file could not be parsed: {text.rstrip('.')}.") from None
    columns: dict[str, object] = {}
    for clean, raw in zip(clean_names, included, strict=True):
        column = table.column(raw)
        columns[clean] = _clean_strings(column) if raw in text_columns else column.to_pandas()
    return pd.DataFrame(columns)


def read_interactions(
    path: str | Path,
    *,
    user_column: str,
    item_column: str,
    time_column: str | None = None,
    original_name: str | None = None,
) -> pd.DataFrame:
    """Read an interaction log: user and item ids as `str`, the time column parsed if given.

    Rows with an empty user or item id are an error (they would silently vanish otherwise).
    """
    required = [user_column, item_column] + ([time_column] if time_column else [])
    df = read_table(
        path,
        required_columns=required,
        string_columns=[user_column, item_column],
        original_name=original_name,
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
        raise InteractionDataError(
            f"Column {name!r} has {int(bad.sum())} value(s) that are not dates or unix times, "
            f"e.g. {example!r}."
        )
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
