"""The ``events`` data source: the project's stored feedback events as training interactions.

Registered with ``recotem.projects.sources`` in ``ExperimentsConfig.ready`` (projects is a lower
room and cannot import the events table). The reader streams the matching rows from the database
in chunks (a server-side cursor on PostgreSQL) into a Parquet file named by the project's
columns, so memory stays bounded by one chunk whatever the number of events; the caller
(`source_read`) then fingerprints that file and stores a snapshot only when the content changed,
exactly as for SQL and URL sources.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.db.models import QuerySet

from recotem.core.jobs import db_now
from recotem.experiments.models import Event
from recotem.projects.limits import data_limits
from recotem.projects.models import DataSource
from recotem.projects.sources import SourceError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

# Rows per database fetch and per Parquet row group: ~50 MB of Python tuples at the peak.
CHUNK_ROWS = 200_000
DEFAULT_EXCLUDED = ("impression",)  # what was shown, not what the user did


def events_queryset(source: DataSource) -> QuerySet[Event]:
    """The events a source reads: its types (default every type but impression), its window."""
    events = Event.objects.filter(project_id=source.project_id)
    if source.event_types is None:
        events = events.exclude(event_type__in=DEFAULT_EXCLUDED)
    else:
        events = events.filter(event_type__in=source.event_types)
    if source.window_days is not None:
        events = events.filter(timestamp__gte=db_now() - timedelta(days=source.window_days))
    # No ORDER BY: the fingerprint ignores row order, and sorting 10 M rows costs the database.
    return events.order_by()


def _describe(source: DataSource) -> str:
    types = ", ".join(source.event_types) if source.event_types else "every type but impression"
    window = f" in the last {source.window_days} days" if source.window_days else ""
    return f"events of type {types}{window}"


def events_read(source: DataSource, folder: Path) -> Path:
    """Write the source's events to ``folder/events.parquet`` (user, item[, unix time]).

    At most RECOTEM_MAX_ROWS rows, like any other data; SourceError when there are none (an
    empty snapshot would train nothing) or too many.
    """
    # pyarrow loads only in the process that reads a source (beat and web never do: DESIGN §6).
    import pyarrow as pa
    import pyarrow.parquet as pq

    project = source.project
    user_column, item_column = project.user_column, project.item_column
    time_column = project.time_column or None
    fields = [pa.field(user_column, pa.string()), pa.field(item_column, pa.string())]
    if time_column:
        fields.append(pa.field(time_column, pa.int64()))
    schema = pa.schema(fields)
    max_rows = data_limits()["max_rows"]
    path = folder / "events.parquet"
    rows = events_queryset(source).values_list("user_id", "item_id", "timestamp")
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        chunk: list[tuple[str, str, object]] = []
        for row in rows.iterator(chunk_size=CHUNK_ROWS):
            chunk.append(row)
            if len(chunk) >= CHUNK_ROWS:
                written += _write(writer, schema, chunk, time_column)
                chunk = []
                if written > max_rows:
                    break
        if chunk:
            written += _write(writer, schema, chunk, time_column)
    if written > max_rows:
        raise SourceError(
            f"The source has more than {max_rows:,} events, the row limit (RECOTEM_MAX_ROWS); "
            "set window_days or event_types to read fewer.",
            retryable=False,
        )
    if written == 0:
        raise SourceError(f"The project has no stored {_describe(source)}.", retryable=False)
    return path


def _write(
    writer: pq.ParquetWriter,
    schema: pa.Schema,
    chunk: list[tuple[str, str, object]],
    time_column: str | None,
) -> int:
    users, items, times = zip(*chunk, strict=True)
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: list[pa.Array] = [pa.array(users, pa.string()), pa.array(items, pa.string())]
    if time_column:
        stamps = pa.array(times, pa.timestamp("us", tz="UTC"))
        # Unix seconds, as an uploaded log's numeric time column would hold.
        columns.append(pc.divide(pc.cast(stamps, pa.int64()), 1_000_000))
    writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    return len(chunk)
