"""What another client does never breaks a file this client has open: its compaction, its
unlink, its rename over the file. Two real mounts of one volume, waiting past the garbage
delay, data checked by hash."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import boto3
import pytest

from tests.fuse.helpers import Volume, client_stats, format_volume, run_cli, wait_for
from tests.servers import S3Server

MiB = 1 << 20
CHUNK = 64 * MiB


def info(path: Path) -> dict:
    return json.loads(run_cli("info", str(path), "--json").stdout)


def slice_ids(path: Path) -> set[int]:
    return {s["id"] for c in info(path)["chunks"] for s in c["slices"] if s["id"]}


def objects_of(path: Path) -> set[str]:
    return {o for c in info(path)["chunks"] for s in c["slices"] for o in s["objects"]}


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _overwrite_in_small_synced_pieces(path: Path, model: bytearray, count: int, rng: random.Random,
                                      span: int = 8 * MiB) -> None:
    """`count` small fsync'd writes in the first `span` bytes: each is its own slice, and
    enough of them make the writing client compact the chunk."""
    with open(path, "r+b", buffering=0) as f:
        for _ in range(count):
            off = rng.randrange(span - 3000)
            piece = rng.randbytes(3000)
            f.seek(off)
            f.write(piece)
            os.fsync(f.fileno())
            model[off : off + len(piece)] = piece


@pytest.fixture
def short_delay_volume(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> Volume:
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                        "--trash-days", "0", "--garbage-delay", "3s")
    yield vol  # type: ignore[misc]
    vol.cleanup()


def test_compaction_by_another_client_never_breaks_an_open_reader(short_delay_volume: Volume) -> None:
    """B reads the start of a 64 MiB file; A rewrites small pieces until it compacts the
    chunk; once the old slice's objects are gone from the store, B reads on through the
    same descriptor and gets the new bytes (no EIO, no stale bytes)."""
    vol = short_delay_volume
    a, b = vol.mount().path, vol.mount().path
    rng = random.Random(7)
    model = bytearray(rng.randbytes(CHUNK))
    (a / "big").write_bytes(model)
    original, first = objects_of(a / "big"), slice_ids(a / "big")
    with open(b / "big", "rb", buffering=0) as reader:
        assert digest(reader.read(MiB)) == digest(model[:MiB])
        _overwrite_in_small_synced_pieces(a / "big", model, 24, rng)
        wait_for(lambda: not first & slice_ids(a / "big"), what="compaction")
        # The store drops the original slice's objects once the garbage delay has passed.
        wait_for(lambda: not original & set(vol.object_keys("testvol/blocks/")), timeout=60,
                 what="the compacted-away objects to be deleted")
        reader.seek(40 * MiB)
        assert digest(reader.read(4 * MiB)) == digest(model[40 * MiB : 44 * MiB])
        reader.seek(0)
        os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert digest(reader.read()) == digest(model)
    # Nothing leaked either: the store holds exactly what the file references.
    wait_for(lambda: set(vol.object_keys("testvol/blocks/")) == objects_of(a / "big"), timeout=60,
             what="the store to hold only referenced objects")


def test_a_missing_block_makes_a_reader_read_the_slice_list_again(meta_url: str, tmp_path: Path,
                                                                    s3_server: S3Server, bucket_url: str) -> None:
    """B's cached slice list (kept up to 10 s) names objects that are gone: B reads the
    chunk's slice list again once, instead of failing with EIO."""
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                        "--trash-days", "0", "--garbage-delay", "10m")
    try:
        a, b = vol.mount().path, vol.mount().path
        rng = random.Random(8)
        model = bytearray(rng.randbytes(16 * MiB))
        (a / "f").write_bytes(model)
        original, first = objects_of(a / "f"), slice_ids(a / "f")
        with open(b / "f", "rb", buffering=0) as reader:
            assert digest(reader.read(MiB)) == digest(model[:MiB])  # B caches the slice list
            _overwrite_in_small_synced_pieces(a / "f", model, 20, rng)
            wait_for(lambda: not first & slice_ids(a / "f"), what="compaction")
            # Something removed the old objects early (an operator's mistake, a bucket
            # lifecycle rule): B's list names objects that are gone.
            s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                              aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
            bucket = vol.bucket.rsplit("/", 1)[1]
            for key in original - objects_of(a / "f"):
                s3.delete_object(Bucket=bucket, Key=key)
            reader.seek(9 * MiB)
            assert digest(reader.read(2 * MiB)) == digest(model[9 * MiB : 11 * MiB])
        assert client_stats(b)["fuse"]["slice_rereads"] >= 1
    finally:
        vol.cleanup()


@pytest.mark.parametrize("trash_days", ["0", "1"])
def test_an_unlink_by_another_client_keeps_the_open_file(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                          bucket_url: str, trash_days: str) -> None:
    """POSIX: the data of an unlinked file lives until its last close, on every client."""
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                        "--trash-days", trash_days, "--garbage-delay", "1s")
    try:
        a, b = vol.mount().path, vol.mount().path
        data = os.urandom(5 * MiB + 123)
        (a / "f").write_bytes(data)
        (a / "g").write_bytes(b"other")
        with open(b / "f", "r+b", buffering=0) as held:
            os.unlink(a / "f")
            os.rename(a / "g", a / "f2")
            time.sleep(3)  # well past the garbage delay and the cleaners' interval
            assert not (a / "f").exists()
            assert digest(os.pread(held.fileno(), len(data) + 10, 0)) == digest(data)
            os.pwrite(held.fileno(), b"appended", len(data))  # still writable
            os.fsync(held.fileno())
            assert os.pread(held.fileno(), 8, len(data)) == b"appended"
            assert os.fstat(held.fileno()).st_nlink == 0
            keys_while_open = set(vol.object_keys("testvol/blocks/"))
        assert len(keys_while_open) >= 7
        if trash_days == "0":
            wait_for(lambda: len(vol.object_keys("testvol/blocks/")) == 1, timeout=30,
                     what="the file's objects to go after its last close")
        else:
            trashed = [p for hour in (a / ".trash").iterdir() for p in hour.iterdir()]
            assert len(trashed) == 1 and trashed[0].name.endswith("-f")
            assert digest(trashed[0].read_bytes()) == digest(data + b"appended")
            os.rename(trashed[0], a / "restored")
            assert digest((b / "restored").read_bytes()) == digest(data + b"appended")
            assert os.stat(a / "restored").st_nlink == 1
    finally:
        vol.cleanup()


def test_a_file_replaced_by_rename_elsewhere_stays_readable(file_volume: Volume) -> None:
    volume = file_volume
    a, b = volume.mount().path, volume.mount().path
    old = os.urandom(3 * MiB)
    (a / "cfg").write_bytes(old)
    with open(b / "cfg", "rb") as held:
        (a / "cfg.new").write_bytes(b"new")
        os.rename(a / "cfg.new", a / "cfg")
        time.sleep(2)
        assert digest(held.read()) == digest(old)
    assert (b / "cfg").read_bytes() == b"new"


def test_compaction_under_writeback_writes_through(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                   bucket_url: str) -> None:
    """Under --writeback, small writes are staged on the local disk, but the compacted slice
    that replaces them is PUT to the store before it is committed: the old slices' objects
    will be deleted from there, and the data must not depend on one node's disk."""
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                        "--trash-days", "0", "--garbage-delay", "1s")
    try:
        m = vol.mount("--writeback", "--cache", f"ssd:{tmp_path / 'cache'}:256MiB").path
        rng = random.Random(3)
        model = bytearray(rng.randbytes(2 * MiB))
        (m / "f").write_bytes(model)
        first = slice_ids(m / "f")
        _overwrite_in_small_synced_pieces(m / "f", model, 20, rng, span=2 * MiB)
        wait_for(lambda: not first & slice_ids(m / "f"), what="compaction")
        wait_for(lambda: client_stats(m)["uploads"]["pending_blocks"] == 0, what="uploads")
        stats = client_stats(m)
        # 2 blocks of the first write + 20 pieces went through the writeback uploader; the
        # compacted slice (2 blocks) did not: it was PUT directly.
        assert stats["uploads"]["uploaded_blocks"] == 22, stats["uploads"]
        assert stats["store"]["puts"] >= 24
        # The server's own listing has every object the file references.
        s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
        bucket = vol.bucket.rsplit("/", 1)[1]
        listed = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in page.get("Contents", [])}
        assert objects_of(m / "f") <= listed
        assert digest((m / "f").read_bytes()) == digest(model)
    finally:
        vol.cleanup()
