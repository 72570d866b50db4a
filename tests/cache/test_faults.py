"""The cache on full, failing and shared disks, and under concurrent use: real tmpfs mounts."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusecache.cache import TieredCache
from fusecache.cache.disk import RETRY_FULL_AFTER
from tests.cache.helpers import block_of, bytes_on_disk, key_of, mem, ssd

BS = 128 << 10


def fill_bytes(path: Path) -> Path:
    """Write a filler file until the filesystem is out of space."""
    filler = path / "filler"
    chunk = b"\xa5" * (64 << 10)
    fd = None
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc  # also on create: the cache may have taken it all
    finally:
        if fd is not None:
            os.close(fd)
    return filler


def fill_inodes(path: Path) -> Path:
    """Create empty files until the filesystem has no inode left."""
    holder = path / "inodes"
    holder.mkdir()
    n = 0
    while True:
        try:
            (holder / str(n)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return holder
        n += 1


def free_ratio(path: Path) -> float:
    st_ = os.statvfs(path)
    return st_.f_bavail / st_.f_blocks


def assert_correct_or_missing(cache: TieredCache, ids: range, size: int = BS) -> int:
    """Every lookup is either a miss or the exact bytes; returns the number of hits."""
    hits = 0
    for i in ids:
        data = cache.get(key_of(i, size))
        if data is not None:
            assert data == block_of(i, size), f"wrong bytes for block {i}"
            hits += 1
    return hits


def test_cache_on_full_tmpfs_never_raises(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("size=8m")
    cache = TieredCache([mem(4 * BS), ssd(64 << 20, disk, free_ratio=0.0)], "v")
    for i in range(20):
        cache.put(key_of(i, BS), block_of(i, BS))
    cache.wait_demotions()  # demotion to SSD runs in the background
    assert cache.stats().tiers[1].blocks > 0
    filler = fill_bytes(disk)
    for i in range(20, 60):
        cache.put(key_of(i, BS), block_of(i, BS))
        assert cache.stage(key_of(1000 + i, BS), block_of(1000 + i, BS)) in (True, False)
    assert assert_correct_or_missing(cache, range(60)) > 0
    # Once space is back, the cache grows again.
    filler.unlink()
    time.sleep(RETRY_FULL_AFTER + 0.1)
    cache.put(key_of(100, BS), block_of(100, BS))
    cache.flush_mem()
    assert cache.contains(key_of(100, BS)) == "ssd"
    assert cache.get(key_of(100, BS)) == block_of(100, BS)


def test_enospc_on_write_degrades_and_warns_once(tmpfs: Callable[..., Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Out of inodes: statvfs shows free bytes, yet every create fails with ENOSPC."""
    disk = tmpfs("size=8m,nr_inodes=700")
    cache = TieredCache([ssd(64 << 20, disk, free_ratio=0.0)], "v")
    for i in range(5):
        cache.put(key_of(i, BS), block_of(i, BS))
    holder = fill_inodes(disk)
    caplog.set_level(logging.WARNING, logger="fusecache.cache")
    for round_ in range(2):  # the second round comes after the retry delay: fails again
        for i in range(10, 20):
            cache.put(key_of(i, BS), block_of(i, BS))
        assert cache.stage(key_of(99, BS), block_of(99, BS)) is False
        if round_ == 0:
            time.sleep(RETRY_FULL_AFTER + 0.1)
    stats = cache.stats().tiers[0]
    assert stats.errors == 2
    assert stats.refused > 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "No space left on device" in warnings[0].getMessage()
    assert assert_correct_or_missing(cache, range(20)) == 5  # old blocks still served
    assert stats.used == bytes_on_disk(disk / "v")  # failed writes left nothing behind
    assert os.listdir(disk / "v" / "tmp") == []
    shutil.rmtree(holder)
    time.sleep(RETRY_FULL_AFTER + 0.1)
    assert cache.stage(key_of(99, BS), block_of(99, BS))


def test_read_only_cache_disk_serves_reads_and_skips_writes(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("size=8m")
    cache = TieredCache([ssd(64 << 20, disk)], "v")
    for i in range(5):
        cache.put(key_of(i, BS), block_of(i, BS))
    assert cache.stage(key_of(50, BS), block_of(50, BS))
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        for i in range(5, 10):
            cache.put(key_of(i, BS), block_of(i, BS))
        assert cache.stage(key_of(51, BS), block_of(51, BS)) is False
        cache.uploaded(key_of(50, BS))  # link fails: stays staged
        assert cache.pending_staged() == [key_of(50, BS)]
        cache.evict([key_of(0, BS)])  # unlink fails: dropped from the index anyway
        assert assert_correct_or_missing(cache, range(10)) == 4
        assert cache.get(key_of(50, BS)) == block_of(50, BS)
        assert cache.stats().tiers[0].errors >= 2
        # A restart on a read-only disk still finds everything.
        cache.close()
        again = TieredCache([ssd(64 << 20, disk)], "v")
        assert assert_correct_or_missing(again, range(10)) == 5
        assert again.pending_staged() == [key_of(50, BS)]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


def test_free_ratio_stops_growth(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("size=8m")
    cache = TieredCache([ssd(64 << 20, disk, free_ratio=0.5)], "v")
    for i in range(60):  # 7.5 MiB of blocks: more than the allowed half of 8 MiB
        cache.put(key_of(i, BS), block_of(i, BS))
        assert free_ratio(disk) >= 0.5
        assert cache.get(key_of(i, BS)) == block_of(i, BS)  # old blocks make room for new ones
    stats = cache.stats().tiers[0]
    assert stats.evictions > 0
    assert 3 << 20 < stats.used <= 4 << 20
    # Staged blocks cannot be evicted, so staging stops at the floor instead.
    staged = [cache.stage(key_of(100 + i, BS), block_of(100 + i, BS)) for i in range(60)]
    assert True in staged and staged[-1] is False
    assert free_ratio(disk) >= 0.5


def test_free_ratio_shrinks_when_others_fill_the_disk(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("size=8m")
    cache = TieredCache([ssd(64 << 20, disk, free_ratio=0.2)], "v")
    for i in range(20):
        cache.put(key_of(i, BS), block_of(i, BS))
    with open(disk / "other", "wb") as f:
        f.write(b"\0" * (4 << 20))
    cache.put(key_of(20, BS), block_of(20, BS))
    assert free_ratio(disk) >= 0.2
    assert cache.get(key_of(20, BS)) == block_of(20, BS)


def test_concurrent_mixed_workload(tmp_path: Path) -> None:
    """16 threads put/get/stage/upload/remove/evict the same keys; every byte is verified."""
    tiers = [mem(1 << 20), ssd(4 << 20, tmp_path / "a", tmp_path / "b", free_ratio=0.0)]
    cache = TieredCache(tiers, "v", promote=True)
    sizes = {i: random.Random(i).choice([4096, 100_000, 300_000]) for i in range(300)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(400):
                if stop.is_set():
                    return
                i = rng.randrange(300)
                key, size = key_of(i, sizes[i]), sizes[i]
                op = rng.random()
                if op < 0.45:
                    data = cache.get(key)
                    if data is not None and data != block_of(i, size):
                        raise AssertionError(f"wrong bytes for {key}")
                elif op < 0.8:
                    cache.put(key, block_of(i, size))
                elif op < 0.88:
                    if cache.stage(key, block_of(i, size)) and rng.random() < 0.7:
                        cache.uploaded(key)
                elif op < 0.94:
                    cache.remove(key)
                else:
                    cache.evict_prefix(key[:14])
                for tier in cache.stats().tiers:
                    if tier.used > tier.quota:
                        raise AssertionError(f"{tier.medium} over quota: {tier.used} > {tier.quota}")
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    # The index matches the disk, and a restart sees the same blocks.
    cache.wait_demotions()
    assert cache.stats().tiers[1].used == bytes_on_disk(tmp_path)
    assert list(os.scandir(tmp_path / "a" / "v" / "tmp")) == []
    cache.close()  # demotes what MEM holds
    ssd_stats = cache.stats().tiers[1]
    assert ssd_stats.used == bytes_on_disk(tmp_path)
    again = TieredCache([tiers[1]], "v")
    reopened = again.stats().tiers[0]
    # Staged blocks can pin usage above the high watermark; start-up then evicts clean ones.
    assert reopened.blocks == ssd_stats.blocks - reopened.evictions
    assert reopened.evictions == 0 or ssd_stats.used > 0.95 * ssd_stats.quota
    assert ssd_stats.evictions > 0 and cache.stats().tiers[0].demotions > 0
    assert again.pending_staged() == cache.pending_staged()
    for key in again.pending_staged():
        i = int(key.rsplit("/", 1)[1].split("_")[0])
        assert again.get(key) == block_of(i, sizes[i])
    for i in range(300):
        data = again.get(key_of(i, sizes[i]))
        assert data is None or data == block_of(i, sizes[i])


def test_concurrent_writers_while_disk_fills_and_drains(tmpfs: Callable[..., Path]) -> None:
    """Another process's file grows and shrinks under the cache: ENOSPC races, never errors."""
    disk = tmpfs("size=8m")
    cache = TieredCache([mem(2 * BS), ssd(64 << 20, disk, free_ratio=0.0)], "v")
    stop = threading.Event()
    errors: list[BaseException] = []

    def filler() -> None:
        while not stop.is_set():
            try:
                fill_bytes(disk)
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0.01)
            (disk / "filler").unlink(missing_ok=True)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                i = rng.randrange(80)
                if rng.random() < 0.5:
                    cache.put(key_of(i, BS), block_of(i, BS))
                elif rng.random() < 0.2:
                    cache.stage(key_of(i, BS), block_of(i, BS))
                else:
                    assert_correct_or_missing(cache, range(i, i + 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=filler)] + [threading.Thread(target=worker, args=(s,))
                                                   for s in range(8)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert not errors, errors[0]
    assert cache.stats().tiers[1].refused > 0  # the disk did fill up under the cache
    cache.close()
    assert assert_correct_or_missing(TieredCache([ssd(64 << 20, disk)], "v"), range(80)) >= 0


# ---------------------------------------------------------------- property test

_ops = st.lists(st.tuples(st.sampled_from(["get", "put", "stage", "uploaded", "remove", "evict"]),
                          st.integers(0, 40), st.sampled_from([1, 5000, 60_000, 150_000])),
                min_size=1, max_size=120)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, mem_quota=st.sampled_from([0, 100_000, 300_000]),
       ssd_quota=st.sampled_from([200_000, 600_000]), promote=st.booleans())
def test_property_quota_staged_and_bytes(ops: list[tuple[str, int, int]], mem_quota: int,
                                         ssd_quota: int, promote: bool) -> None:
    """Any sequence of operations: quotas hold, hits are exact, staged blocks stay until
    uploaded or removed (also across a re-open)."""
    with tempfile.TemporaryDirectory() as tmp:
        tiers = ([mem(mem_quota)] if mem_quota else []) + [ssd(ssd_quota, Path(tmp), free_ratio=0.0)]
        cache = TieredCache(tiers, "v", promote=promote)
        staged: dict[str, bytes] = {}
        for op, i, size in ops:
            key, data = key_of(i, size), block_of(i, size)
            if op == "get":
                got = cache.get(key)
                assert got is None or got == data
            elif op == "put":
                cache.put(key, data)
            elif op == "stage":
                if cache.stage(key, data):
                    staged[key] = data
            elif op == "uploaded":
                cache.uploaded(key)
                staged.pop(key, None)
            elif op == "remove":
                cache.remove(key)
                staged.pop(key, None)
            else:
                cache.evict([key])
            for tier in cache.stats().tiers:
                assert tier.used <= tier.quota
            for staged_key in staged:
                assert cache.contains(staged_key) in ("mem", "ssd")  # staged, maybe promoted
            assert cache.pending_staged() == sorted(staged)
        cache.wait_demotions()  # the writer thread holds the disk tier (and its lock) while busy
        del cache  # as a crash
        again = TieredCache(tiers, "v")
        assert again.pending_staged() == sorted(staged)
        for key, data in staged.items():
            assert again.get(key) == data


# ---------------------------------------------------------------- processes

_CHILD = """
import os, signal, sys
from fusecache.cache import TieredCache, TierConfig
from tests.cache.helpers import block_of, key_of
cache = TieredCache([TierConfig("mem", 1 << 20), TierConfig("ssd", 64 << 20, (sys.argv[1],))], "v")
for i in range(8):
    assert cache.stage(key_of(i, 100_000), block_of(i, 100_000))
cache.uploaded(key_of(0, 100_000))
for i in range(100, 140):
    cache.put(key_of(i, 100_000), block_of(i, 100_000))
cache.wait_demotions()
print("staged", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_staged_blocks_survive_kill_9(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "staged"
    cache = TieredCache([ssd(64 << 20, tmp_path)], "v")  # the dead process's lock is gone
    assert cache.pending_staged() == sorted(key_of(i, 100_000) for i in range(1, 8))
    for i in range(8):
        assert cache.get(key_of(i, 100_000)) == block_of(i, 100_000)
    # Clean blocks demoted from MEM before the kill are there too; MEM's content is lost.
    assert 0 < assert_correct_or_missing(cache, range(100, 140), 100_000) < 40
    assert cache.put(key_of(200, 1000), block_of(200, 1000)) is None
    assert cache.get(key_of(200, 1000)) == block_of(200, 1000)


def test_a_second_user_of_a_cache_dir_stays_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = TieredCache([ssd(8 << 20, tmp_path)], "v")
    first.put("k", b"first")
    caplog.set_level(logging.WARNING, logger="fusecache.cache")
    second = TieredCache([ssd(8 << 20, tmp_path)], "v")
    assert "in use by process" in caplog.text
    assert second.get("k") is None  # it sees nothing...
    second.put("k2", b"second")  # ...and writes nothing
    assert second.stage("k3", b"x") is False
    assert second.clean() == 0
    assert first.get("k") == b"first" and first.get("k2") is None
    first.close()
    third = TieredCache([ssd(8 << 20, tmp_path)], "v")
    assert third.get("k") == b"first"
    assert third.stats().tiers[0].blocks == 1
