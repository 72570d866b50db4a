"""Page checksums of cache files: a ranged read reads and verifies only its pages, and a
damaged page is never served."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from fusecache.cache import TieredCache, blockfile
from fusecache.cache.blockfile import HEADER, MAGIC, PAGE, V1_HEADER, V1_MAGIC, VERSION, checksum, file_name
from tests.cache.helpers import block_of, files_under, key_of, mem, ssd

BLOCK = 4 << 20


def _only_file(root: Path) -> Path:
    (found,) = files_under(root)
    return found


def _flip(path: Path, at_from_end: int) -> None:
    with open(path, "r+b") as f:
        f.seek(-at_from_end, os.SEEK_END)
        byte = f.read(1)
        f.seek(-at_from_end, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("medium", ["mem", "ssd"])
def test_ranges_match_the_block_everywhere(tmp_path: Path, medium: str) -> None:
    size = BLOCK - 12345  # a short last page
    tier = ssd(64 << 20, tmp_path) if medium == "ssd" else mem(64 << 20)
    cache = TieredCache([tier], "v")
    key, data = key_of(1, size), block_of(1, size)
    cache.put(key, data)
    rng = random.Random(5)
    cases = [(0, 1), (0, PAGE), (PAGE - 1, 2), (size - 1, 1), (size - 100, 4096), (0, size), (size, 10)]
    cases += [(rng.randrange(size), rng.choice([1, 4096, PAGE, 3 * PAGE + 7])) for _ in range(200)]
    for offset, length in cases:
        got = cache.get_range(key, offset, length)
        assert got is not None and bytes(got) == data[offset : offset + length], (offset, length)
    assert cache.get_range(key_of(2, size), 0, 10) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (len(cases), 1)


def test_a_ranged_read_verifies_only_its_pages_and_a_bad_page_is_never_served(tmp_path: Path) -> None:
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    key, data = key_of(3, BLOCK), block_of(3, BLOCK)
    cache.put(key, data)
    _flip(_only_file(tmp_path), 10)  # a byte in the last page
    # The first pages are intact and are served without reading the rest of the file.
    assert cache.get_range(key, 0, 4096) == data[:4096]
    assert cache.get_range(key, 5 * PAGE + 3, 2 * PAGE) == data[5 * PAGE + 3 : 7 * PAGE + 3]
    assert cache.stats().tiers[0].corrupt == 0
    # The damaged page is not: the read is a miss and the file is dropped.
    assert cache.get_range(key, BLOCK - 4096, 4096) is None
    tier = cache.stats().tiers[0]
    assert (tier.corrupt, tier.blocks) == (1, 0)
    assert files_under(tmp_path) == []


def test_a_whole_block_read_checks_every_page(tmp_path: Path) -> None:
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    key, data = key_of(4, BLOCK), block_of(4, BLOCK)
    cache.put(key, data)
    _flip(_only_file(tmp_path), BLOCK // 2)  # a page in the middle
    assert cache.get(key) is None
    assert cache.stats().tiers[0].corrupt == 1


def test_a_damaged_page_table_is_caught_by_the_header_checksum(tmp_path: Path) -> None:
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    key, data = key_of(5, BLOCK), block_of(5, BLOCK)
    cache.put(key, data)
    path = _only_file(tmp_path)
    with open(path, "r+b") as f:  # rewrite the table entry of page 0 to match garbage
        f.seek(32 + len(key.encode()))
        f.write(struct.pack("<Q", checksum(b"\0" * PAGE)))
        f.seek(os.path.getsize(path) - BLOCK)
        f.write(b"\0" * PAGE)
    assert cache.get_range(key, 0, 4096) is None
    assert cache.stats().tiers[0].corrupt == 1


def test_format_1_files_of_an_earlier_version_are_still_read(tmp_path: Path) -> None:
    """A cache filled by an earlier version stays warm after an upgrade."""
    key, data = key_of(6, BLOCK), block_of(6, BLOCK)
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    cache.put(key, b"x")  # makes the directories
    cache.close()
    (old,) = files_under(tmp_path)
    os.unlink(old)
    name = file_name(key, 1)
    assert name is not None
    head = V1_HEADER.pack(V1_MAGIC, 1, len(key.encode()), len(data), checksum(data)) + key.encode()
    (old.parent / name).write_bytes(head + data)
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    assert cache.get_range(key, PAGE + 5, 100) == data[PAGE + 5 : PAGE + 105]
    assert cache.get(key) == data
    _flip(old.parent / name, 1)
    assert cache.get(key) is None, "the whole-block checksum of format 1 still guards it"


def test_files_with_the_earlier_64_KiB_pages_are_still_read_and_checked(tmp_path: Path) -> None:
    """Pages are 16 KiB now; a cache filled with 64 KiB pages stays warm, page by page."""
    old_page = 64 << 10
    assert old_page != PAGE
    key, data = key_of(7, BLOCK), block_of(7, BLOCK)
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    cache.put(key, data)
    cache.close()
    (path,) = files_under(tmp_path)
    key_b = key.encode()
    table = b"".join(struct.pack("<Q", checksum(data[i : i + old_page])) for i in range(0, len(data), old_page))
    fixed = HEADER.pack(MAGIC, VERSION, len(key_b), len(data), old_page, 0)
    path.write_bytes(fixed + struct.pack("<Q", checksum(fixed + key_b + table)) + key_b + table + data)
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    for off, n in ((0, 4096), (old_page - 3, 10), (BLOCK - 5000, 5000), (0, BLOCK)):
        got = cache.get_range(key, off, n)
        assert got is not None and bytes(got) == data[off : off + n], (off, n)
    assert cache.get(key) == data
    _flip(path, 10)  # the last 64 KiB page
    assert cache.get_range(key, BLOCK - old_page, 1) is None, "its page checksum still guards it"
    assert cache.stats().tiers[0].corrupt == 1


def _open_cache_files(root: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [p for p in out if p.startswith(str(root)) and ("/clean/" in p or "/staged/" in p)]


def test_reads_without_a_disk_wait_use_files_held_open_and_evicted_files_are_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """get_range_nowait (safe on the event loop) serves only what needs no disk wait: a
    file held open, or one whose path and head are in the kernel's caches, from the page
    cache; when the block leaves the cache its file is closed, so its disk space is freed,
    and a damaged page is still never served."""
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")
    key, data = key_of(8, BLOCK), block_of(8, BLOCK)
    cache.put(key, data)
    with monkeypatch.context() as patch:
        patch.setattr(blockfile, "_cached_open_works", False)  # a kernel without RESOLVE_CACHED
        assert cache.get_range_nowait(key, 0, 4096) is None, "not open yet: opening could wait"
        assert _open_cache_files(tmp_path) == []
    assert bytes(cache.get_range(key, 0, 4096) or b"") == data[:4096]
    assert len(_open_cache_files(tmp_path)) == 1
    for off in (0, PAGE * 7 + 11, BLOCK - 4096):
        got = cache.get_range_nowait(key, off, 4096)
        assert got is not None and bytes(got) == data[off : off + 4096]
    assert cache.get_range_nowait(key_of(9, BLOCK), 0, 10) is None
    misses = cache.stats().misses
    _flip(_only_file(tmp_path), 10)
    assert cache.get_range_nowait(key, BLOCK - 4096, 4096) is None
    assert cache.stats().tiers[0].corrupt == 1 and cache.stats().misses == misses
    assert _open_cache_files(tmp_path) == [], "a dropped file is closed"
    cache.put(key, data)
    cache.get_range(key, 0, 1)
    assert len(_open_cache_files(tmp_path)) == 1
    cache.evict([key])
    assert _open_cache_files(tmp_path) == [], "an evicted file is closed: its space is freed"
    cache.close()


def test_a_file_not_held_open_is_opened_on_the_loop_when_its_path_is_cached(tmp_path: Path) -> None:
    """A block another process (or an earlier mount) wrote: its path and pages are in the
    kernel's caches, so get_range_nowait opens it without a thread and serves the range,
    checked; a path that is not there at all is a miss, not an error."""
    writer = TieredCache([ssd(64 << 20, tmp_path)], "v")
    key, data = key_of(11, 110 << 10), block_of(11, 110 << 10)
    writer.put(key, data)
    writer.close()
    reader = TieredCache([ssd(64 << 20, tmp_path)], "v")  # a fresh index: nothing held open
    got = reader.get_range_nowait(key, 0, len(data))
    assert got is not None and bytes(got) == data
    assert len(_open_cache_files(tmp_path)) == 1, "kept open for the next ranged read"
    try:
        blockfile.open_cached(tmp_path / "no-such-file")
    except BlockingIOError:
        pass  # a name the kernel has never looked up may need the disk: refused, no error
    except FileNotFoundError:
        pass  # or known missing: the general path sorts it out
    else:
        raise AssertionError("opened a file that does not exist")
    _flip(_only_file(tmp_path), 10)
    reader.close()
    fresh = TieredCache([ssd(64 << 20, tmp_path)], "v")
    assert fresh.get_range_nowait(key, len(data) - 100, 100) is None, "a damaged page is never served"
    fresh.close()
