"""fsck names each corruption injected by hand through Redis or the store, repairs what is
safe, and gc finds leaked objects while leaving referenced and in-use ones alone."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fusecache.meta.codec import pack_entry
from tests.fuse.helpers import Volume, format_volume, run_cli, wait_for
from tests.servers import S3Server

MiB = 1 << 20
P = "{fc}"


@pytest.fixture
def populated(s3_volume: Volume) -> tuple[Volume, dict[str, str]]:
    """A volume (S3, 1 MiB blocks) with a small tree, written through a mount that is then
    unmounted."""
    volume = s3_volume
    m = volume.mount()
    (m.path / "d").mkdir()
    digests = {}
    for name, size in (("a", 3 * MiB + 5), ("d/b", 100_000), ("d/c", 0)):
        data = os.urandom(size)
        (m.path / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    os.link(m.path / "a", m.path / "d/a-link")
    os.unlink(m.path / "d/c")  # into the trash
    m.umount()
    volume.mounts.clear()
    return volume, digests


def fsck(volume: Volume, *flags: str) -> tuple[int, list[str]]:
    result = run_cli("fsck", volume.meta_url, "-q", *flags, env=volume.env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.strip().splitlines()


def client(volume: Volume) -> redis.Redis:
    return redis.Redis.from_url(volume.meta_url)


def lookup(r: redis.Redis, parent: int, name: bytes) -> int:
    return int(r.hget(f"{P}d{parent}", name)[1:])


def test_a_healthy_volume_is_clean(populated: tuple[Volume, dict[str, str]]) -> None:
    volume, _ = populated
    code, lines = fsck(volume)
    assert code == 0, lines
    assert lines[-1].endswith(": clean")
    doc = json.loads(run_cli("fsck", volume.meta_url, "--json", env=volume.env).stdout)
    assert doc["clean"] is True and doc["problems"] == []


def test_fsck_names_each_injected_corruption_and_repairs_what_is_safe(
        populated: tuple[Volume, dict[str, str]]) -> None:
    volume, digests = populated
    r = client(volume)
    a = lookup(r, 1, b"a")
    d = lookup(r, 1, b"d")
    b = lookup(r, d, b"b")
    # a wrong nlink
    raw = bytearray(r.get(f"{P}i{b}"))
    struct.pack_into("<I", raw, 12, 5)
    r.set(f"{P}i{b}", bytes(raw))
    # a dangling entry
    r.hset(f"{P}d{d}", b"ghost", pack_entry(0o100644, 999_999))
    # a wrong usage counter
    r.hincrby(f"{P}counters", "usedspace", 12345)
    # an expired session (a client that died long ago)
    r.zadd(f"{P}sessions", {"77": time.time() - 3600})
    r.hset(f"{P}sessinfo", "77", f"{time.time() - 4000} " + json.dumps(
        {"host": "gone", "pid": 1, "mountpoint": "/x", "version": "0"}))
    # an orphan: an entry removed behind the volume's back
    r.hdel(f"{P}d{d}", b"a-link")
    code, lines = fsck(volume)
    assert code == 1
    text = "\n".join(lines)
    assert "links: /d/b: nlink is 5, 1 expected" in text
    assert "entries: /d/ghost: entry names inode 999999" in text
    assert "usage: volume counter usedspace is" in text
    assert "sessions: session 77 expired" in text
    assert "links: /a: nlink is 2, 1 expected" in text  # the orphaned link was a hard link of /a
    # a deleted object: lost data, reported by path
    keys = volume.object_keys("testvol/blocks/")
    victim = next(k for k in keys if k.rsplit("/", 1)[1].endswith(f"_{100_000}"))
    _delete_object(volume, victim)
    code, lines = fsck(volume)
    assert any(line.startswith("blocks: /d/b: lost data: 1 blocks are missing") for line in lines), lines
    assert not any(line.startswith("blocks:") for line in fsck(volume, "--no-objects")[1]), "no store listing"

    code, lines = fsck(volume, "--repair")
    repaired = [line for line in lines if line.endswith("(repaired)")]
    assert len(repaired) >= 5, lines
    assert code == 1, "lost data cannot be repaired"
    code, lines = fsck(volume)
    assert [line for line in lines if not line.startswith("fsck:")] == \
        [line for line in lines if line.startswith("blocks: /d/b")], lines
    m = volume.mount()
    assert hashlib.sha256((m.path / "a").read_bytes()).hexdigest() == digests["a"]
    assert os.stat(m.path / "a").st_nlink == 1
    assert not (m.path / "d" / "ghost").exists()
    with pytest.raises(OSError):
        (m.path / "d" / "b").read_bytes()  # EIO, not wrong bytes
    assert not (m.path / "d" / "a-link").exists() and a in {os.stat(m.path / "a").st_ino, a}


def test_fsck_moves_orphans_to_lost_found(populated: tuple[Volume, dict[str, str]]) -> None:
    volume, digests = populated
    r = client(volume)
    d = lookup(r, 1, b"d")
    b = lookup(r, d, b"b")
    r.hdel(f"{P}d{d}", b"b")  # the only link of /d/b
    code, lines = fsck(volume)
    assert code == 1 and any(f"orphans: inode {b} (file, 100000 bytes) is in no directory" in x for x in lines)
    assert fsck(volume, "--repair")[0] == 0
    assert fsck(volume)[0] == 0
    m = volume.mount()
    assert hashlib.sha256((m.path / "lost+found" / str(b)).read_bytes()).hexdigest() == digests["d/b"]


def test_repairs_wait_for_a_quiet_volume(populated: tuple[Volume, dict[str, str]]) -> None:
    volume, _ = populated
    volume.mount()
    result = run_cli("fsck", volume.meta_url, "--repair", env=volume.env, check=False)
    assert result.returncode == 1 and "clients have the volume mounted" in result.stderr
    assert fsck(volume)[0] == 0, "a mounted, idle volume checks clean"


def _delete_object(volume: Volume, key: str) -> None:
    from fusecache.object import create_store

    store = create_store(volume.storage, volume.bucket, volume.env.get("ACCESS_KEY", ""),
                         volume.env.get("SECRET_KEY", ""))
    try:
        store.delete(key)
    finally:
        store.close()


def _put_object(volume: Volume, key: str, data: bytes) -> None:
    from fusecache.object import create_store

    store = create_store(volume.storage, volume.bucket, volume.env.get("ACCESS_KEY", ""),
                         volume.env.get("SECRET_KEY", ""))
    try:
        store.put(key, data)
    finally:
        store.close()


def gc(volume: Volume, *flags: str) -> dict:
    return json.loads(run_cli("gc", volume.meta_url, "--json", *flags, env=volume.env).stdout)


def test_gc_finds_a_leak_and_leaves_referenced_objects(populated: tuple[Volume, dict[str, str]]) -> None:
    volume, digests = populated
    before = set(volume.object_keys("testvol/blocks/"))
    leak = "testvol/blocks/07/0/7_0_11"
    _put_object(volume, leak, b"leaked data")
    young = gc(volume)  # default --min-age 1h: too young to be called a leak
    assert young["leaked_objects"] == 0 and young["young"] == 1
    found = gc(volume, "--min-age", "0")
    assert found["leaked"] == [leak] and found["leaked_bytes"] == 11
    assert found["referenced"] == len(before)
    text = run_cli("gc", volume.meta_url, "--min-age", "0", env=volume.env).stdout
    assert "found 1 leaked objects (11B)" in text
    assert gc(volume, "--min-age", "0", "--delete")["deleted"] == 1
    assert set(volume.object_keys("testvol/blocks/")) == before
    m = volume.mount()
    for name in ("a", "d/b"):
        assert hashlib.sha256((m.path / name).read_bytes()).hexdigest() == digests[name]


SLOW_WRITER = """
import os, sys, time
with open(sys.argv[1], "wb", buffering=0) as f:
    f.write(os.urandom(3 << 20))  # full blocks go to the store at once; the slice stays open
    print("open", flush=True)
    while True:  # ... as long as appends keep coming
        time.sleep(0.3)
        f.write(os.urandom(64 << 10))
"""


def test_gc_leaves_blocks_a_live_writer_may_still_commit(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                         bucket_url: str) -> None:
    """A writeback client's slice being written has blocks in the store (or staged) before
    its commit: above the session's in-use mark, gc keeps them even with --min-age 0."""
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M")
    try:
        m = vol.mount("--writeback", "--cache", f"ssd:{tmp_path / 'cache'}:64MiB")
        # The writer is a process of its own: a fork of this one would close (and so flush)
        # the file whenever a CLI command starts.
        writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(m.path / "slow")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
            wait_for(lambda: len(vol.object_keys("testvol/blocks/")) >= 2, what="blocks to reach the store")
            report = gc(vol, "--min-age", "0")
        finally:
            writer.terminate()
            writer.wait()
        assert report["leaked_objects"] == 0 and report["in_use"] >= 2, report
        assert gc(vol, "--min-age", "0")["leaked_objects"] == 0
    finally:
        vol.cleanup()
