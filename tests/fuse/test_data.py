"""Data written through a real mount reads back byte-exact (checked by hash)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.fuse.helpers import Volume, client_stats, run_cli, sha256_file

MiB = 1 << 20


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_sequential_write_read(mnt: Path) -> None:
    data = random.Random(1).randbytes(9 * MiB + 12345)  # several blocks and a short tail
    write_file(mnt / "seq", data)
    assert sha256_file(mnt / "seq") == hashlib.sha256(data).hexdigest()
    assert os.stat(mnt / "seq").st_size == len(data)


def test_random_offset_writes_and_overwrite(mnt: Path) -> None:
    rng = random.Random(2)
    size = 6 * MiB
    model = bytearray(rng.randbytes(size))
    write_file(mnt / "rand", bytes(model))
    with open(mnt / "rand", "r+b") as f:
        for _ in range(60):
            off = rng.randrange(size - 200_000)
            piece = rng.randbytes(rng.randrange(1, 200_000))
            f.seek(off)
            f.write(piece)
            model[off : off + len(piece)] = piece
            if rng.random() < 0.3:
                f.flush()
                os.fsync(f.fileno())
    assert sha256_file(mnt / "rand") == hashlib.sha256(model).hexdigest()
    # Reading back in a different handle, at random places, matches too.
    with open(mnt / "rand", "rb") as f:
        for _ in range(40):
            off = rng.randrange(size)
            n = rng.randrange(1, 300_000)
            f.seek(off)
            assert f.read(n) == bytes(model[off : off + n])


def test_append(mnt: Path) -> None:
    pieces = [os.urandom(n) for n in (10, 70_000, 5 * MiB, 1)]
    for piece in pieces:
        with open(mnt / "log", "ab") as f:
            f.write(piece)
    assert (mnt / "log").read_bytes() == b"".join(pieces)


def test_truncate_shrink_and_extend_reads_zeros(mnt: Path) -> None:
    data = os.urandom(5 * MiB)
    write_file(mnt / "t", data)
    os.truncate(mnt / "t", 1000)
    assert (mnt / "t").read_bytes() == data[:1000]
    os.truncate(mnt / "t", 3 * MiB)  # the bytes cut off must not come back
    got = (mnt / "t").read_bytes()
    assert got == data[:1000] + bytes(3 * MiB - 1000)
    with open(mnt / "t", "r+b") as f:
        f.truncate(10)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    assert (mnt / "t").read_bytes() == data[:10] + b"tail"


def test_sparse_file_beyond_5gib(mnt: Path) -> None:
    far = 5 * (1 << 30) + 123_456
    with open(mnt / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(far)
        f.write(b"far away")
    assert os.stat(mnt / "sparse").st_size == far + 8
    with open(mnt / "sparse", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(far - 4096)
        assert f.read(4096 + 8) == bytes(4096) + b"far away"
        f.seek(3 * (1 << 30))
        assert f.read(MiB) == bytes(MiB)


def test_many_small_files(mnt: Path) -> None:
    rng = random.Random(3)
    (mnt / "small").mkdir()
    expected = {}
    for i in range(300):
        data = rng.randbytes(rng.randrange(0, 150_000))
        expected[f"f{i:04d}"] = hashlib.sha256(data).hexdigest()
        write_file(mnt / "small" / f"f{i:04d}", data)
    assert sorted(os.listdir(mnt / "small")) == sorted(expected)
    for name, digest in expected.items():
        assert sha256_file(mnt / "small" / name) == digest


def test_persistence_across_remount(volume: Volume) -> None:
    m = volume.mount()
    data = os.urandom(3 * MiB + 7)
    (m.path / "dir").mkdir()
    write_file(m.path / "dir" / "file", data)
    os.symlink("dir/file", m.path / "link")
    m.umount()
    m2 = volume.mount()
    assert (m2.path / "link").read_bytes() == data
    assert os.readlink(m2.path / "link") == "dir/file"


def test_large_file_1gib(volume: Volume) -> None:
    """A ≥ 1 GiB file, written and read in 1 MiB pieces, verified by hash. Run on S3 only:
    the local store shares every line of the data path and would double a slow test."""
    if volume.storage != "s3":
        pytest.skip("covered on the s3 store")
    mnt = volume.mount().path
    rng = random.Random(4)
    block = rng.randbytes(MiB)
    h = hashlib.sha256()
    with open(mnt / "big", "wb") as f:
        for i in range(1024 + 3):
            piece = block[i % 251 :] + block[: i % 251]  # every MiB differs
            h.update(piece)
            f.write(piece)
    assert os.stat(mnt / "big").st_size == (1024 + 3) * MiB
    assert sha256_file(mnt / "big") == h.hexdigest()


def _referenced_objects(path: Path) -> set[str]:
    doc = json.loads(run_cli("info", str(path), "--json").stdout)
    return {o for c in doc["chunks"] for s in c["slices"] for o in s["objects"]}


def test_overwrites_are_compacted_and_old_objects_deleted(gc_volume: Volume) -> None:
    """Rewriting one region many times must neither grow the slice list nor leak objects."""
    volume = gc_volume
    m = volume.mount()
    rng = random.Random(5)
    model = bytearray(rng.randbytes(MiB))
    write_file(m.path / "hot", bytes(model))
    with open(m.path / "hot", "r+b", buffering=0) as f:
        for _ in range(40):
            off = rng.randrange(MiB - 4096)
            piece = rng.randbytes(4096)
            f.seek(off)
            f.write(piece)
            os.fsync(f.fileno())  # every overwrite becomes its own committed slice
            model[off : off + 4096] = piece
    assert (m.path / "hot").read_bytes() == bytes(model)
    deadline = time.monotonic() + 30
    while True:
        referenced = _referenced_objects(m.path / "hot")
        stored = {k for k in volume.object_keys("testvol/blocks/")}
        if stored == referenced and len(referenced) < 16:
            break
        assert time.monotonic() < deadline, f"{len(stored)} objects stored, {len(referenced)} referenced"
        time.sleep(0.5)
    assert (m.path / "hot").read_bytes() == bytes(model)


def test_deleted_and_truncated_data_is_removed_from_the_store(gc_volume: Volume) -> None:
    """Without trash, deleted and truncated data leaves the store once the (here short)
    garbage delay has passed."""
    volume = gc_volume
    m = volume.mount()
    write_file(m.path / "a", os.urandom(9 * MiB))
    write_file(m.path / "b", os.urandom(70 * MiB))  # two chunks
    os.truncate(m.path / "b", 1000)
    os.unlink(m.path / "a")
    deadline = time.monotonic() + 30
    while {k for k in volume.object_keys("testvol/blocks/")} != _referenced_objects(m.path / "b"):
        assert time.monotonic() < deadline, "objects of deleted/truncated data were not removed"
        time.sleep(0.5)


def test_the_lean_s3_data_path_round_trips_with_the_default_one(s3_volume: Volume) -> None:
    """Files written through `--s3-data-client lean` read back the same through boto3,
    and the other way round (the objects are the same S3 objects)."""
    rng = random.Random(11)
    blobs = {f"f{i}": rng.randbytes(size) for i, size in enumerate([0, 1, 150_000, 5 << 20, (4 << 20) + 3])}
    lean = s3_volume.mount("--s3-data-client", "lean")
    for name, data in blobs.items():
        (lean.path / name).write_bytes(data)
    (lean.path / "by-lean").mkdir()
    lean.umount()
    default = s3_volume.mount()
    for name, data in blobs.items():
        assert sha256_file(default.path / name) == hashlib.sha256(data).hexdigest(), name
    (default.path / "by-boto3").write_bytes(blobs["f3"])
    default.umount()
    lean = s3_volume.mount("--s3-data-client", "lean", "--cache", "mem:1MiB")
    assert sha256_file(lean.path / "by-boto3") == hashlib.sha256(blobs["f3"]).hexdigest()
    for name, data in blobs.items():
        assert sha256_file(lean.path / name) == hashlib.sha256(data).hexdigest(), name
    store = client_stats(lean.path)["store"]
    # Every block fetched on the event loop (object/s3_async.py): at least the 8 blocks of
    # the files (a 1 MiB cache keeps no 4 MiB block, so some are fetched again).
    assert store["loop_gets"] == store["gets"] >= 8
