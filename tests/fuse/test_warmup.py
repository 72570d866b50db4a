"""`fusecache warmup` on real mounts: load, check, evict; then reads make no GETs."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from tests.fuse.helpers import Volume, client_stats, run_cli, sha256_file

MiB = 1 << 20



def make_tree(root: Path) -> dict[str, str]:
    """30 small files in nested directories, one multi-chunk file, one empty file."""
    rng = random.Random(11)
    digests = {}
    for i in range(30):
        rel = f"tree/d{i % 3}/sub{i % 2}/f{i}"
        data = rng.randbytes(rng.randrange(1, 200_000))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    big = rng.randbytes(70 * MiB)  # two chunks: two warmup requests
    (root / "tree/big").write_bytes(big)
    digests["tree/big"] = hashlib.sha256(big).hexdigest()
    (root / "tree/empty").write_bytes(b"")
    digests["tree/empty"] = hashlib.sha256(b"").hexdigest()
    return digests


def summary(*args: str) -> dict:
    return json.loads(run_cli("warmup", *args, "--json").stdout)


def test_warmup_then_read_makes_no_gets(s3_volume: Volume, tmp_path: Path) -> None:
    writer = s3_volume.mount()
    digests = make_tree(writer.path)
    m = s3_volume.mount("--cache", f"ssd:{tmp_path / 'cache'}:256MiB")
    tree = m.path / "tree"
    assert summary(str(tree), "--check")["cached_percent"] == 0.0
    done = run_cli("warmup", str(tree), "-p", "4")
    assert "warmed up 32 files" in done.stdout and "100 blocks" in done.stdout
    assert "files 32/32" in done.stderr  # the progress line
    stats = client_stats(m.path)
    assert stats["store"]["gets"] == 100 and stats["warmup"]["blocks"] == 100
    check = summary(str(tree), "--check")
    assert check["cached_percent"] == 100.0 and check["done_blocks"] == 100
    for rel, digest in digests.items():
        assert sha256_file(m.path / rel) == digest
    assert client_stats(m.path)["store"]["gets"] == 100  # every read came from the cache
    # A second warmup finds everything cached.
    assert summary(str(tree))["done_blocks"] == 0


def test_warmup_evict_and_single_files(s3_volume: Volume, tmp_path: Path) -> None:
    writer = s3_volume.mount()
    digests = make_tree(writer.path)
    m = s3_volume.mount("--cache", "mem:8MiB", "--cache", f"ssd:{tmp_path / 'cache'}:256MiB",
                        "--read-only")
    small = [str(m.path / rel) for rel in sorted(digests) if "/d0/" in rel]
    assert summary(*small)["done_blocks"] == len(small)  # works on a read-only mount
    assert summary(*small, "--check")["cached_percent"] == 100.0
    evicted = summary(*small, "--evict")
    assert evicted["done_blocks"] >= len(small)
    assert summary(*small, "--check")["cached_percent"] == 0.0
    before = client_stats(m.path)["store"]["gets"]
    for path in small:
        rel = os.path.relpath(path, m.path)
        assert sha256_file(path) == digests[rel]
    assert client_stats(m.path)["store"]["gets"] == before + len(small)  # refetched after evict


def test_warmup_errors_are_one_line(s3_volume: Volume, tmp_path: Path) -> None:
    m = s3_volume.mount()
    for args, word in [(["/tmp"], "not inside a fusecache mount"),
                       ([str(m.path / "missing")], "no such file"),
                       ([str(m.path), "-p", "0"], "threads")]:
        result = run_cli("warmup", *args, check=False)
        assert result.returncode != 0
        assert word in result.stderr.lower(), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_tree_of_small_files_warms_in_directory_batches(s3_volume: Volume, tmp_path: Path) -> None:
    """600 small files in one directory and 40 in a subdirectory: one request per 256
    entries, not one per file; every block fetched once; the hit ratio counts no warmup
    fetch as a miss; then every read is a hit with no GET; --check and --evict batch too."""
    writer = s3_volume.mount()
    rng = random.Random(5)
    digests = {}
    for rel in [f"many/f{i:03d}" for i in range(600)] + [f"many/sub/g{i}" for i in range(40)]:
        data = rng.randbytes(rng.randrange(1, 50_000))
        (writer.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (writer.path / rel).write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    m = s3_volume.mount("--cache", f"ssd:{tmp_path / 'cache'}:256MiB")
    done = summary(str(m.path / "many"), "-p", "3")
    assert done["files"] == 640 and done["done_blocks"] == 640 and done["failed"] == 0
    stats = client_stats(m.path)
    assert stats["store"]["gets"] == 640 and stats["warmup"]["blocks"] == 640
    assert stats["warmup"]["requests"] == 3 + 1  # ceil(601 / 256) batches in many/, 1 in sub/
    assert stats["cache"]["misses"] == 0
    for rel, digest in digests.items():
        assert sha256_file(m.path / rel) == digest
    stats = client_stats(m.path)
    assert stats["store"]["gets"] == 640 and stats["cache"]["misses"] == 0 and stats["cache"]["hits"] >= 640
    assert summary(str(m.path / "many"), "--check")["cached_percent"] == 100.0
    assert summary(str(m.path / "many"), "--evict")["done_blocks"] == 640
    assert summary(str(m.path / "many"), "--check")["cached_percent"] == 0.0
    assert client_stats(m.path)["warmup"]["requests"] == 4 * 4  # four walks of four batches


def test_a_directory_batch_on_a_file_or_with_a_bad_range_is_refused(s3_volume: Volume) -> None:
    m = s3_volume.mount()
    (m.path / "f").write_bytes(b"x")
    for path, name, code in [(m.path / "f", "fusecache.warmup-dir:0:10:100", errno.ENOTDIR),
                             (m.path, "fusecache.warmup-dir:0:x:100", errno.EINVAL),
                             (m.path, "fusecache.warmup-dir:0:10", errno.EINVAL)]:
        with pytest.raises(OSError) as caught:
            os.getxattr(path, name)
        assert caught.value.errno == code, name
