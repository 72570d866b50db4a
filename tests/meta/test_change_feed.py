"""The metadata cache and the change feed that keeps it coherent, on a real redis-server:
another client's change drops what it outdates within moments; a value read while a change
was announced is not kept; a lost feed turns caching off until it is back."""

from __future__ import annotations

import time

import redis
import trio

from fusecache.meta import open_meta
from fusecache.meta.aio import FastCalls
from fusecache.meta.tracking import MetaCache
from fusecache.types import ROOT_INO, SetAttr
from tests.meta.test_aio import _blocking, settings


async def _until(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = trio.current_time() + timeout
    while not predicate():
        assert trio.current_time() < deadline, "not in time"
        await trio.sleep(0.01)


def test_changes_by_another_client_drop_what_they_outdate(meta_url: str) -> None:
    meta, other = open_meta(meta_url), open_meta(meta_url)
    raw = redis.Redis.from_url(meta_url)
    try:
        meta.format(settings())
        other.load()
        f = meta.mknod(ROOT_INO, b"f", 0o100644, 0, 0)
        meta.mknod(ROOT_INO, b"g", 0o100644, 0, 0)
        fast = FastCalls.for_engine(meta, _blocking)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                fast.start(nursery)
                await _until(lambda: fast.cache.live)
                assert (await fast.lookup(ROOT_INO, b"f")).ino == f.ino
                sent = fast.direct
                assert (await fast.lookup(ROOT_INO, b"f")).ino == f.ino
                assert (await fast.getattr(f.ino)).mode == 0o100644
                assert fast.direct == sent and fast.cache.hits == 2, "served without Redis"

                other.setattr(f.ino, SetAttr(mode=0o600))  # another client: attributes
                await _until(lambda: fast.cache.attr(f.ino) is None)
                assert (await fast.getattr(f.ino)).mode & 0o7777 == 0o600

                await fast.lookup(ROOT_INO, b"g")
                other.rename(ROOT_INO, b"g", ROOT_INO, b"f")  # another client: names
                await _until(lambda: fast.cache.entry(ROOT_INO, b"f") is None)
                assert (await fast.lookup(ROOT_INO, b"f")).ino != f.ino

                raw.flushdb()  # anything may have changed
                await _until(lambda: fast.cache.size == 0)

                # The feed's connection is lost: nothing is kept until it is back.
                raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await _until(lambda: not fast.cache.live)
                await _until(lambda: fast.cache.live)
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        raw.close()
        meta.shutdown()
        other.shutdown()


def test_a_value_read_across_a_change_notice_is_not_kept() -> None:
    cache = MetaCache()
    cache.set_live(True)

    class A:
        ino = 7

    token = cache.begin()
    cache.changed_inode(99)  # any notice while the read was on its way
    cache.fill_attr(token, A())
    assert cache.attr(7) is None
    cache.fill_attr(cache.begin(), A())
    assert cache.attr(7) is not None
    cache.set_live(False)
    assert cache.attr(7) is None and cache.begin() is None
    cache.fill_attr(None, A())
    assert cache.attr(7) is None


def test_entries_expire_and_the_size_is_bounded() -> None:
    cache = MetaCache(ttl=0.05, limit=3)
    cache.set_live(True)

    class A:
        def __init__(self, ino: int) -> None:
            self.ino = ino

    for i in range(3):
        cache.fill_entry(cache.begin(), 1, b"n%d" % i, A(i))
    assert cache.size == 3
    cache.fill_attr(cache.begin(), A(9))
    assert cache.size == 1, "at the limit everything goes, then it fills again"
    time.sleep(0.06)
    assert cache.attr(9) is None


def test_a_server_that_refuses_tracking_leaves_caching_off(meta_url: str) -> None:
    """An ACL user without CLIENT (or a Redis before 6): one warning, no cache, no crash."""
    meta = open_meta(meta_url)
    raw = redis.Redis.from_url(meta_url)
    url = meta_url.replace("redis://", "redis://plain:pw@")
    raw.execute_command("ACL", "SETUSER", "plain", "on", ">pw", "~*", "&*", "+@all", "-client")
    try:
        meta.format(settings())
        user = open_meta(url)
        user.load()
        fast = FastCalls.for_engine(user, _blocking)
        assert fast.feed is not None

        async def main() -> None:
            with trio.fail_after(5):
                await fast.feed.run()  # type: ignore[union-attr]  # returns: nothing to follow
            assert not fast.cache.live
            assert fast.cache.begin() is None, "nothing read now would be kept"

        trio.run(main)
        user.shutdown()
    finally:
        raw.execute_command("ACL", "DELUSER", "plain")
        raw.close()
        meta.shutdown()


def test_the_listener_hears_each_batch_and_own_resets_keep_the_notice_token() -> None:
    cache = MetaCache()
    heard: list[set[int] | None] = []
    cache.listener = heard.append
    cache.set_live(True)
    assert heard == [None], "the feed coming up: anything may have changed"
    token = cache.notice_token()
    cache.reset()  # our own change
    assert cache.notice_token() == token, "own changes do not outdate the kernel's replies"
    cache.changed_inode(5)
    cache.changed_inode(6)
    cache.changed_dir(1)
    cache.tell()
    cache.tell()  # nothing new: not told again
    assert heard == [None, {5, 6}]
    assert cache.notice_token() != token
    cache.set_live(False)
    assert heard[-1] is None and cache.notice_token() is None


def _hscans(raw: redis.Redis) -> int:
    return int(raw.info("commandstats").get("cmdstat_hscan", {}).get("calls", 0))


def test_a_kept_listing_costs_no_scan_and_follows_another_clients_changes(meta_url: str) -> None:
    meta, other = open_meta(meta_url), open_meta(meta_url)
    raw = redis.Redis.from_url(meta_url)
    try:
        meta.format(settings())
        other.load()
        d = meta.mkdir(ROOT_INO, b"d", 0o40755, 0, 0)
        f = meta.mknod(d.ino, b"f", 0o100644, 0, 0)
        g = meta.mknod(d.ino, b"g", 0o100644, 0, 0)
        fast = FastCalls.for_engine(meta, _blocking)

        async def names() -> dict[bytes, int]:
            return {e.name: e.attr.mode & 0o7777 for e in await fast.readdir(d.ino)}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                fast.start(nursery)
                await _until(lambda: fast.cache.live)
                assert await names() == {b"f": 0o644, b"g": 0o644}
                scans, sent = _hscans(raw), fast.direct
                for _ in range(3):
                    assert await names() == {b"f": 0o644, b"g": 0o644}
                assert _hscans(raw) == scans and fast.direct == sent, "unchanged: no round trip"

                other.setattr(g.ino, SetAttr(mode=0o100600))  # a child's attributes only
                await _until(lambda: fast.cache.attr(g.ino) is None)
                assert await names() == {b"f": 0o644, b"g": 0o600}
                assert _hscans(raw) == scans and fast.direct == sent + 1, "one MGET of the changed child"

                other.mknod(d.ino, b"h", 0o100644, 0, 0)  # the directory's names
                await _until(lambda: fast.cache.listing(d.ino) is None)
                assert set(await names()) == {b"f", b"g", b"h"}
                other.unlink(d.ino, b"f")
                other.rename(d.ino, b"g", ROOT_INO, b"g2")
                await _until(lambda: fast.cache.listing(d.ino) is None)
                assert set(await names()) == {b"h"}
                assert fast.cache.attr(f.ino) is None
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        raw.close()
        meta.shutdown()
        other.shutdown()


def test_listings_count_toward_the_bound() -> None:
    cache = MetaCache(limit=4)
    cache.set_live(True)
    cache.fill_listing(cache.begin(), 1, [(b"a", 2), (b"b", 3), (b"c", 4)])
    assert cache.listing(1) is not None
    cache.fill_listing(cache.begin(), 5, [(b"x", 6), (b"y", 7)])
    assert cache.listing(1) is None and cache.listing(5) is not None, "past the limit the rest goes"
    cache.fill_listing(cache.begin(), 8, [(bytes([i]), i) for i in range(5)])
    assert cache.listing(8) is None, "a listing larger than the limit is never kept"
    token = cache.begin()
    cache.changed_dir(99)
    cache.fill_listing(token, 9, [])
    assert cache.listing(9) is None, "read across a notice: not kept"
    cache.fill_listing(cache.begin(), 9, [])
    cache.changed_dir(9)
    assert cache.listing(9) is None
