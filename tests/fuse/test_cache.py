"""The block cache through real mounts: tiers, quotas, remounts, corruption, full disks,
kernel page cache reuse, readahead, stats and cleanup. GETs are counted by the client
(`fusecache stats`), which counts every object it fetches from the store."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache.helpers import bytes_on_disk, files_under
from tests.fuse.helpers import Volume, client_stats, format_volume, run_cli, sha256_file, tier_stats
from tests.servers import free_port

MiB = 1 << 20



def write_files(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        out[name] = data
    return out


def drop_page_cache(path: Path) -> None:
    """Drop the kernel's cached pages of one file, so the next read reaches the client."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_quota_never_exceeded_under_random_reads(s3_volume: Volume, tmp_path: Path) -> None:
    """A seeded random read workload over 4x more data than the cache: each tier stays within
    its quota and below its high watermark, evicts, MEM demotes to SSD, and data is exact."""
    writer = s3_volume.mount()
    files = write_files(writer.path, {f"f{i}": 4 * MiB for i in range(6)})
    cache_dir = tmp_path / "cache"
    m = s3_volume.mount("--cache", "mem:3MiB", "--cache", f"ssd:{cache_dir}:6MiB",
                        "--cache-low", "0.5", "--cache-high", "0.8", "--readahead", "0")
    rng = random.Random(7)
    handles = {name: os.open(m.path / name, os.O_RDONLY) for name in files}
    try:
        for step in range(120):
            name = rng.choice(sorted(files))
            off = rng.randrange(4 * MiB)
            n = rng.randrange(1, 3 * MiB // 2)
            os.posix_fadvise(handles[name], 0, 0, os.POSIX_FADV_DONTNEED)  # reach the client
            assert os.pread(handles[name], n, off) == files[name][off : off + n]
            if step % 10 == 9:
                stats = client_stats(m.path)
                for tier in stats["cache"]["tiers"]:
                    assert tier["used"] <= tier["high"] * tier["quota"], tier
                assert bytes_on_disk(cache_dir) <= 6 * MiB
    finally:
        for fd in handles.values():
            os.close(fd)
    stats = client_stats(m.path)
    mem, ssd = tier_stats(stats, "mem"), tier_stats(stats, "ssd")
    assert mem["evictions"] > 0 and mem["demotions"] > 0
    assert ssd["evictions"] > 0 and ssd["hits"] > 0
    assert stats["store"]["gets"] > 0


def test_demotion_and_ssd_reuse_after_remount_make_no_gets(s3_volume: Volume, tmp_path: Path) -> None:
    writer = s3_volume.mount()
    data = write_files(writer.path, {"big": 8 * MiB + 1234})["big"]
    cache = f"ssd:{tmp_path / 'cache'}:64MiB"
    m = s3_volume.mount("--cache", "mem:2MiB", "--cache", cache)
    assert sha256_file(m.path / "big") == hashlib.sha256(data).hexdigest()
    stats = client_stats(m.path)
    assert stats["store"]["gets"] == 9  # each block once
    assert tier_stats(stats, "mem")["demotions"] > 0  # MEM evictions went down to SSD
    assert tier_stats(stats, "ssd")["blocks"] > 0
    m.umount()  # an orderly unmount writes what MEM still holds down to SSD
    again = s3_volume.mount("--cache", "mem:2MiB", "--cache", cache)
    assert sha256_file(again.path / "big") == hashlib.sha256(data).hexdigest()
    stats = client_stats(again.path)
    assert stats["store"]["gets"] == 0
    assert tier_stats(stats, "ssd")["hits"] == 9


def test_write_through_leaves_written_blocks_in_the_cache(s3_volume: Volume, tmp_path: Path) -> None:
    cache = f"ssd:{tmp_path / 'cache'}:64MiB"
    m = s3_volume.mount("--cache", cache)
    data = write_files(m.path, {"f": 3 * MiB})["f"]
    stats = client_stats(m.path)
    assert stats["store"]["puts"] == 3 and tier_stats(stats, "ssd")["blocks"] == 3
    assert stats["uploads"]["pending_blocks"] == 0  # write-through: nothing left to upload
    m.umount()
    again = s3_volume.mount("--cache", cache)
    assert (again.path / "f").read_bytes() == data
    assert client_stats(again.path)["store"]["gets"] == 0


def test_corrupt_or_truncated_cache_file_is_refetched(s3_volume: Volume, tmp_path: Path) -> None:
    writer = s3_volume.mount()
    data = write_files(writer.path, {"f": 4 * MiB})["f"]
    cache_dir = tmp_path / "cache"
    m = s3_volume.mount("--cache", f"ssd:{cache_dir}:64MiB")
    assert (m.path / "f").read_bytes() == data
    m.umount()
    cached = sorted(files_under(cache_dir, "clean"))
    assert len(cached) == 4
    with open(cached[0], "r+b") as f:  # flip one bit in the last byte of the data
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    os.truncate(cached[1], os.path.getsize(cached[1]) - 100)
    m = s3_volume.mount("--cache", f"ssd:{cache_dir}:64MiB")
    assert (m.path / "f").read_bytes() == data
    stats = client_stats(m.path)
    assert tier_stats(stats, "ssd")["corrupt"] == 2
    assert stats["store"]["gets"] == 2  # only the two bad blocks
    drop_page_cache(m.path / "f")
    assert (m.path / "f").read_bytes() == data  # refetched copies were cached again
    assert client_stats(m.path)["store"]["gets"] == 2


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the last byte."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "tiny"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.mark.parametrize("writeback", [False, True])
def test_cache_on_a_full_filesystem_still_reads_and_writes(s3_volume: Volume, full_tmpfs: Path,
                                                           writeback: bool) -> None:
    """Every cache write fails with ENOSPC (free ratio 0 makes the cache try): reads come
    from the store, writeback falls back to synchronous uploads, nothing is lost."""
    flags = ["--cache", f"ssd:{full_tmpfs}:64MiB", "--cache-free-ratio", "0"]
    m = s3_volume.mount(*flags, *(["--writeback"] if writeback else []))
    data = write_files(m.path, {"f": 3 * MiB + 5})["f"]
    with open(m.path / "f", "rb") as f:
        os.fsync(f.fileno())
    assert (m.path / "f").read_bytes() == data
    stats = client_stats(m.path)
    assert stats["uploads"]["pending_blocks"] == 0  # nothing could be staged
    assert stats["store"]["puts"] == 4
    m.umount()
    m = s3_volume.mount(*flags)
    assert (m.path / "f").read_bytes() == data
    stats = client_stats(m.path)
    assert stats["store"]["gets"] == 4
    ssd = tier_stats(stats, "ssd")
    assert ssd["blocks"] == 0 and ssd["errors"] + ssd["refused"] > 0


def test_page_cache_kept_while_unchanged_and_dropped_after_a_remote_change(s3_volume: Volume) -> None:
    a = s3_volume.mount()
    b = s3_volume.mount()
    (a.path / "f").write_bytes(b"one" * 300_000)
    assert (b.path / "f").read_bytes() == b"one" * 300_000
    first = client_stats(b.path)["fuse"]
    assert first["reads"] > 0
    # Unchanged: the second open keeps the kernel's pages; not one read reaches the client.
    assert (b.path / "f").read_bytes() == b"one" * 300_000
    second = client_stats(b.path)["fuse"]
    assert second["reads"] == first["reads"]
    assert second["keep_cache_opens"] == first["keep_cache_opens"] + 1
    # Another client rewrites it (same size): the next open on B drops the stale pages.
    (a.path / "f").write_bytes(b"two" * 300_000)
    assert (b.path / "f").read_bytes() == b"two" * 300_000
    third = client_stats(b.path)["fuse"]
    assert third["reads"] > second["reads"]
    assert third["keep_cache_opens"] == second["keep_cache_opens"]
    # Even with its mtime set back (as rsync -t does), changed data is not served stale.
    old = os.stat(a.path / "f")
    (a.path / "f").write_bytes(b"333" * 300_000)
    os.utime(a.path / "f", ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(a.path / "f").st_mtime_ns == old.st_mtime_ns
    assert (b.path / "f").read_bytes() == b"333" * 300_000


def test_readahead_for_sequential_readers_only(s3_volume: Volume) -> None:
    writer = s3_volume.mount()
    files = write_files(writer.path, {"random": 32 * MiB, "seq": 12 * MiB})
    m = s3_volume.mount("--readahead", "4")
    offsets = [i * 3 * MiB + 12345 for i in range(10)]
    random.Random(1).shuffle(offsets)
    with open(m.path / "random", "rb", buffering=0) as f:
        for off in offsets:
            assert os.pread(f.fileno(), 4096, off) == files["random"][off : off + 4096]
    stats = client_stats(m.path)
    assert stats["fuse"]["readahead_blocks"] == 0
    assert stats["store"]["gets"] == len(offsets)  # only the blocks asked for
    assert (m.path / "seq").read_bytes() == files["seq"]
    stats = client_stats(m.path)
    assert stats["fuse"]["readahead_blocks"] > 0
    assert stats["store"]["gets"] == len(offsets) + 12  # prefetched blocks were used, not refetched
    off = s3_volume.mount("--readahead", "0")
    assert (off.path / "seq").read_bytes() == files["seq"]
    assert client_stats(off.path)["fuse"]["readahead_blocks"] == 0


def test_concurrent_readers_fetch_each_block_once(s3_volume: Volume) -> None:
    writer = s3_volume.mount()
    data = write_files(writer.path, {"f": 8 * MiB})["f"]
    m = s3_volume.mount("--readahead", "0")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append((m.path / "f").read_bytes())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data] * 6
    assert client_stats(m.path)["store"]["gets"] == 8


def test_ssd_tier_over_two_directories(s3_volume: Volume, tmp_path: Path) -> None:
    writer = s3_volume.mount()
    data = write_files(writer.path, {"f": 16 * MiB})["f"]
    a, b = tmp_path / "disk-a", tmp_path / "disk-b"
    m = s3_volume.mount("--cache", f"ssd:{a},{b}:64MiB", "--cache-free-ratio", "0.05")
    assert (m.path / "f").read_bytes() == data
    ssd = tier_stats(client_stats(m.path), "ssd")
    assert ssd["paths"] == [str(a), str(b)] and ssd["free_ratio"] == 0.05
    in_a, in_b = len(files_under(a, "clean")), len(files_under(b, "clean"))
    assert in_a + in_b == ssd["blocks"] == 16
    assert in_a >= 3 and in_b >= 3  # spread by hash of the key


def test_stats_cli_and_prometheus_metrics(s3_volume: Volume, tmp_path: Path) -> None:
    port = free_port()
    writer = s3_volume.mount()
    data = write_files(writer.path, {"f": 3 * MiB})["f"]
    m = s3_volume.mount("--cache", "mem:8MiB", "--cache", f"ssd:{tmp_path / 'c'}:32MiB",
                        "--metrics", f"127.0.0.1:{port}")
    assert (m.path / "f").read_bytes() == data
    text = run_cli("stats", str(m.path)).stdout
    assert "mem" in text and "ssd" in text and "8.0MiB" in text and "32.0MiB" in text
    assert "3 GETs" in text and "pending" in text
    stats = client_stats(m.path / "f")  # any path inside the mount works
    mem = tier_stats(stats, "mem")
    assert (mem["quota"], mem["low"], mem["high"], mem["blocks"]) == (8 * MiB, 0.7, 0.95, 3)
    assert stats["inflight_fetches"] == 0 and stats["uploads"]["pending_blocks"] == 0
    assert stats["uuid"] and stats["pid"] == m.pid
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set(re.findall(r"^(\w+)", body, re.MULTILINE))
    assert all(n.startswith("fusecache_") for n in names if not n.startswith(("python_", "process_")))
    assert re.search(r'^fusecache_cache_used_bytes\{medium="mem",tier="0",volume="testvol"\} 3\.145728e\+06$',
                     body, re.MULTILINE), body
    assert re.search(r'^fusecache_store_get_requests_total\{volume="testvol"\} 3\.0$', body, re.MULTILINE)
    for name in ("fusecache_cache_quota_bytes", "fusecache_cache_hit_ratio", "fusecache_inflight_fetches",
                 "fusecache_pending_upload_blocks", "fusecache_cache_high_watermark"):
        assert name in names
    result = run_cli("stats", "/tmp", check=False)
    assert result.returncode != 0 and "not inside a fusecache mount" in result.stderr


def test_umount_clean_cache_removes_only_this_volume(meta_url: str, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    a = format_volume(meta_url, tmp_path / "a", "file", None, None, "--block-size", "1M")
    b = format_volume(meta_url + "?prefix=other", tmp_path / "b", "file", None, None, "--block-size", "1M",
                      name="othervol")
    try:
        ma = a.mount("--cache", f"ssd:{cache}:64MiB")
        mb = b.mount("--cache", f"ssd:{cache}:64MiB")
        data = os.urandom(2 * MiB)
        (ma.path / "f").write_bytes(data)
        (mb.path / "f").write_bytes(data)
        uuid_a, uuid_b = client_stats(ma.path)["uuid"], client_stats(mb.path)["uuid"]
        assert uuid_a != uuid_b
        assert files_under(cache / uuid_a, "clean") and files_under(cache / uuid_b, "clean")
        out = run_cli("umount", str(ma.path), "--clean-cache").stdout
        assert "removed" in out
        assert not (cache / uuid_a).exists()
        assert len(files_under(cache / uuid_b, "clean")) == 2
        assert (mb.path / "f").read_bytes() == data
    finally:
        a.cleanup()
        b.cleanup()


def test_mount_rejects_bad_cache_flags(s3_volume: Volume, tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    for flags, word in [
        (["--cache", "disk:1G"], "medium"),
        (["--cache", "mem:lots"], "size"),
        (["--cache", "mem:1G", "--cache", "mem:2G"], "mem"),
        (["--cache", "mem:1G", "--mem-cache", "1G"], "mem"),
        (["--cache-low", "0.9", "--cache-high", "0.5"], "watermark"),
        (["--writeback"], "ssd"),
        (["--metrics", "nowhere"], "ADDR:PORT"),
        (["--readahead", "-1"], "readahead"),
        (["--coherent-timeout", "-1"], "coherent-timeout"),
        (["--attr-timeout", "nan"], "attr-timeout"),
    ]:
        result = run_cli("mount", s3_volume.meta_url, str(mp), *flags, env=s3_volume.env, check=False)
        assert result.returncode == 2, (flags, result.stderr)
        assert word.lower() in result.stderr.lower(), (flags, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    m = s3_volume.mount("--mem-cache", "16M")  # the old flag still sizes the MEM tier
    assert tier_stats(client_stats(m.path), "mem")["quota"] == 16 * MiB
    plain = s3_volume.mount()
    assert [t["medium"] for t in client_stats(plain.path)["cache"]["tiers"]] == ["mem"]


def test_random_small_reads_of_a_warm_file_read_only_their_pages(s3_volume: Volume, tmp_path: Path) -> None:
    """fio's pattern: 4 KiB O_DIRECT preads at random offsets of a file in the SSD tier.
    Each is served by a ranged read of the cache file (the pages it needs, checked), not a
    whole block, and every byte matches (tests/cache/test_pages.py: damaged pages)."""
    writer = s3_volume.mount()
    (data,) = write_files(writer.path, {"f": 8 * MiB + 5000}).values()
    cache_dir = tmp_path / "cache"
    m = s3_volume.mount("--cache", f"ssd:{cache_dir}:64MiB")
    assert sha256_file(m.path / "f") == hashlib.sha256(data).hexdigest()  # now warm
    before = client_stats(m.path)
    rng = random.Random(3)
    fd = os.open(m.path / "f", os.O_RDONLY | os.O_DIRECT)
    aligned = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    try:
        for _ in range(300):
            off = rng.randrange(len(data) // 4096) * 4096
            n = os.preadv(fd, [aligned], off)
            assert bytes(aligned[:n]) == data[off : off + n], off
    finally:
        os.close(fd)
        aligned.close()
    after = client_stats(m.path)
    # (two offsets in a row next to the previous read would make a sequential reader)
    assert after["fuse"]["ranged_reads"] - before["fuse"]["ranged_reads"] >= 270, "reads jumped: ranged"
    assert after["store"]["gets"] == before["store"]["gets"], "all from the SSD tier"
    assert tier_stats(after, "ssd")["corrupt"] == 0


def test_one_read_next_to_the_last_is_still_ranged_and_two_make_a_sequential_reader(
        s3_volume: Volume, tmp_path: Path) -> None:
    """A random reader's read lands within a MiB of its previous one now and then. That one
    read must not load the whole 4 MiB block (it did, on a thread: about 1.5 % of fio's
    reads, and most of their cost); a second read that continues makes a sequential
    reader, whose reads load whole blocks."""
    writer = s3_volume.mount()
    (data,) = write_files(writer.path, {"f": 12 * MiB}).values()
    m = s3_volume.mount("--cache", f"ssd:{tmp_path / 'cache'}:64MiB")
    assert sha256_file(m.path / "f") == hashlib.sha256(data).hexdigest()  # now warm
    fd = os.open(m.path / "f", os.O_RDONLY | os.O_DIRECT)
    aligned = mmap.mmap(-1, 4096)

    def ranged_reads(off: int) -> int:
        """The ranged reads that one read added (0 or 1)."""
        before = client_stats(m.path)["fuse"]["ranged_reads"]
        assert os.preadv(fd, [aligned], off) == 4096
        assert bytes(aligned) == data[off : off + 4096], off
        return int(client_stats(m.path)["fuse"]["ranged_reads"]) - before

    try:
        assert ranged_reads(5 * MiB + 8192) == 1, "a jump: ranged"
        assert ranged_reads(5 * MiB + 65536) == 1, "one read next to the last: still ranged"
        assert ranged_reads(5 * MiB + 69632) == 0, "two in a row: a sequential reader's whole block"
        assert ranged_reads(5 * MiB + 73728) == 0
    finally:
        os.close(fd)
        aligned.close()
