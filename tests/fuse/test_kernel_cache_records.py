"""The kernel cache's records without a mount: which replies may carry the long timeouts,
and how names follow our own renames and the kernel's FORGETs."""

from __future__ import annotations

from typing import Any

import trio

from fusecache.fuse import kernel_cache
from fusecache.fuse.kernel_cache import KernelCache
from fusecache.meta.aio import OwnChange
from fusecache.types import Attr


def _cache(limit: int = 100) -> tuple[KernelCache, list[int]]:
    epoch = [1]

    async def current(inos: list[int]) -> list[Any]:
        return [Attr(ino, 0o100644) for ino in inos]

    async def entry(parent: int, name: bytes) -> int | None:
        return None

    return KernelCache(lambda: epoch[0], current, entry, lambda ino: ino, 60.0, limit), epoch


def test_a_reply_read_across_a_notice_gets_the_short_timeouts() -> None:
    cache, epoch = _cache()
    token = cache.begin()
    epoch[0] += 1  # a notice arrived while the request was on its way
    assert not cache.keep(token, Attr(5, 0o100644), (1, b"f"))
    assert cache.keep(cache.begin(), Attr(5, 0o100644), (1, b"f"))
    assert cache.holder(1, b"f") == 5


def test_records_are_bounded_and_forget_drops_them() -> None:
    cache, _ = _cache(limit=2)
    assert cache.keep(cache.begin(), Attr(5, 0o100644), (1, b"a"))
    assert cache.keep(cache.begin(), Attr(5, 0o100644), (1, b"b"))  # a second lookup of 5
    assert cache.keep(cache.begin(), Attr(6, 0o100644), (1, b"c"))
    assert not cache.keep(cache.begin(), Attr(7, 0o100644), (1, b"d")), "past the limit: short"
    token = cache.begin()
    cache._token = lambda: 99  # type: ignore[method-assign]  # notices came: replies are short now
    assert not cache.keep(token, Attr(5, 0o100644), (1, b"e")), "a short reply the kernel counts too"
    cache.forget(5, 2)
    assert cache.holder(1, b"a") == 5, "one lookup is left"
    cache.forget(5, 1)
    assert cache.holder(1, b"a") is None and cache.holder(1, b"b") is None
    assert cache.snapshot()["held_inodes"] == 1


def test_names_follow_own_renames_and_exchanges() -> None:
    cache, _ = _cache()
    cache.keep(cache.begin(), Attr(5, 0o100644), (1, b"x"))
    cache.keep(cache.begin(), Attr(6, 0o100644), (1, b"y"))
    cache.renamed((1, b"x"), (2, b"y2"), cache.holder(1, b"x"), cache.holder(2, b"y2"), exchange=False)
    assert cache.holder(1, b"x") is None and cache.holder(2, b"y2") == 5
    cache.renamed((1, b"y"), (2, b"y2"), 6, 5, exchange=True)
    assert cache.holder(2, b"y2") == 6 and cache.holder(1, b"y") == 5
    cache.name_gone(1, b"y")
    assert cache.holder(1, b"y") is None


def test_a_changed_file_is_taken_back_and_an_unchanged_one_is_kept() -> None:
    cache, _ = _cache()
    cache.keep(cache.begin(), Attr(5, 0o100644), (1, b"same"))  # equal to what `current` says
    cache.keep(cache.begin(), Attr(6, 0o100600), (1, b"chmodded"))
    told: list[Any] = []

    async def main() -> None:
        import fusecache.fuse.kernel_cache as kc

        real = kc._tell_kernel
        kc._tell_kernel = told.extend  # type: ignore[assignment]
        try:
            cache.changed({5, 6})
            await cache._take_back()
        finally:
            kc._tell_kernel = real

    trio.run(main)
    assert told == [(6, [(1, b"chmodded")])]
    assert cache.holder(1, b"same") == 5 and cache.holder(1, b"chmodded") is None


def test_own_creates_in_a_directory_leave_nothing_to_take_back() -> None:
    """A create by this client reports the directory's attributes before and after. When
    the kernel held exactly the former, the create's own notice finds nothing to take back;
    when anything else changed the directory, before or after, it is still taken back."""
    now: dict[int, Attr] = {}

    async def current(inos: list[int]) -> list[Any]:
        return [now.get(ino) for ino in inos]

    async def entry(parent: int, name: bytes) -> int | None:
        return 9 if (parent, name) == (1, b"d") else None

    cache = KernelCache(lambda: 1, current, entry, lambda ino: ino, 60.0, 100)
    told: list[Any] = []
    kernel_cache._tell_kernel, real = told.extend, kernel_cache._tell_kernel  # type: ignore[assignment]

    def state(mtime: int) -> Attr:
        return Attr(9, 0o040755, mtime_ns=mtime)

    async def main() -> None:
        assert cache.keep(cache.begin(), state(1), (1, b"d"))
        for before, after, other_change, expect in [
            (1, 2, None, 0),  # only our create: nothing to take back
            (2, 3, 4, 1),  # another client changed it after our create
            (5, 6, None, 1),  # the kernel held 4, not 5: a change before ours
        ]:
            cache.own_change(OwnChange(state(before), state(after)))
            now[9] = state(other_change or after)
            cache.changed({9})
            told.clear()
            await cache._take_back()
            assert len(told) == expect, (before, after, told)

    try:
        trio.run(main)
    finally:
        kernel_cache._tell_kernel = real  # type: ignore[assignment]
