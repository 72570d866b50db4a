"""The client's metadata cache through two real mounts of one volume: repeated lookups and
stats past the kernel's 1 s caches are answered without Redis, and every change the other
mount makes (attributes, size, rename over, unlink, a new file) is seen as soon as the
kernel asks again. Mount a keeps the kernel's caches short (--coherent-timeout 0), so that
each stat reaches the client's own cache (test_kernel_cache.py covers the long ones)."""

from __future__ import annotations

import os
import time

import redis

from tests.fuse.helpers import Volume, client_stats, wait_for

KERNEL_TIMEOUT = 1.1  # past the kernel's entry and attribute caches (1 s)


def test_another_mounts_changes_are_seen_and_unchanged_entries_are_cached(file_volume: Volume) -> None:
    a, b = file_volume.mount("--coherent-timeout", "0"), file_volume.mount()
    for name in ("f", "g", "h"):
        (b.path / name).write_bytes(b"12345")
    wait_for(lambda: client_stats(a.path)["meta_cache"]["live"], what="change feed live")
    os.stat(a.path / "f")
    time.sleep(KERNEL_TIMEOUT)
    before = client_stats(a.path)["meta_cache"]["hits"]
    for _ in range(3):
        assert os.stat(a.path / "f").st_size == 5
        time.sleep(KERNEL_TIMEOUT)
    assert client_stats(a.path)["meta_cache"]["hits"] - before >= 3, "unchanged: answered from the cache"

    os.stat(a.path / "g")
    time.sleep(KERNEL_TIMEOUT)
    # Attribute changes alone (no name changes in the directory) ...
    os.chmod(b.path / "f", 0o600)
    with open(b.path / "g", "r+b") as out:
        out.write(b"longer now")
    time.sleep(KERNEL_TIMEOUT)
    assert os.stat(a.path / "f").st_mode & 0o777 == 0o600
    assert os.stat(a.path / "g").st_size == 10
    # ... and name changes.
    os.rename(b.path / "h", b.path / "f2")
    time.sleep(KERNEL_TIMEOUT)
    assert not os.path.exists(a.path / "h") and os.stat(a.path / "f2").st_size == 5

    os.rename(b.path / "g", b.path / "f")  # replaces f: a's name must lead to g's inode
    os.unlink(b.path / "f2")
    (b.path / "new").write_bytes(b"x")
    time.sleep(KERNEL_TIMEOUT)
    assert (a.path / "f").read_bytes() == b"longer now"
    assert not os.path.exists(a.path / "f2")
    assert (a.path / "new").read_bytes() == b"x"
    assert sorted(os.listdir(a.path)) == ["f", "new"]

    # a's own changes are seen by a at once, before any notice could come back
    os.unlink(a.path / "new")
    assert not os.path.exists(a.path / "new")


def _hscans(meta_url: str) -> int:
    raw = redis.Redis.from_url(meta_url)
    try:
        return int(raw.info("commandstats").get("cmdstat_hscan", {}).get("calls", 0))
    finally:
        raw.close()


def test_listings_of_an_unchanged_directory_do_not_scan_it_again(file_volume: Volume) -> None:
    a, b = file_volume.mount(), file_volume.mount()
    (b.path / "d").mkdir()
    for i in range(300):
        (b.path / "d" / f"f{i:03d}").write_bytes(b"x")
    expected = sorted(f"f{i:03d}" for i in range(300))
    wait_for(lambda: client_stats(a.path)["meta_cache"]["live"], what="change feed live")
    wait_for(lambda: sorted(os.listdir(a.path / "d")) == expected, what="a's listing")
    scans = _hscans(file_volume.meta_url)
    reused = client_stats(a.path)["fuse"]["reused_listings"]
    for _ in range(5):
        assert sorted(os.listdir(a.path / "d")) == expected
    assert _hscans(file_volume.meta_url) == scans, "an unchanged directory is listed from the cache"
    # ... and from the listing built for the kernel last time, so its replies are reused too
    assert client_stats(a.path)["fuse"]["reused_listings"] - reused >= 4

    # another mount's changes reach the listing (its notice comes within a round trip) ...
    (b.path / "d" / "new").write_bytes(b"y")
    os.unlink(b.path / "d" / "f000")
    os.rename(b.path / "d" / "f001", b.path / "moved")
    expected = sorted([*expected[2:], "new"])
    wait_for(lambda: sorted(os.listdir(a.path / "d")) == expected, timeout=5, what="b's changes in a's listing")
    # A child's new size and mode reach what a listing tells the kernel (readdirplus), not
    # the replies built for the unchanged listing before.
    def sizes_and_modes() -> dict[str, tuple[int, int]]:
        with os.scandir(a.path / "d") as it:
            return {e.name: (e.stat(follow_symlinks=False).st_size, e.stat(follow_symlinks=False).st_mode & 0o777)
                    for e in it}
    before = sizes_and_modes()["f005"]
    with open(b.path / "d" / "f005", "ab") as out:
        out.write(b"longer")
    os.chmod(b.path / "d" / "f005", 0o600)
    assert before != (7, 0o600)
    wait_for(lambda: sizes_and_modes()["f005"] == (7, 0o600), timeout=5, what="b's size and mode in a's listing")
    # ... and a's own at once
    (a.path / "d" / "mine").write_bytes(b"z")
    assert "mine" in os.listdir(a.path / "d")
    os.unlink(a.path / "d" / "mine")
    assert "mine" not in os.listdir(a.path / "d")


def _calls(meta_url: str, command: str) -> int:
    raw = redis.Redis.from_url(meta_url)
    try:
        return int(raw.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        raw.close()


def test_a_first_listing_reads_only_the_attributes_this_client_lacks(file_volume: Volume) -> None:
    a, b = file_volume.mount("--coherent-timeout", "0"), file_volume.mount()
    (b.path / "d").mkdir()
    for i in range(200):
        (b.path / "d" / f"f{i:03d}").write_bytes(b"x" * i)
    wait_for(lambda: client_stats(a.path)["meta_cache"]["live"], what="change feed live")
    sizes = {f"f{i:03d}": i for i in range(200)}
    for name in sizes:  # every entry's attributes reach a's cache (the kernel keeps none long)
        os.stat(a.path / "d" / name)
    mgets = _calls(file_volume.meta_url, "mget")
    with os.scandir(a.path / "d") as it:
        assert {e.name: e.stat().st_size for e in it} == sizes
    assert _calls(file_volume.meta_url, "mget") == mgets, "the names came from Redis, the attributes from the cache"
    # an entry whose attributes changed elsewhere is read again, not served stale
    with open(b.path / "d" / "f007", "ab") as out:
        out.write(b"more")
    wait_for(lambda: (a.path / "d" / "f007").stat().st_size == 11, timeout=5, what="b's append seen by a")
    os.unlink(b.path / "d" / "f008")
    del sizes["f008"]
    sizes["f007"] = 11
    def listed() -> dict[str, int]:
        with os.scandir(a.path / "d") as it:
            return {e.name: e.stat().st_size for e in it}
    wait_for(lambda: listed() == sizes, timeout=5, what="b's changes in a's listing")


def test_a_big_first_listing_reads_missing_attributes_in_bounded_batches(file_volume: Volume) -> None:
    """2,500 entries that this client never saw: their attributes come in two MGETs of at
    most 2,000 (bounded replies on the event loop), and every entry is listed right."""
    a, b = file_volume.mount("--coherent-timeout", "0"), file_volume.mount()
    (b.path / "big").mkdir()
    sizes = {f"e{i:04d}": i % 7 for i in range(2500)}
    for name, size in sizes.items():
        (b.path / "big" / name).write_bytes(b"z" * size)
    wait_for(lambda: client_stats(a.path)["meta_cache"]["live"], what="change feed live")
    mgets = _calls(file_volume.meta_url, "mget")
    with os.scandir(a.path / "big") as it:
        assert {e.name: e.stat().st_size for e in it} == sizes
    assert _calls(file_volume.meta_url, "mget") - mgets == 2
