"""A request that ran but whose reply was lost (the connection died right after) is retried,
and the retry reports what the first attempt did: never a second change, never a wrong
ENOENT/EEXIST. Each test loses the reply of exactly one script run through a proxy."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import trio

from fusecache.errors import FsError
from fusecache.meta import open_meta
from fusecache.meta.aio import FastCalls
from fusecache.meta.redis import RedisMeta
from fusecache.types import ROOT_INO, SetAttr, Slice
from tests.lossy_proxy import LossyProxy
from tests.meta.conformance import SETTINGS, assert_consistent

FILE = 0o100644


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query, ""))


@pytest.fixture
def lossy(meta_url: str) -> Iterator[tuple[RedisMeta, LossyProxy, RedisMeta]]:
    """An engine talking through a reply-losing proxy, and one talking directly."""
    direct = open_meta(meta_url)
    direct.format(SETTINGS)
    port = urlsplit(meta_url).port
    assert port is not None
    with LossyProxy(port) as proxy:
        meta = open_meta(_via(meta_url, proxy.port))
        meta.load()
        assert isinstance(meta, RedisMeta) and isinstance(direct, RedisMeta)
        # Load every script first: a lost reply must hit a script that runs, not NOSCRIPT.
        raw = redis.Redis.from_url(meta_url)
        for script in meta._scripts.values():
            raw.script_load(script.script)
        raw.close()
        try:
            yield meta, proxy, direct
        finally:
            meta.shutdown()
            direct.shutdown()


def _lose(meta: RedisMeta, proxy: LossyProxy, script: str) -> None:
    proxy.lose_reply_to(meta._scripts[script].sha.encode())


def _check_lost(proxy: LossyProxy, before: int) -> None:
    assert proxy.lost == before + 1, "the proxy did not lose the reply (test set-up)"


def test_create_mkdir_symlink_link(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    meta, proxy, direct = lossy
    for make in (lambda: meta.mknod(ROOT_INO, b"f", FILE, 0, 0),
                 lambda: meta.mkdir(ROOT_INO, b"d", 0o755, 0, 0),
                 lambda: meta.symlink(ROOT_INO, b"s", b"target", 0, 0)):
        before = proxy.lost
        _lose(meta, proxy, "CREATE")
        attr = make()  # not EEXIST: the first attempt's own entry
        _check_lost(proxy, before)
        assert direct.getattr(attr.ino).mode == attr.mode
    assert direct.getattr(ROOT_INO).nlink == 3, "the directory was counted once"
    f = direct.lookup(ROOT_INO, b"f")
    before = proxy.lost
    _lose(meta, proxy, "LINK")
    meta.link(f.ino, ROOT_INO, b"f2")
    _check_lost(proxy, before)
    assert direct.getattr(f.ino).nlink == 2
    assert direct.statfs().used_inodes == 3
    assert_consistent(direct)


def test_unlink_rmdir_rename(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    meta, proxy, direct = lossy
    direct.mknod(ROOT_INO, b"a", FILE, 0, 0)
    direct.mknod(ROOT_INO, b"b", FILE, 0, 0)
    direct.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for name, call in (("UNLINK", lambda: meta.unlink(ROOT_INO, b"a")),
                       ("RMDIR", lambda: meta.rmdir(ROOT_INO, b"d")),
                       ("RENAME", lambda: meta.rename(ROOT_INO, b"b", ROOT_INO, b"c", 1))):  # NOREPLACE
        before = proxy.lost
        _lose(meta, proxy, name)
        call()  # neither ENOENT (it is gone already) nor EEXIST (the target exists now)
        _check_lost(proxy, before)
    assert sorted(e.name for e in direct.readdir(ROOT_INO)) == [b"c"]
    assert direct.getattr(ROOT_INO).nlink == 2
    # A later, real ENOENT is still reported.
    with pytest.raises(FsError) as info:
        meta.unlink(ROOT_INO, b"a")
    assert info.value.errno == errno.ENOENT
    assert_consistent(direct)


def test_a_retried_unlink_never_removes_a_file_created_since(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    """The token, not the name, decides: a retry after another client made a new file of
    the same name leaves that new file alone."""
    meta, _, direct = lossy
    direct.mknod(ROOT_INO, b"x", FILE, 0, 0)
    key = meta._op_key()
    keys = [meta._dk(ROOT_INO), key]
    args = [ROOT_INO, b"x", b"\0" * 8, ""]
    assert meta._eval("UNLINK", keys, args)[0] == 0
    new = direct.mknod(ROOT_INO, b"x", FILE, 0, 0)
    assert meta._eval("UNLINK", keys, args)[0] == 0, "the repeat reports the first result"
    assert direct.lookup(ROOT_INO, b"x") == new


def test_setattr_truncate_and_xattrs(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    meta, proxy, direct = lossy
    f = direct.mknod(ROOT_INO, b"f", FILE, 0, 0)
    piece = Slice(0, direct.reserve_slice_ids(1), 100, 0, 100)
    direct.write(f.ino, 0, piece, time.time_ns())
    before = proxy.lost
    _lose(meta, proxy, "SETATTR")
    assert meta.setattr(f.ino, SetAttr(size=10)).size == 10
    _check_lost(proxy, before)
    _lose(meta, proxy, "SETXATTR")
    meta.setxattr(f.ino, b"user.k", b"v", 1)  # XATTR_CREATE: not EEXIST on the retry
    _lose(meta, proxy, "REMOVEXATTR")
    meta.removexattr(f.ino, b"user.k")  # not ENODATA on the retry
    _check_lost(proxy, before + 2)
    assert direct.listxattr(f.ino) == []
    assert direct.getattr(f.ino).size == 10


def test_commit_and_compaction(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    """A slice commit whose reply is lost counts once; a compaction whose reply is lost
    reports success (else the compactor would delete the objects it just swapped in)."""
    meta, proxy, direct = lossy
    f = direct.mknod(ROOT_INO, b"f", FILE, 0, 0)
    pieces = []
    for i in range(3):
        piece = Slice(i * 10, direct.reserve_slice_ids(1), 10, 0, 10, (i + 1,))
        before = proxy.lost
        _lose(meta, proxy, "WRITE")
        assert meta.write(f.ino, 0, piece, time.time_ns()).size == (i + 1) * 10
        _check_lost(proxy, before)
        pieces.append(piece)
    assert direct.read(f.ino, 0) == pieces, "each slice committed exactly once"
    new = Slice(0, direct.reserve_slice_ids(1), 30, 0, 30, (9,))
    before = proxy.lost
    _lose(meta, proxy, "COMPACT")
    assert meta.compact(f.ino, 0, pieces, new)
    _check_lost(proxy, before)
    assert direct.read(f.ino, 0) == [new]
    # A commit of a slice that compaction dropped meanwhile (its first attempt went through
    # long ago) does not bring the slice back.
    assert meta.write(f.ino, 0, pieces[0], time.time_ns())
    assert direct.read(f.ino, 0) == [new]


def test_lost_replies_on_the_non_blocking_path(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    """The non-blocking client falls back to the blocking engine with the same request
    (same token, same inode number) when a reply is lost."""
    meta, proxy, direct = lossy
    meta.new_session("h", 1, "/m", "v")
    meta.mknod(ROOT_INO, b"warm", FILE, 0, 0)  # an inode batch at hand for the fast create

    async def blocking(fn, *args):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(fn, *args)

    fast = FastCalls.for_engine(meta, blocking)
    assert fast.client is not None

    async def main() -> None:
        _lose(meta, proxy, "CREATE")
        attr = await fast.create(ROOT_INO, b"new", FILE, 0, 0)
        assert proxy.lost == 1
        assert direct.lookup(ROOT_INO, b"new") == attr
        piece = Slice(0, direct.reserve_slice_ids(1), 5, 0, 5, (3,))
        _lose(meta, proxy, "WRITE")
        assert (await fast.write(attr.ino, 0, piece, time.time_ns())).size == 5
        assert proxy.lost == 2
        assert direct.read(attr.ino, 0) == [piece], "the retried commit counted twice"
        _lose(meta, proxy, "UNLINK")
        await fast.unlink(ROOT_INO, b"new")
        assert proxy.lost == 3
        await fast.client.aclose()  # type: ignore[union-attr]

    trio.run(main)
    assert [e.name for e in direct.readdir(ROOT_INO)] == [b"warm"]
    meta.flush_releases()  # the create noted `new` open; its unlink kept it until now
    assert_consistent(direct)


def test_a_silent_connection_gives_up_within_the_bound(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    """A half-open connection (nothing answers, nothing is closed) fails the call within
    GIVE_UP_AFTER on both paths, and the first call after the server answers again works."""
    from fusecache.errors import MetaError
    from fusecache.meta.connect import GIVE_UP_AFTER

    meta, proxy, direct = lossy
    f = direct.mknod(ROOT_INO, b"f", FILE, 0, 0)
    meta.getattr(f.ino)  # a pooled connection exists: the call below reuses it
    proxy.hold()
    started = time.monotonic()
    with pytest.raises(MetaError):
        meta.getattr(f.ino)
    assert time.monotonic() - started <= GIVE_UP_AFTER + 1
    proxy.release()
    started = time.monotonic()
    assert meta.getattr(f.ino) == direct.getattr(f.ino)
    assert time.monotonic() - started < 5


def test_a_second_open_waits_for_the_first_ones_note(lossy: tuple[RedisMeta, LossyProxy, RedisMeta]) -> None:
    """Until the first open's note is in Redis, another open of the same file must not
    count on it (an unlink elsewhere in between would free the file under it)."""
    import threading

    meta, proxy, direct = lossy
    meta.new_session("h", 1, "/m", "v")
    f = direct.mknod(ROOT_INO, b"f", FILE, 0, 0)
    meta.getattr(f.ino)
    proxy.hold()
    first = threading.Thread(target=meta.open, args=(f.ino,))
    first.start()
    time.sleep(0.3)
    assert meta.open_nowait(f.ino) is None, "the note is not written yet: take the waiting path"
    proxy.release()
    first.join(timeout=30)
    assert meta.open_nowait(f.ino) is True, "noted now"
    direct.unlink(ROOT_INO, b"f")
    assert direct.getattr(f.ino).nlink == 0, "kept for this session's opens"
    for _ in range(2):
        meta.release(f.ino)
    meta.flush_releases()
    with pytest.raises(FsError):
        direct.getattr(f.ino)
