"""open(O_TRUNC) at the VFS layer, with and without the kernel's atomic O_TRUNC: both paths
leave the same file (empty, mtime and ctime moved), seen the same by another client."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from fusecache.chunk.store import ChunkStore
from fusecache.meta import open_meta
from fusecache.object.local import LocalStore
from fusecache.types import ROOT_INO, SetAttr, VolumeSettings
from fusecache.vfs.vfs import Ctx, Vfs
from fusecache.workers import Workers

SETTINGS = VolumeSettings(name="vfsvol", uuid="u-1", storage="file", bucket="/unused", block_size=1 << 20,
                          trash_days=0, garbage_delay=0)
CTX = Ctx(0, 0)


def _vfs(meta_url: str, objects: Path, settings: VolumeSettings = SETTINGS) -> Vfs:
    meta = open_meta(meta_url)
    meta.load()
    return Vfs(meta, ChunkStore(LocalStore(objects), settings.name, settings.block_size), settings,
               Workers(meta_threads=2, io_threads=2))


def test_atomic_and_plain_o_trunc_give_the_same_file(meta_url: str, tmp_path: Path) -> None:
    setup = open_meta(meta_url)
    setup.format(SETTINGS)
    setup.shutdown()
    vfs, other = _vfs(meta_url, tmp_path), _vfs(meta_url, tmp_path)

    async def write_file(name: bytes) -> tuple[int, int, int]:
        fh, attr = await vfs.create(ROOT_INO, name, 0o644, os.O_WRONLY | os.O_CREAT, CTX)
        await vfs.write(fh, 0, b"x" * 300_000)
        await vfs.release(fh)
        seen = await vfs.getattr(attr.ino)
        return attr.ino, seen.mtime_ns, seen.ctime_ns

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            vfs.start(nursery)
            other.start(nursery)
            atomic, m1, c1 = await write_file(b"atomic")
            plain, m2, c2 = await write_file(b"plain")
            time.sleep(0.01)
            # atomic O_TRUNC: the kernel passes the flag to open, sends no setattr
            fh = await vfs.open(atomic, os.O_WRONLY | os.O_TRUNC)
            await vfs.release(fh)
            # without it: a setattr(size=0), then an open without the flag
            await vfs.setattr(plain, SetAttr(size=0))
            fh = await vfs.open(plain, os.O_WRONLY)
            await vfs.release(fh)
            for ino, mtime, ctime in ((atomic, m1, c1), (plain, m2, c2)):
                seen = await other.getattr(ino)
                assert seen.size == 0 and seen.mtime_ns > mtime and seen.ctime_ns > ctime
                fh = await other.open(ino, os.O_RDONLY)
                assert await other.read(fh, 0, 1000) == b""
                await other.release(fh)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        for v in (vfs, other):
            v.workers.close()
            v.meta.shutdown()
