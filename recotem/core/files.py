"""Local paths for stored files, whatever the storage backend."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.files.uploadedfile import UploadedFile
from django.db.models.fields.files import FieldFile


def _copy_to_temp(chunks: Iterable[bytes], name: str) -> Iterator[Path]:
    fd, temp = tempfile.mkstemp(suffix="".join(Path(name).suffixes))
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        yield Path(temp)
    finally:
        os.unlink(temp)


@contextmanager
def local_file(field: FieldFile) -> Iterator[Path]:
    """A local path for a stored file: the file itself on local storage, else a temp copy (S3)."""
    try:
        path = field.path
    except NotImplementedError:
        path = None
    if path is not None:
        yield Path(path)
        return
    with field.open("rb") as src:
        yield from _copy_to_temp(iter(lambda: src.read(1 << 20), b""), field.name)


@contextmanager
def local_upload(upload: UploadedFile) -> Iterator[Path]:
    """A local path for an upload without copying it when Django already spooled it to disk."""
    if hasattr(upload, "temporary_file_path"):
        yield Path(upload.temporary_file_path())
        return
    yield from _copy_to_temp(upload.chunks(), upload.name or "upload")


def delete_stored(files: Iterable[FieldFile]) -> None:
    """Delete stored files after their rows are gone; a file already missing is fine."""
    for field in files:
        if field and field.name:
            try:
                field.storage.delete(field.name)
            except OSError:
                pass

