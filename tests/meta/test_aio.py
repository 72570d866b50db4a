"""The non-blocking metadata path gives exactly what the blocking engine gives."""

from __future__ import annotations

import dataclasses
import errno
import time

import pytest
import trio

from fusecache.errors import FsError
from fusecache.meta import open_meta
from fusecache.meta.aio import AsyncRedis, DirectAddress, FastCalls, pack_command
from fusecache.types import ROOT_INO, Slice, VolumeSettings
from tests.servers import RedisServer, start_redis


def settings() -> VolumeSettings:
    return VolumeSettings(name="vol1", uuid="u", storage="file", bucket="/tmp/x", created=time.time(),
                          trash_days=0, garbage_delay=0)


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
        reads = FastCalls.for_engine(meta, _blocking)
        assert reads.client is not None

        async def main() -> None:
            # The first EVALSHA may find the script unloaded on a fresh server: it falls back.
            assert await reads.lookup(ROOT_INO, b"dir") == meta.lookup(ROOT_INO, b"dir")
            before = reads.direct
            assert await reads.lookup(d.ino, b"file") == f
            assert await reads.getattr(f.ino) == meta.getattr(f.ino)
            assert reads.direct == before + 2
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
        reads = FastCalls.for_engine(meta, _blocking)

        async def main() -> None:
            await reads.getattr(ROOT_INO)
            assert reads.direct == 1  # authenticated and selected db 3

        trio.run(main)
        wrong = FastCalls(meta, _blocking, AsyncRedis(reads.client.address.__class__(  # type: ignore[union-attr]
            "127.0.0.1", server.port, 3, None, "wrong")))

        async def with_wrong_password() -> None:
            assert (await wrong.getattr(ROOT_INO)).ino == ROOT_INO  # answered by the thread path
            assert wrong.direct == 0

        trio.run(with_wrong_password)
        meta.shutdown()
    finally:
        server.stop()


def test_fast_open_notes_the_open_where_every_client_sees_it(meta_url: str) -> None:
    """An open on the non-blocking path notes the session's hold in Redis (one request,
    with the attributes); a second open of the same file needs no note; an unlink by
    another client keeps the file until the last release is flushed."""
    meta = open_meta(meta_url)
    other = open_meta(meta_url)
    try:
        meta.format(settings())
        other.load()
        meta.new_session("host", 1, "/mnt", "test")
        other.new_session("other", 2, "/mnt2", "test")
        f = meta.mknod(ROOT_INO, b"f", 0o100644, 0, 0)
        meta.open(f.ino)  # loads the OPEN script (a fresh server answers NOSCRIPT first)
        meta.release(f.ino)
        meta.flush_releases()
        fast = FastCalls.for_engine(meta, _blocking)

        async def main() -> None:
            before = fast.direct
            assert await fast.open(f.ino) == (meta.getattr(f.ino), [])
            assert fast.direct == before + 1, "one request: note, attributes, first chunk"
            meta.write(f.ino, 0, Slice(0, 77, 5, 0, 5), 1)
            assert await fast.open(f.ino) == (meta.getattr(f.ino), meta.read(f.ino, 0))
            assert fast.direct == before + 2, "held already: attributes and first chunk, no note"
            with pytest.raises(FsError) as info:
                await fast.open(999_999)
            assert info.value.errno == errno.ENOENT
            await fast.client.aclose()  # type: ignore[union-attr]

        trio.run(main)
        assert meta.open_files() == 2  # f, and the failed open (its possible note goes at the next flush)
        other.unlink(ROOT_INO, b"f")
        assert other.getattr(f.ino).nlink == 0, "kept for the other client's open"
        assert meta.release_nowait(f.ino) and meta.release_nowait(f.ino)
        assert meta.getattr(f.ino).nlink == 0, "the note lingers until flushed"
        meta.flush_releases()
        with pytest.raises(FsError) as info:
            meta.getattr(f.ino)
        assert info.value.errno == errno.ENOENT
    finally:
        meta.shutdown()
        other.shutdown()


def test_fast_create_and_unlink_match_engine(meta_url: str) -> None:
    """Creates and unlinks of regular files on the non-blocking path: the same inodes,
    entries, errnos, limits and open-file handling as the blocking engine."""
    meta = open_meta(meta_url)
    try:
        meta.format(settings())
        meta.new_session("host", 1, "/mnt", "test")
        d = meta.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        fast = FastCalls.for_engine(meta, _blocking)
        assert fast.client is not None

        async def main() -> None:
            first = await fast.create(d.ino, b"a", 0o100640, 7, 8)  # no inode batch yet: blocking path
            a = await fast.create(d.ino, b"b", 0o100640, 7, 8)
            created_direct = fast.direct
            assert created_direct >= 1  # the second create found an inode number at hand
            for f in (first, a):
                assert meta.getattr(f.ino) == f and f.uid == 7 and f.mode == 0o100640
            assert meta.lookup(d.ino, b"b") == a
            assert meta.getattr(d.ino).mtime_ns >= a.mtime_ns  # the parent was touched
            for args, err in [((d.ino, b"b"), errno.EEXIST), ((a.ino, b"x"), errno.ENOTDIR),
                              ((999_999, b"x"), errno.ENOENT), ((d.ino, b"n" * 256), errno.ENAMETOOLONG)]:
                with pytest.raises(FsError) as info:
                    await fast.create(*args, 0o100644, 0, 0)
                assert info.value.errno == err

            meta.mknod(d.ino, b"tmp", 0o100644, 0, 0)
            meta.unlink(d.ino, b"tmp")  # loads the UNLINK script into Redis (else NOSCRIPT: fallback)
            before = fast.direct
            await fast.unlink(d.ino, b"a")
            assert fast.direct == before + 1
            for args, err in [((d.ino, b"a"), errno.ENOENT), ((ROOT_INO, b"d"), errno.EISDIR)]:
                with pytest.raises(FsError) as info:
                    await fast.unlink(*args)
                assert info.value.errno == err
            meta.flush_releases()  # the create's note of `first` lingered
            with pytest.raises(FsError):
                meta.getattr(first.ino)

            # A file created open loses its last link: kept (nlink 0) until its last release.
            assert (await fast.open(a.ino, a))[0] == a
            await fast.unlink(d.ino, b"b")
            assert meta.getattr(a.ino).nlink == 0
            meta.release(a.ino)
            meta.flush_releases()
            with pytest.raises(FsError) as info:
                meta.getattr(a.ino)
            assert info.value.errno == errno.ENOENT
            await fast.client.aclose()  # type: ignore[union-attr]

        trio.run(main)
        assert meta.statfs(ROOT_INO).used_inodes == 1  # d (the root is not counted)
    finally:
        meta.shutdown()


def test_fast_slice_commit_matches_engine(meta_url: str) -> None:
    """A written slice committed on the non-blocking path: one round trip without a thread,
    the same attributes, list and errnos as the blocking engine, and a repeated commit
    (what a retry after a lost reply sends) is not counted twice."""
    meta = open_meta(meta_url)
    try:
        meta.format(settings())
        f = meta.mknod(ROOT_INO, b"f", 0o100644, 0, 0)
        d = meta.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        meta.write(f.ino, 0, Slice(0, meta.reserve_slice_ids(1), 1, 0, 1, (1,)), time.time_ns())  # loads WRITE
        fast = FastCalls.for_engine(meta, _blocking)
        assert fast.client is not None

        async def main() -> None:
            piece = Slice(10, meta.reserve_slice_ids(1), 20, 0, 20, (7,))
            before = fast.direct
            attr = await fast.write(f.ino, 0, piece, time.time_ns())
            assert fast.direct == before + 1, "the commit took a thread"
            assert attr.size == 30 and meta.getattr(f.ino) == attr
            assert (await fast.write(f.ino, 0, piece, time.time_ns())).size == 30
            assert meta.read(f.ino, 0)[1:] == [piece], "a repeated commit added the slice twice"
            for ino, err in [(d.ino, errno.EISDIR), (999_999, errno.ENOENT)]:
                with pytest.raises(FsError) as info:
                    await fast.write(ino, 0, Slice(0, meta.reserve_slice_ids(1), 1, 0, 1, (1,)), time.time_ns())
                assert info.value.errno == err
            with pytest.raises(FsError) as info:  # refused before it is sent
                await fast.write(f.ino, 0, Slice(-1, 5, 1, 0, 1, (1,)), time.time_ns())
            assert info.value.errno == errno.EINVAL
            await fast.client.aclose()  # type: ignore[union-attr]

        trio.run(main)
    finally:
        meta.shutdown()


def test_fast_create_respects_the_inode_limit(meta_url: str) -> None:
    meta = open_meta(meta_url)
    try:
        meta.format(dataclasses.replace(settings(), inodes=2))  # the root is not counted
        meta.mknod(ROOT_INO, b"warm", 0o100644, 0, 0)  # fills this client's inode batch
        fast = FastCalls.for_engine(meta, _blocking)

        async def main() -> None:
            await fast.create(ROOT_INO, b"two", 0o100644, 0, 0)
            assert fast.direct == 1
            with pytest.raises(FsError) as info:
                await fast.create(ROOT_INO, b"three", 0o100644, 0, 0)
            assert info.value.errno == errno.ENOSPC
            await fast.client.aclose()  # type: ignore[union-attr]

        trio.run(main)
    finally:
        meta.shutdown()


def test_a_call_cancelled_mid_flight_gives_its_connection_up(redis_server: RedisServer) -> None:
    """The reply of a cancelled call would reach the next caller on that connection: it is
    closed instead, and its slot in the (here single-connection) pool is free again."""
    client = AsyncRedis(DirectAddress("127.0.0.1", redis_server.port), max_connections=1)

    async def main() -> None:
        with trio.move_on_after(0.3) as scope:
            await client.execute("BLPOP", "fc-test-never-pushed", 5)  # blocks server-side
        assert scope.cancelled_caught
        with trio.fail_after(2):  # would wait for the lost slot (or the BLPOP reply) forever
            assert await client.execute("PING") == b"PONG"
        await client.aclose()

    trio.run(main)
