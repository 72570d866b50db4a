"""A write-through close waits for the object store and the metadata commit, not for the
clean copy of the written block to reach the node's cache: that copy lands afterwards, and
until it does, readers get the committed bytes from the store."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import trio

from fusecache.cache.config import parse_cache_spec
from fusecache.cache.tiered import TieredCache
from fusecache.chunk.store import ChunkStore
from fusecache.meta import open_meta
from fusecache.object.local import LocalStore
from fusecache.types import ROOT_INO
from fusecache.vfs.vfs import Vfs
from fusecache.workers import Workers
from tests.vfs.test_truncate_on_open import CTX, SETTINGS, _vfs


def test_a_close_does_not_wait_for_the_cache_copy(meta_url: str, tmp_path: Path) -> None:
    setup = open_meta(meta_url)
    setup.format(SETTINGS)
    setup.shutdown()
    objects = tmp_path / "objects"
    cache = TieredCache([parse_cache_spec(f"ssd:{tmp_path / 'cache'}:256MiB")], SETTINGS.uuid)
    meta = open_meta(meta_url)
    meta.load()
    writer = Vfs(meta, ChunkStore(LocalStore(objects), SETTINGS.name, SETTINGS.block_size, cache), SETTINGS,
                 Workers(meta_threads=2, io_threads=4))
    reader = _vfs(meta_url, objects)  # no cache: reads the store
    release_put, putting = threading.Event(), threading.Event()
    real_put = cache.put

    def slow_put(key: str, data: bytes) -> None:
        putting.set()
        release_put.wait(30)
        real_put(key, data)

    cache.put = slow_put  # type: ignore[method-assign]
    data = os.urandom(200_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            writer.start(nursery)
            reader.start(nursery)
            fh, attr = await writer.create(ROOT_INO, b"f", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
            await writer.write(fh, 0, data)
            with trio.fail_after(10):  # a close that waited for the held cache copy would time out
                await writer.flush(fh)
                await writer.release(fh)
            assert putting.is_set(), "the clean copy was never offered to the cache"
            block = (await writer.fast.read(attr.ino, 0))[0]
            assert not writer.chunks.is_cached(block.id, block.size, 0)
            fh = await reader.open(attr.ino, os.O_RDONLY)
            got = bytes(await reader.read(fh, 0, 1 << 20))
            await reader.release(fh)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            release_put.set()
            with trio.fail_after(10):
                while not writer.chunks.is_cached(block.id, block.size, 0):
                    await trio.sleep(0.01)
            fh = await writer.open(attr.ino, os.O_RDONLY)
            got = bytes(await writer.read(fh, 0, 1 << 20))
            await writer.release(fh)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            assert writer.chunks.counters.gets == 0, "the writer's read missed its own cache"
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        release_put.set()
        for v in (reader, writer):
            v.workers.close()
