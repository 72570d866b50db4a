"""Object data is verified: every block's checksum, recorded with its slice at upload, is
checked on every fetch from the store. A corrupt object is EIO: never returned, never
cached."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from fusecache.object import create_store
from tests.fuse.helpers import Volume, client_stats

MiB = 1 << 20


def _store(volume: Volume):  # type: ignore[no-untyped-def]
    return create_store(volume.storage, volume.bucket, volume.env.get("ACCESS_KEY", ""),
                        volume.env.get("SECRET_KEY", ""))


def test_a_corrupt_object_is_eio_and_never_cached(volume: Volume) -> None:
    writer = volume.mount()
    data = os.urandom(4 * MiB + 1000)
    (writer.path / "f").write_bytes(data)
    writer.umount()
    volume.mounts.clear()
    store = _store(volume)
    try:
        key = sorted(volume.object_keys("testvol/blocks/"))[0]  # the first block
        good = store.get(key)
        bad = bytearray(good)
        bad[12345] ^= 0x40  # one flipped bit, same length: only a checksum can tell
        store.put(key, bytes(bad))
        reader = volume.mount("--cache", "mem:64MiB")
        with open(reader.path / "f", "rb") as f, pytest.raises(OSError) as info:
            f.read()
        assert info.value.errno == errno.EIO
        stats = client_stats(reader.path)
        assert stats["store"]["get_errors"] >= 1
        assert sum(t["blocks"] for t in stats["cache"]["tiers"]) <= 1, "the bad block was cached"
        assert "checksum does not match" in reader.log.read_text()
        store.put(key, good)  # repaired at the source: the next read must fetch it again
        assert hashlib.sha256((reader.path / "f").read_bytes()).digest() == hashlib.sha256(data).digest()
    finally:
        store.close()
