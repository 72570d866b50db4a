"""Writeback through real mounts: background uploads, crash survival, deleted data."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache.helpers import files_under
from tests.fuse.helpers import Volume, client_stats, format_volume, sha256_file, wait_for, wait_pid
from tests.servers import S3Server, start_s3

MiB = 1 << 20


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def block_keys(volume: Volume) -> set[str]:
    return set(volume.object_keys("testvol/blocks/"))



def test_writeback_uploads_in_background_for_other_clients(s3_volume: Volume, tmp_path: Path) -> None:
    a = s3_volume.mount("--writeback", "--cache", f"ssd:{tmp_path / 'cache'}:64MiB")
    data = os.urandom(5 * MiB + 77)
    write_synced(a.path / "f", data)
    assert (a.path / "f").read_bytes() == data  # served from the staged blocks meanwhile
    wait_for(lambda: client_stats(a.path)["uploads"]["pending_blocks"] == 0, what="uploads")
    stats = client_stats(a.path)
    assert stats["writeback"] is True
    assert stats["uploads"]["uploaded_blocks"] == 6 and stats["store"]["puts"] == 6
    assert len(block_keys(s3_volume)) == 6
    assert files_under(tmp_path / "cache", "staged") == []  # uploaded blocks are clean cache now
    b = s3_volume.mount()
    assert sha256_file(b.path / "f") == hashlib.sha256(data).hexdigest()


def test_writeback_blocks_of_deleted_files_leave_no_objects(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                           bucket_url: str) -> None:
    s3_volume = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                              "--trash-days", "0", "--garbage-delay", "1s")
    a = s3_volume.mount("--writeback", "--cache", f"ssd:{tmp_path / 'cache'}:64MiB")
    for i in range(5):
        write_synced(a.path / f"tmp{i}", os.urandom(3 * MiB))
        os.unlink(a.path / f"tmp{i}")
    (a.path / "kept").write_bytes(b"k" * MiB)
    wait_for(lambda: client_stats(a.path)["uploads"]["pending_blocks"] == 0, what="uploads")
    # Garbage collection (every second) deletes the objects of the deleted files, also those
    # whose upload was cancelled or raced with the deletion.
    try:
        wait_for(lambda: len(block_keys(s3_volume)) == 1, what="objects of deleted files to go")
    finally:
        s3_volume.cleanup()


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """A private S3 server this test may freeze, kill and restart."""
    server = start_s3()
    yield server
    server.stop()  # thawed first if a test froze it


def test_writeback_survives_kill_9_and_is_uploaded_on_remount(meta_url: str, tmp_path: Path,
                                                               own_s3: S3Server) -> None:
    vol = format_volume(meta_url, tmp_path, "s3", own_s3, own_s3.make_bucket("writeback"), "--block-size", "1M")
    cache = f"ssd:{tmp_path / 'cache'}:64MiB"
    server = own_s3
    try:
        a = vol.mount("--writeback", "--cache", cache)
        os.kill(server.proc.pid, signal.SIGSTOP)  # uploads hang from now on
        data = os.urandom(3 * MiB + 5)
        write_synced(a.path / "f", data)  # fsync returns: staged on disk and committed
        assert client_stats(a.path)["uploads"]["pending_blocks"] == 4
        os.kill(a.pid, signal.SIGKILL)
        wait_pid(a.pid)
        subprocess.run(["fusermount3", "-u", "-z", str(a.path)], capture_output=True)
        # The store dies too (no half-received request can land later) and comes back.
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server = start_s3(server.port, server.datadir)
        own_s3.proc = server.proc  # so the fixture stops the new process
        assert block_keys(vol) == set()
        assert len(files_under(tmp_path / "cache", "staged")) == 4
        # The next mount of the volume (here without --writeback) uploads the staged blocks.
        again = vol.mount("--cache", cache)
        wait_for(lambda: client_stats(again.path)["uploads"]["pending_blocks"] == 0, what="uploads")
        assert len(block_keys(vol)) == 4
        assert files_under(tmp_path / "cache", "staged") == []
        fresh = vol.mount()  # another client, nothing cached: reads the store
        assert sha256_file(fresh.path / "f") == hashlib.sha256(data).hexdigest()
        assert client_stats(fresh.path)["store"]["gets"] == 4
    finally:
        vol.cleanup()
