"""A small file's open brings its first chunk's slice list along: open and read together
cost one metadata round trip. A list that a change by this client may predate is never
trusted, and another client's change is always seen by the next open."""

from __future__ import annotations

import dataclasses
import gc
import os
import weakref
from pathlib import Path

import trio

from fusecache.meta import open_meta
from fusecache.types import ROOT_INO
from tests.vfs.test_truncate_on_open import CTX, SETTINGS, _vfs

# Slice lists are kept for a while only with a garbage delay (see SliceCache)
KEEPING = dataclasses.replace(SETTINGS, garbage_delay=300.0)


def test_open_then_read_is_one_round_trip_and_sees_other_clients(meta_url: str, tmp_path: Path) -> None:
    setup = open_meta(meta_url)
    setup.format(KEEPING)
    setup.shutdown()
    reader, writer = _vfs(meta_url, tmp_path, KEEPING), _vfs(meta_url, tmp_path, KEEPING)

    async def write(ino: int, data: bytes) -> None:
        fh = await writer.open(ino, os.O_WRONLY)
        await writer.write(fh, 0, data)
        await writer.release(fh)

    sent = [0]

    def counting(call):  # type: ignore[no-untyped-def]
        async def counted(*args):  # type: ignore[no-untyped-def]
            sent[0] += 1
            return await call(*args)
        return counted

    async def read_all(ino: int) -> tuple[bytes, int]:
        """The file's bytes, and the metadata requests its open + read sent."""
        before = sent[0]
        fh = await reader.open(ino, os.O_RDONLY)
        data = bytes(await reader.read(fh, 0, 1 << 20))
        requests = sent[0] - before
        await reader.release(fh)
        return data, requests

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            writer.start(nursery)
            assert reader.fast.client is not None
            reader.fast.client.execute = counting(reader.fast.client.execute)  # type: ignore[method-assign]
            reader.fast.blocking = counting(reader.fast.blocking)
            fh, attr = await writer.create(ROOT_INO, b"f", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
            await writer.write(fh, 0, b"first version")
            await writer.release(fh)
            await read_all(attr.ino)  # loads the scripts
            assert await read_all(attr.ino) == (b"first version", 1), "the read needs no request of its own"
            await write(attr.ino, b"SECOND")
            assert (await read_all(attr.ino))[0] == b"SECONDversion", "another client's write"
            # This client's own write, then a reopen: the list must include it.
            fh = await reader.open(attr.ino, os.O_RDWR)
            await reader.write(fh, 0, b"third")
            fh2 = await reader.open(attr.ino, os.O_RDONLY)
            assert bytes(await reader.read(fh2, 0, 100)) == b"thirdDversion"
            await reader.release(fh2)
            await reader.release(fh)
            assert (await read_all(attr.ino))[0] == b"thirdDversion"
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        for v in (reader, writer):
            v.workers.close()


def test_a_closed_file_is_freed_at_once_without_a_gc_pass(meta_url: str, tmp_path: Path) -> None:
    """Nothing the read path keeps may refer back to an open file (a slice source cached
    on it did, once): a closed file, with its slice lists and writer, is freed at its last
    release, not by the cycle collector."""
    setup = open_meta(meta_url)
    setup.format(KEEPING)
    setup.shutdown()
    vfs = _vfs(meta_url, tmp_path, KEEPING)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            vfs.start(nursery)
            fh, attr = await vfs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, CTX)
            await vfs.write(fh, 0, b"some bytes")
            await vfs.release(fh)
            fh = await vfs.open(attr.ino, os.O_RDONLY)
            assert bytes(await vfs.read(fh, 0, 100)) == b"some bytes"
            state = weakref.ref(vfs.files[attr.ino])
            gc.disable()
            try:
                await vfs.release(fh)
                assert state() is None, "freed by reference counting alone"
            finally:
                gc.enable()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        vfs.workers.close()
