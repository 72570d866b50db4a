"""The benchmark reference harness (benchmarks/reference.py) on small sizes: its figures come
from data that was verified, and its JuiceFS mount works here and leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from benchmarks.reference import (
    JuiceFSMount,
    MiB,
    boto3_put_get,
    disk_write_read,
    format_table,
    store_put_get,
)
from fusecache.object.local import LocalStore
from tests.servers import RedisServer, S3Server


def test_object_and_disk_references(s3_server: S3Server, bucket_url: str, tmp_path: Path) -> None:
    put, get = boto3_put_get(bucket_url, s3_server.access_key, s3_server.secret_key,
                             object_size=MiB, total=8 * MiB, threads=4)
    assert (put.name, put.nbytes, get.name, get.nbytes) == ("boto3 PUT x4", 8 * MiB, "boto3 GET x4", 8 * MiB)
    assert put.mb_per_s > 0 and get.mb_per_s > 0
    rows = [put, get, *store_put_get(LocalStore(tmp_path / "store", fsync=False), object_size=MiB,
                                     total=4 * MiB, threads=2)]
    rows += disk_write_read(tmp_path, size=8 * MiB, block=MiB)
    assert [r.nbytes for r in rows[2:]] == [4 * MiB, 4 * MiB, 8 * MiB, 8 * MiB]
    table = format_table(rows)
    assert "LocalStore GET x2" in table and "disk seq read (cold)" in table
    assert os.listdir(tmp_path / "store") in ([], ["bench-reference"])  # objects deleted
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the disk test file is gone


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs FUSE")
def test_juicefs_mount_round_trip(redis_server: RedisServer, meta_url: str, s3_server: S3Server,
                                  bucket_url: str) -> None:
    jfs = JuiceFSMount(meta_url, bucket_url, s3_server.access_key, s3_server.secret_key, name="jfstest")
    with jfs:
        assert os.path.ismount(jfs.mountpoint)
        data = os.urandom(5 * MiB + 17)
        (jfs.mountpoint / "f").write_bytes(data)
        assert hashlib.sha256((jfs.mountpoint / "f").read_bytes()).digest() == hashlib.sha256(data).digest()
        # The secret went through the environment, not argv.
        assert s3_server.secret_key not in " ".join(jfs._proc.args if jfs._proc else [])
    assert not os.path.ismount(jfs.mountpoint)
    assert not jfs.workdir.exists()
    assert jfs._proc is None
    # The blocks reached the bucket under the volume name.
    bucket_dir = s3_server.datadir / bucket_url.rsplit("/", 1)[1] / "jfstest" / "chunks"
    assert sum(p.stat().st_size for p in bucket_dir.rglob("*") if p.is_file()) == 5 * MiB + 17
