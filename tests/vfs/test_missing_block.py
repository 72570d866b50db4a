"""A reader whose cached slice list names objects that are gone (another client compacted
the chunk) reads the slice list again and gets the right bytes, also when one read spans
several blocks loaded at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from fusecache.layout import slice_keys
from fusecache.meta import open_meta
from fusecache.types import ROOT_INO
from tests.vfs.test_truncate_on_open import CTX, SETTINGS, _vfs

MiB = 1 << 20


def test_a_multi_block_read_over_a_vanished_slice_reads_the_slice_list_again(meta_url: str, tmp_path: Path) -> None:
    setup = open_meta(meta_url)
    setup.format(SETTINGS)
    setup.shutdown()
    writer, reader = _vfs(meta_url, tmp_path), _vfs(meta_url, tmp_path)
    reader.slice_ttl = 3600.0  # the reader keeps its list: only the re-read can save it
    first = os.urandom(4 * MiB)
    second = os.urandom(4 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            writer.start(nursery)
            reader.start(nursery)
            fh, attr = await writer.create(ROOT_INO, b"f", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
            await writer.write(fh, 0, first)
            await writer.release(fh)
            old = (await writer.fast.read(attr.ino, 0))[0]
            rfh = await reader.open(attr.ino, os.O_RDONLY)
            assert await reader.read(rfh, 0, 100) == first[:100]  # the slice list is cached now
            # The writer rewrites the file in place (a new slice), and the old slice's objects
            # vanish (as after compaction and the garbage delay).
            wfh = await writer.open(attr.ino, os.O_WRONLY)
            await writer.write(wfh, 0, second)
            await writer.release(wfh)
            for key in slice_keys(SETTINGS.name, old.id, old.size, SETTINGS.block_size):
                writer.chunks.store.delete(key)
            reader.loader.forget(list(reader.loader._recent))
            reader.chunks.evict([k for k in slice_keys(SETTINGS.name, old.id, old.size, SETTINGS.block_size)])
            data = await reader.read(rfh, MiB // 2, 3 * MiB)  # four blocks at once
            assert bytes(data) == second[MiB // 2 : MiB // 2 + 3 * MiB]
            assert reader.counters.slice_rereads == 1
            await reader.release(rfh)
            nursery.cancel_scope.cancel()

    started = time.monotonic()
    try:
        trio.run(main)
    finally:
        for v in (writer, reader):
            v.workers.close()
            v.meta.shutdown()
    assert time.monotonic() - started < 8, "the re-read must not wait for the missing object first"
