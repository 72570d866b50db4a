"""A stalled object store must not freeze metadata operations of other files."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.helpers import format_volume
from tests.servers import S3Server, start_s3

MiB = 1 << 20


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """A private S3 server: this test freezes it, so it cannot be the shared one."""
    server = start_s3()
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def test_frozen_object_store_leaves_metadata_responsive(meta_url: str, tmp_path: Path, own_s3: S3Server) -> None:
    vol = format_volume(meta_url, tmp_path, "s3", own_s3, own_s3.make_bucket("slow"), "--block-size", "1M")
    try:
        m = vol.mount()
        data = os.urandom(8 * MiB)
        (m.path / "data").write_bytes(data)
        (m.path / "dir").mkdir()
        m.umount()
        m = vol.mount("--readahead", "0")  # a fresh client: nothing cached
        result: dict[str, bytes] = {}
        os.kill(own_s3.proc.pid, signal.SIGSTOP)  # every object request now hangs
        try:
            reader = threading.Thread(target=lambda: result.update(data=(m.path / "data").read_bytes()))
            reader.start()
            time.sleep(1.0)
            assert reader.is_alive(), "the read should be waiting on the frozen store"
            started = time.monotonic()
            for i in range(20):
                (m.path / "dir" / f"f{i}").touch()
                os.stat(m.path / "dir" / f"f{i}")
            os.rename(m.path / "dir" / "f0", m.path / "dir" / "renamed")
            assert len(os.listdir(m.path / "dir")) == 20
            (m.path / "dir" / "sub").mkdir()
            assert time.monotonic() - started < 10, "metadata operations waited on the object store"
        finally:
            os.kill(own_s3.proc.pid, signal.SIGCONT)
        reader.join(timeout=120)
        assert not reader.is_alive()
        assert hashlib.sha256(result["data"]).digest() == hashlib.sha256(data).digest()
    finally:
        vol.cleanup()
