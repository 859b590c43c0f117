"""A bounded local cache of remote files (S3 objects), shared by every process of one machine.

Workers and inference processes need a local path or the bytes of a stored file (an upload to
parse, an artifact to verify and load). With object storage, each would download it again; this
keeps recently used files under one folder, bounded in total size, least recently used first out.

Safe under concurrent processes without a coordinator:

* a file appears only complete: it is downloaded to a temp file in the same folder, then
  hard-linked to its final name (atomic on POSIX, and it fails rather than replace a file
  someone may hold); two processes fetching the same key at once both download, and the
  second keeps the first one's copy;
* a file in use is never evicted: a reader holds a shared ``flock`` on it while it uses it, and
  eviction deletes only files it can lock exclusively without waiting. A reader that opened a
  file just as it was evicted notices (its inode is no longer the one at that name) and fetches
  again.

Keys name immutable objects (stored names are never overwritten: the storage adds a suffix),
so a cached file never goes stale; its bytes are still verified by whoever uses them (artifact
signatures), so a tampered cache file is refused like a tampered object.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

_TEMP_PREFIX = ".part-"
_WRITERS_LOCK = ".writers.lock"
# errno values of a file system that has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
# A temp file this old was left by a process that died mid-download.
_STALE_TEMP_SECONDS = 3600


class FileCache:
    """Files under ``root``, at most ``max_bytes`` in total once no one is using them."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, key: str) -> Path:
        """Where ``key`` is cached: a digest (keys are object names with slashes), plus the
        key's suffixes, which readers use to tell a gzipped CSV from a Parquet file."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        suffixes = "".join(s for s in Path(key).suffixes if len(s) <= 10)
        return self.root / f"{digest}{suffixes}"

    @contextmanager
    def local(self, key: str, fetch: Callable[[BinaryIO], None]) -> Iterator[Path]:
        """A local path holding ``key``'s bytes for the duration of the block.

        ``fetch(out)`` writes the object's bytes to ``out``; it is called only on a miss.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(key)
        for _ in range(5):
            fd = self._open_locked(path)
            if fd is None:
                self._download(path, fetch)
                continue
            try:
                os.utime(path)  # the recency that eviction orders by
                yield path
            finally:
                os.close(fd)  # releases the shared lock
            return
        raise OSError(f"could not keep {key!r} in the cache at {self.root} (evicted repeatedly)")

    def _open_locked(self, path: Path) -> int | None:
        """An fd holding a shared lock on the cached file, or None if it is not (or no longer) there."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            linked = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            linked = False
        if not linked:  # evicted (or replaced) between our open and our lock
            os.close(fd)
            return None
        return fd

    def _download(self, path: Path, fetch: Callable[[BinaryIO], None]) -> None:
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                fetch(out)
                out.flush()
                os.fsync(out.fileno())
            # Link, never replace: a reader holding a lock on the file at ``path`` must find
            # that same file there until it lets go, or eviction could delete a replacement
            # under it. If another process got there first, its bytes are the same object's.
            try:
                os.link(temp, path)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                self._rename_if_absent(temp, path)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)
        self.evict(keep=path)

    def _rename_if_absent(self, temp: str, path: Path) -> None:
        """Where hard links do not exist (SMB, FAT, some FUSE mounts): rename, but only onto a
        free name, checked and done under one lock all writers take, so nothing is replaced."""
        with open(self.root / _WRITERS_LOCK, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not path.exists():
                os.rename(temp, path)

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Cached files (not temp files), least recently used first."""
        found: list[tuple[Path, os.stat_result]] = []
        now = time.time()
        with os.scandir(self.root) as it:
            for entry in it:
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name == _WRITERS_LOCK:
                    continue
                if entry.name.startswith(_TEMP_PREFIX):
                    if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                    continue
                if entry.is_file():
                    found.append((Path(entry.path), stat))
        found.sort(key=lambda pair: pair[1].st_mtime)
        return found

    def size(self) -> int:
        return sum(stat.st_size for _, stat in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Delete least recently used files until the total fits, skipping files in use and
        ``keep`` (just fetched for a caller who is about to open it)."""
        entries = self.entries()
        total = sum(stat.st_size for _, stat in entries)
        for path, stat in entries:
            if total <= self.max_bytes:
                return
            if path == keep:
                continue
            if self._delete_unused(path):
                total -= stat.st_size

    def discard(self, key: str) -> None:
        """Forget ``key`` (its object was deleted), unless a reader is using it right now."""
        self._delete_unused(self.path_for(key))

    @staticmethod
    def _delete_unused(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a reader holds it
            os.close(fd)
            return False
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return False  # replaced meanwhile: the new file is someone else's business
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
