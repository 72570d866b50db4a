"""The `ObjectStore` conformance suite: every engine must pass every `check_*` here.

Each check takes a fresh, empty store. `check_store(store)` runs them all in turn (it is
what a new engine's author calls first); the pytest module runs them one by one so a
failure names the behaviour that broke.
"""

from __future__ import annotations

import array
import hashlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from fusecache.errors import ObjectNotFound
from fusecache.object.base import ObjectStore

MiB = 1 << 20


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def check_put_get_binary(store: ObjectStore) -> None:
    for size, seed in ((0, 1), (1, 2), (4097, 3), (4 * MiB + 3, 4)):
        data = payload(size, seed)
        store.put(f"bin/{size}", data)
        got = store.get(f"bin/{size}")
        assert isinstance(got, bytes)
        assert len(got) == size
        assert digest(got) == digest(data)


def check_ranges(store: ObjectStore) -> None:
    data = payload(100_000, 5)
    store.put("r", data)
    cases = [
        (0, -1), (0, 1), (1, 10), (99_999, 1), (99_999, -1), (50_000, -1), (12_345, 54_321),
        (90_000, 20_000),  # runs past the end: clipped
        (100_000, -1), (100_000, 5), (200_000, 10),  # starts at/after the end: empty
        (10, 0),  # zero length
    ]
    for off, limit in cases:
        want = data[off:] if limit < 0 else data[off : off + limit]
        got = store.get("r", off, limit)
        assert digest(got) == digest(want), (off, limit, len(got), len(want))
    with pytest.raises(ValueError):
        store.get("r", -1)
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.get("empty", 0, 10) == b""
    assert store.get("empty", 3) == b""


def check_overwrite(store: ObjectStore) -> None:
    store.put("o", payload(3000, 6))
    new = payload(1234, 7)
    store.put("o", new)
    assert digest(store.get("o")) == digest(new)
    assert store.head("o").size == 1234
    assert [(i.key, i.size) for i in store.list("o")] == [("o", 1234)]


def check_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(ObjectNotFound):
        store.get("no/such/key", 10, 20)
    with pytest.raises(ObjectNotFound):
        store.head("nope")
    store.put("dir/child", b"x")
    with pytest.raises(ObjectNotFound):  # a key prefix is not an object
        store.get("dir")
    with pytest.raises(ObjectNotFound):
        store.head("dir")


def check_delete_idempotent(store: ObjectStore) -> None:
    store.put("d/1", b"one")
    store.put("d/2", b"two")
    store.delete("d/1")
    store.delete("d/1")  # again: no error
    store.delete("never/was")
    with pytest.raises(ObjectNotFound):
        store.get("d/1")
    with pytest.raises(ObjectNotFound):
        store.head("d/1")
    assert store.get("d/2") == b"two"
    assert [i.key for i in store.list("d/")] == ["d/2"]
    store.put("d/1", b"back")  # a deleted key can be written again
    assert store.get("d/1") == b"back"


def check_head(store: ObjectStore) -> None:
    before = time.time()
    store.put("h/x", payload(777, 8))
    info = store.head("h/x")
    assert info.key == "h/x"
    assert info.size == 777
    # Servers may keep whole seconds only; the clock is shared with the local server.
    assert before - 5 <= info.mtime <= time.time() + 5
    listed = store.list("h/")[0]
    assert (listed.key, listed.size) == ("h/x", 777)
    assert abs(listed.mtime - info.mtime) < 2


# Keys chosen so that per-"directory" order and byte order disagree: "a.b" < "a/b" < "a0".
# No key is also the "directory" of another ("b" and "b/x"): file-backed servers (rclone,
# MinIO in fs mode, LocalStore) cannot hold both, and fusecache's key layout never needs it.
ORDER_KEYS = ["a-", "a.b", "a/b", "a/c/d", "a/c/e", "a/ca", "a0", "ab", "b.", "b/x/y/z", "ba", "c.txt"]


def check_list_order_and_prefix(store: ObjectStore) -> None:
    for key in reversed(ORDER_KEYS):  # written out of order on purpose
        store.put(key, key.encode() * 3)
    everything = store.list()
    assert [i.key for i in everything] == sorted(ORDER_KEYS)
    assert [i.size for i in everything] == [3 * len(k) for k in sorted(ORDER_KEYS)]
    for prefix in ("", "a", "a/", "a/c", "a/c/", "b", "b/x/", "c", "zzz", "a/c/d"):
        want = [k for k in sorted(ORDER_KEYS) if k.startswith(prefix)]
        assert [i.key for i in store.list(prefix)] == want, prefix


def check_list_start_after(store: ObjectStore) -> None:
    for key in ORDER_KEYS:
        store.put(key, b"v")
    ordered = sorted(ORDER_KEYS)
    markers = ["", "a", "a-", "a.b", "a/", "a/c", "a/c/d", "a/c/z", "a0", "b", "b/x", "b/x/y/z", "c.txt"]
    markers.append("zzz")
    for marker in markers:
        want = [k for k in ordered if k > marker]
        assert [i.key for i in store.list("", marker)] == want, marker
        want_a = [k for k in want if k.startswith("a/")]
        assert [i.key for i in store.list("a/", marker)] == want_a, marker


def check_list_limit_and_paging(store: ObjectStore) -> None:
    keys = [f"p/{i:04d}" for i in range(37)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("q/outside", b"x")  # must not leak into the prefix listing
    assert [i.key for i in store.list("p/", limit=5)] == keys[:5]
    assert store.list("p/", limit=0) == []
    seen: list[str] = []
    marker = ""
    while True:
        page = store.list("p/", marker, 10)
        assert len(page) <= 10
        seen += [i.key for i in page]
        if len(page) < 10:
            break
        marker = page[-1].key
    assert seen == keys
    assert [i.key for i in store.list_all("p/")] == keys
    assert [i.key for i in store.list("p/", limit=1000)] == keys


def check_list_all_past_one_page(store: ObjectStore) -> None:
    """`list_all` fetches pages of 1000; 1100 keys cross a page boundary."""
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b""), keys))
    assert [i.key for i in store.list_all("many/")] == keys
    assert len(store.list("many/")) == 1000


def check_memoryview_input(store: ObjectStore) -> None:
    base = bytearray(payload(2 * MiB, 9))
    views: dict[str, memoryview] = {
        "whole-bytearray": memoryview(base),
        "slice": memoryview(base)[12345 : MiB + 7],
        "whole-bytes": memoryview(bytes(base)),
        "uint32": memoryview(array.array("I", range(1000))),
    }
    for name, view in views.items():
        expected = view.tobytes()
        store.put(f"mv/{name}", view)
        assert digest(store.get(f"mv/{name}")) == digest(expected), name
    store.put("mv/bytearray", base)
    assert digest(store.get("mv/bytearray")) == digest(base)


def check_odd_key_names(store: ObjectStore) -> None:
    keys = ["sp ace/x", "plus+sign", "per%25cent", "uni/ünïcødé", "tilde~", "eq=amp&", "dots...x"]
    for key in keys:
        store.put(key, key.encode())
    for key in keys:
        assert store.get(key) == key.encode(), key
    assert [i.key for i in store.list()] == sorted(keys)


def check_concurrent(store: ObjectStore) -> None:
    """16 threads put and get distinct objects at once, every one read back whole.

    Overwrites racing reads of one key are not checked: fusecache never overwrites an
    object (block keys carry a fresh slice id), and `rclone serve s3` on a local directory
    can hand out a half-written file while a PUT of the same key is in progress."""
    threads = 16
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        try:
            start.wait()
            rng = random.Random(n)
            for j in range(6):
                data = rng.randbytes(rng.randrange(1, 400_000))
                store.put(f"c/{n}/{j}", data)
                assert digest(store.get(f"c/{n}/{j}")) == digest(data)
        except BaseException as e:
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]
    assert len(store.list("c/")) == threads * 6


def check_list_level(store: ObjectStore) -> None:
    """One level: objects without a further "/" and each deeper prefix once, in key order
    (import walks the top levels with it, and the parallel listers take the prefixes)."""
    for key in ("lv/a", "lv/b.x", "lv/b/c", "lv/b/d/e", "lv/b/d/f", "lv/c/x", "lv/ü/1", "lvz"):
        store.put(key, key.encode())

    def level(prefix: str) -> list[str]:
        return [item if isinstance(item, str) else item.key for item in store.list_level(prefix)]

    assert level("lv/") == ["lv/a", "lv/b.x", "lv/b/", "lv/c/", "lv/ü/"]
    assert level("lv/b/") == ["lv/b/c", "lv/b/d/"]
    assert level("lv/b/d/") == ["lv/b/d/e", "lv/b/d/f"]
    assert level("lv/none/") == []
    sizes = {item.key: item.size for item in store.list_level("lv/b/") if not isinstance(item, str)}
    assert sizes == {"lv/b/c": len(b"lv/b/c")}


CHECKS: list[Callable[[ObjectStore], None]] = [
    check_put_get_binary,
    check_ranges,
    check_overwrite,
    check_missing_key,
    check_delete_idempotent,
    check_head,
    check_list_order_and_prefix,
    check_list_start_after,
    check_list_limit_and_paging,
    check_list_all_past_one_page,
    check_list_level,
    check_memoryview_input,
    check_odd_key_names,
    check_concurrent,
]


def check_store(make_store: Callable[[], ObjectStore]) -> None:
    """Run every check, each on a fresh empty store from `make_store`."""
    for check in CHECKS:
        store = make_store()
        try:
            check(store)
        finally:
            store.close()


def clear(store: ObjectStore) -> None:
    for info in list(store.list_all()):
        store.delete(info.key)

