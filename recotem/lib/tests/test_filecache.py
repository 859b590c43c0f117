"""The bounded file cache: hits, LRU eviction under the bound, files in use, many processes."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import pytest

from recotem.lib import filecache
from recotem.lib.filecache import FileCache

KB = 1024


def _writer(data: bytes, calls: list[str] | None = None, key: str = ""):  # type: ignore[no-untyped-def]
    def fetch(out: BinaryIO) -> None:
        if calls is not None:
            calls.append(key)
        out.write(data)

    return fetch


def test_it_fetches_once_and_serves_hits_from_disk(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c", 10 * KB)
    calls: list[str] = []
    with cache.local("media/a.csv.gz", _writer(b"abc", calls, "a")) as path:
        assert path.read_bytes() == b"abc" and path.name.endswith(".csv.gz")
    with cache.local("media/a.csv.gz", _writer(b"other", calls, "a")) as path:
        assert path.read_bytes() == b"abc"
    assert calls == ["a"]


def test_it_evicts_least_recently_used_files_beyond_the_bound(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c", 10 * KB)
    for key in ("a", "b", "c"):
        with cache.local(key, _writer(b"x" * 4 * KB)):
            pass
        time.sleep(0.02)  # distinct mtimes
    # a was oldest: the third file pushed the total over 10 KB.
    assert not cache.path_for("a").exists()
    assert cache.path_for("b").exists() and cache.path_for("c").exists()
    with cache.local("b", _writer(b"")):  # b is now the most recent
        pass
    time.sleep(0.02)
    with cache.local("d", _writer(b"x" * 4 * KB)):
        pass
    assert not cache.path_for("c").exists() and cache.path_for("b").exists()
    assert cache.size() <= 10 * KB


def test_a_file_in_use_is_not_evicted(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c", 5 * KB)
    with cache.local("big", _writer(b"1" * 4 * KB)) as held:
        time.sleep(0.02)
        with cache.local("other", _writer(b"2" * 4 * KB)):
            pass
        assert held.read_bytes() == b"1" * 4 * KB  # still there while we hold it
    with cache.local("third", _writer(b"3" * 4 * KB)):
        pass
    assert not cache.path_for("big").exists()  # released, so it could go


def test_a_failed_download_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c", 10 * KB)

    def broken(out: BinaryIO) -> None:
        out.write(b"half")
        raise ConnectionError("endpoint went away")

    with pytest.raises(ConnectionError), cache.local("k", broken):
        pass
    assert list((tmp_path / "c").iterdir()) == []


def test_discard_forgets_a_key(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c", 10 * KB)
    with cache.local("k", _writer(b"v")):
        pass
    cache.discard("k")
    assert not cache.path_for("k").exists()


def test_a_copy_on_another_machine_stays_until_that_cache_needs_the_room(tmp_path: Path) -> None:
    """What docs/scale-out.md says: a machine that deletes an object discards its own copy; the
    other machines are not told, and theirs goes only when their cache needs the room."""
    bucket = {"gone": b"g" * 4 * KB}
    here, there = FileCache(tmp_path / "a", 10 * KB), FileCache(tmp_path / "b", 10 * KB)
    for cache in (here, there):
        with cache.local("gone", _writer(bucket["gone"])):
            pass
    del bucket["gone"]
    here.discard("gone")  # what delete_stored_name does on the deleting machine
    assert not here.path_for("gone").exists()
    time.sleep(0.02)
    with there.local("new", _writer(b"n" * 4 * KB)):
        pass
    there.evict()  # an eviction pass while the total is within the bound changes nothing
    assert there.path_for("gone").exists()
    time.sleep(0.02)
    with there.local("newer", _writer(b"m" * 4 * KB)):  # past the bound: LRU first
        pass
    assert not there.path_for("gone").exists()
    assert there.path_for("new").exists() and there.path_for("newer").exists()


def test_a_second_download_never_pulls_a_held_file_from_under_its_reader(tmp_path: Path) -> None:
    """Two processes miss the same key at once: A finishes first and holds its copy; B's copy
    must not take A's place, or the next eviction deletes the file A is still reading."""
    root = tmp_path / "c"
    a, b = FileCache(root, 4 * KB), FileCache(root, 4 * KB)
    data = b"1" * 4 * KB
    held_by_a = ExitStack()
    a_path: list[Path] = []

    def b_fetch(out: BinaryIO) -> None:
        a_path.append(held_by_a.enter_context(a.local("k", _writer(data))))
        out.write(data)

    with held_by_a:
        with b.local("k", b_fetch):
            pass
        with b.local("other", _writer(b"o" * 4 * KB)):  # past the bound: evicts what is unused
            pass
        assert a_path[0].read_bytes() == data


def test_without_hard_links_it_still_never_replaces_a_held_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMB, FAT and some FUSE mounts refuse link(2); the cache then renames onto free names only."""

    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(filecache.os, "link", no_links)
    test_a_second_download_never_pulls_a_held_file_from_under_its_reader(tmp_path)
    cache = FileCache(tmp_path / "c", 4 * KB)
    with cache.local("k", _writer(b"x")) as path:  # a hit: nothing fetched
        assert path.read_bytes() == b"1" * 4 * KB
    assert not [n for n in os.listdir(tmp_path / "c") if n.startswith(".part-")]


def _hammer(root: str, worker: int, rounds: int) -> list[str]:
    """One process reading eight keys over and over through a cache that holds about three."""
    cache = FileCache(Path(root), 3 * 64 * KB)
    problems: list[str] = []
    for n in range(rounds):
        key = f"k{(n * 7 + worker) % 8}"
        expected = key.encode() * (64 * KB // len(key))
        with cache.local(key, _writer(expected)) as path:
            data = path.read_bytes()
            if data != expected:
                problems.append(f"{key}: {len(data)} bytes")
    return problems


def test_many_processes_share_one_cache_safely(tmp_path: Path) -> None:
    root = tmp_path / "c"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_hammer, [(str(root), w, 60) for w in range(4)])
    assert [p for r in results for p in r] == []
    leftovers = [name for name in os.listdir(root) if name.startswith(".part-")]
    assert leftovers == []
    # Nobody holds a file any more, so the next eviction gets it within the bound.
    FileCache(root, 3 * 64 * KB).evict()
    assert FileCache(root, 3 * 64 * KB).size() <= 3 * 64 * KB
