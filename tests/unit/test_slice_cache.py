"""An open file's slice lists are reused for at most their TTL: another client's compaction
frees the old slices' objects after the garbage delay, which the TTL stays well below."""

from __future__ import annotations

import time

from fusecache.types import Slice
from fusecache.vfs.handles import SliceCache

LIST = [Slice(0, 7, 10, 0, 10)]


def test_a_list_is_served_until_its_ttl_runs_out() -> None:
    cache = SliceCache(ttl=0.2)
    cache.put(3, LIST)
    assert cache.get(3) is LIST and cache.get(4) is None
    time.sleep(0.25)
    assert cache.get(3) is None, "a stale list must be read again from metadata"


def test_a_zero_ttl_caches_nothing_and_pop_clear_forget() -> None:
    off = SliceCache(ttl=0)
    off.put(0, LIST)
    assert off.get(0) is None
    cache = SliceCache(ttl=60)
    cache.put(0, LIST)
    cache.put(1, LIST)
    cache.pop(0)
    assert cache.get(0) is None and cache.get(1) is LIST
    cache.clear()
    assert cache.get(1) is None
