"""The non-blocking read path gives exactly what the blocking engine gives."""

from __future__ import annotations

import errno
import time

import pytest
import trio

from fusecache.errors import FsError
from fusecache.meta import open_meta
from fusecache.meta.aio import AsyncRedis, FastReads, pack_command
from fusecache.types import ROOT_INO, Slice, VolumeSettings
from tests.servers import start_redis


def settings() -> VolumeSettings:
    return VolumeSettings(name="vol1", uuid="u", storage="file", bucket="/tmp/x", created=time.time())


async def _blocking(fn, *args):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(fn, *args)


def test_pack_command() -> None:
    assert pack_command("GET", b"k", 12) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"


def test_fast_reads_match_engine(meta_url: str) -> None:
    meta = open_meta(meta_url)
    try:
        meta.format(settings())
        d = meta.mkdir(ROOT_INO, b"dir", 0o755, 1, 2)
        f = meta.mknod(d.ino, b"file", 0o100644, 3, 4)
        reads = FastReads.for_engine(meta, _blocking)
        assert reads.client is not None

        async def main() -> None:
            # The first EVALSHA may find the script unloaded on a fresh server: it falls back.
            assert await reads.lookup(ROOT_INO, b"dir") == meta.lookup(ROOT_INO, b"dir")
            before = reads.fast
            assert await reads.lookup(d.ino, b"file") == f
            assert await reads.getattr(f.ino) == meta.getattr(f.ino)
            assert reads.fast == before + 2
            piece = Slice(0, meta.reserve_slice_ids(1), 10, 0, 10)
            meta.write(f.ino, 0, piece, 1)
            assert await reads.read(f.ino, 0) == [piece] == meta.read(f.ino, 0)
            assert await reads.read(f.ino, 5) == []
            for fn, args, err in [
                (reads.lookup, (d.ino, b"missing"), errno.ENOENT),
                (reads.lookup, (f.ino, b"x"), errno.ENOTDIR),
                (reads.getattr, (999_999,), errno.ENOENT),
                (reads.lookup, (d.ino, b"n" * 256), errno.ENAMETOOLONG),
            ]:
                with pytest.raises(FsError) as info:
                    await fn(*args)
                assert info.value.errno == err
            assert await reads.lookup(d.ino, b"..") == meta.getattr(ROOT_INO)  # blocking path
            await reads.client.aclose()  # type: ignore[union-attr]

        trio.run(main)
    finally:
        meta.shutdown()


def test_password_and_lost_server_fall_back() -> None:
    server = start_redis(password="s3cret")
    try:
        meta = open_meta(server.url(3))
        meta.format(settings())
        reads = FastReads.for_engine(meta, _blocking)

        async def main() -> None:
            await reads.getattr(ROOT_INO)
            assert reads.fast == 1  # authenticated and selected db 3

        trio.run(main)
        wrong = FastReads(meta, _blocking, AsyncRedis(reads.client.address.__class__(  # type: ignore[union-attr]
            "127.0.0.1", server.port, 3, None, "wrong")))

        async def with_wrong_password() -> None:
            assert (await wrong.getattr(ROOT_INO)).ino == ROOT_INO  # answered by the thread path
            assert wrong.fast == 0

        trio.run(with_wrong_password)
        meta.shutdown()
    finally:
        server.stop()


def test_nowait_open_and_release_keep_unlinked_files_alive(meta_url: str) -> None:
    """The non-blocking open/release count opens exactly like the blocking ones: an
    unlinked file stays while open, and the last release (blocking path) frees it."""
    meta = open_meta(meta_url)
    try:
        meta.format(settings())
        meta.new_session("host", 1, "/mnt", "test")
        f = meta.mknod(ROOT_INO, b"f", 0o100644, 0, 0)
        assert meta.open_nowait(f.ino) and meta.open_nowait(f.ino)
        meta.unlink(ROOT_INO, b"f")
        assert meta.getattr(f.ino).nlink == 0  # kept: this session holds it open
        assert meta.release_nowait(f.ino)  # one of two opens: no server call needed
        assert not meta.release_nowait(f.ino)  # the last one frees it: must block
        meta.release(f.ino)
        with pytest.raises(FsError) as info:
            meta.getattr(f.ino)
        assert info.value.errno == errno.ENOENT
        g = meta.mknod(ROOT_INO, b"g", 0o100644, 0, 0)
        assert meta.open_nowait(g.ino) and meta.release_nowait(g.ino)
    finally:
        meta.shutdown()
