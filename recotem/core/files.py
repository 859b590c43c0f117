"""Local paths for stored files, whatever the storage backend (one home: DESIGN.md §6).

On local storage a stored file is its own path. On object storage (RECOTEM_STORAGE=s3) every
read goes through this machine's bounded cache (``recotem.lib.filecache``, under
RECOTEM_CACHE_DIR, at most RECOTEM_CACHE_MB): workers, web and inference processes then fetch an
upload or an artifact once per machine, not once per use. Callers that verify bytes (artifact
signatures) verify what they read from here, so a cached copy is checked like a fresh one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files.storage import Storage, default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db.models.fields.files import FieldFile

from recotem.lib.filecache import FileCache


def _copy_to_temp(chunks: Iterable[bytes], name: str) -> Iterator[Path]:
    fd, temp = tempfile.mkstemp(suffix="".join(Path(name).suffixes))
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        yield Path(temp)
    finally:
        os.unlink(temp)


def file_cache() -> FileCache:
    """This machine's cache of stored files (read from settings each time: tests change them)."""
    return FileCache(Path(settings.RECOTEM_CACHE_DIR), settings.RECOTEM_CACHE_MB * 1024 * 1024)


def _local_path(storage: Storage, name: str) -> Path | None:
    try:
        return Path(storage.path(name))
    except NotImplementedError:  # object storage has no paths
        return None


def _cache_key(storage: Storage, name: str) -> str:
    # Two configurations sharing one cache folder (another bucket or prefix) never collide.
    bucket = getattr(storage, "bucket_name", "") or ""
    location = getattr(storage, "location", "") or ""
    return f"{type(storage).__name__}:{bucket}:{location}:{name}"


def _fetch(storage: Storage, name: str, out: BinaryIO) -> None:
    with storage.open(name, "rb") as src:
        # django-storages' S3File would buffer the whole object in memory before the first
        # read; its boto3 object streams the download in parts straight into our temp file.
        obj = getattr(src, "obj", None)
        if obj is not None:
            obj.download_fileobj(out)
        else:
            shutil.copyfileobj(src, out, 1 << 20)


@contextmanager
def stored_path(name: str, storage: Storage | None = None) -> Iterator[Path]:
    """A local path for the stored file ``name``: itself on local storage, else the cached copy."""
    storage = storage or default_storage
    path = _local_path(storage, name)
    if path is not None:
        yield path
        return
    with file_cache().local(_cache_key(storage, name), lambda out: _fetch(storage, name, out)) as p:
        yield p


def read_stored(name: str, storage: Storage | None = None) -> bytes:
    """The bytes of a stored file, read through the cache (artifacts: verify them after)."""
    with stored_path(name, storage) as path:
        return path.read_bytes()


@contextmanager
def local_file(field: FieldFile) -> Iterator[Path]:
    """A local path for a stored file field (see ``stored_path``)."""
    with stored_path(field.name or "", field.storage) as path:
        yield path


@contextmanager
def local_upload(upload: UploadedFile[bytes]) -> Iterator[Path]:
    """A local path for an upload without copying it when Django already spooled it to disk."""
    if hasattr(upload, "temporary_file_path"):
        yield Path(upload.temporary_file_path())
        return
    yield from _copy_to_temp(upload.chunks(), upload.name or "upload")


def delete_stored_name(storage: Storage, name: str) -> None:
    """Delete one stored file and this machine's cached copy of it."""
    storage.delete(name)
    if _local_path(storage, name) is None:
        file_cache().discard(_cache_key(storage, name))


def delete_stored(files: Iterable[FieldFile]) -> None:
    """Delete stored files after their rows are gone; a file already missing is fine."""
    for field in files:
        if field and field.name:
            try:
                delete_stored_name(field.storage, field.name)
            except OSError:
                pass
