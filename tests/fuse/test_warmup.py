"""`fusecache warmup` on real mounts: load, check, evict; then reads make no GETs."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

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
