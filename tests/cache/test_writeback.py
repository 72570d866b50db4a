"""Background uploads of staged blocks (chunk/writeback.py + chunk/store.py) over a real cache
directory and a real local object store; failures are injected by a store that refuses PUTs
until told otherwise, and a PUT can be held in flight to race it against a deletion."""

from __future__ import annotations

import threading
from pathlib import Path

from fusecache.cache import TieredCache
from fusecache.chunk.store import ChunkStore
from fusecache.errors import ObjectStoreError
from fusecache.object.local import LocalStore
from tests.cache.helpers import ssd

BS = 64 << 10


class FlakyStore(LocalStore):
    """A LocalStore whose PUTs fail while `down` is set, and wait while `hold` is clear."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.down = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.entered.set()
        self.hold.wait(30)
        if self.down.is_set():
            raise ObjectStoreError("store is down")
        super().put(key, data)


def make(tmp_path: Path, store: LocalStore) -> tuple[TieredCache, ChunkStore]:
    cache = TieredCache([ssd(16 << 20, tmp_path / "cache")], "vol")
    return cache, ChunkStore(store, "vol", BS, cache, writeback=True, upload_threads=2)


def keys(store: LocalStore) -> set[str]:
    return {o.key for o in store.list_all("vol/")}


def test_staged_blocks_upload_in_background_and_turn_clean(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    cache, chunks = make(tmp_path, store)
    data = b"x" * BS
    chunks.upload_block(1, 0, data)
    key = chunks.key(1, BS, 0)
    assert chunks.close() == 0  # drained
    assert keys(store) == {key}
    assert store.get(key) == data
    assert not cache.is_staged(key) and cache.pending_staged() == []


def test_failed_uploads_are_retried_and_never_dropped(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    store.down.set()
    cache, chunks = make(tmp_path, store)
    chunks.upload_block(2, 0, b"y" * BS)
    key = chunks.key(2, BS, 0)
    assert chunks.uploader is not None
    left = chunks.uploader.drain(stall=1.5)  # the store makes no progress: give up waiting
    assert left == 1 and chunks.uploader.failed_attempts >= 1
    assert cache.is_staged(key) and cache.get(key) == b"y" * BS  # still there, still served
    store.down.clear()
    assert chunks.uploader.drain(stall=30) == 0
    assert keys(store) == {key} and not cache.is_staged(key)
    chunks.close()


def test_left_over_staged_blocks_are_uploaded_by_the_next_store(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    store.down.set()
    _cache, chunks = make(tmp_path, store)
    for i in range(3):
        chunks.upload_block(3, i, bytes([i]) * BS)
    assert chunks.close(drain_stall=0.5) == 3  # store down at exit: the blocks stay staged
    store.down.clear()
    store.hold.clear()  # PUTs wait, so the resumed uploads are still pending when counted
    cache2, chunks2 = make(tmp_path, store)
    assert chunks2.resume_uploads() == 3
    assert chunks2.pending_uploads() == (3, 3 * BS)
    store.hold.set()
    assert chunks2.close() == 0
    assert keys(store) == {chunks2.key(3, 3 * BS, i) for i in range(3)}
    assert cache2.pending_staged() == []


def test_deleted_slice_is_not_uploaded_or_is_deleted_after_its_upload(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    cache, chunks = make(tmp_path, store)
    assert chunks.uploader is not None
    # In flight when the slice is deleted: the PUT lands, then the object is deleted again.
    store.hold.clear()
    chunks.upload_block(4, 0, b"a" * BS)
    assert store.entered.wait(10)
    chunks.remove_slice(4, BS)
    store.hold.set()
    assert chunks.uploader.drain(stall=30) == 0
    assert keys(store) == set()
    # Still queued when the slice is deleted: never uploaded.
    store.down.set()
    chunks.upload_block(5, 0, b"b" * BS)
    chunks.remove_slice(5, BS)
    store.down.clear()
    assert chunks.uploader.drain(stall=30) == 0
    assert keys(store) == set() and cache.pending_staged() == []
    chunks.close()


def test_writeback_falls_back_to_synchronous_upload_when_staging_is_refused(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    cache = TieredCache([ssd(BS, tmp_path / "cache")], "vol")  # room for no staged block
    chunks = ChunkStore(store, "vol", BS, cache, writeback=True)
    chunks.upload_block(6, 0, b"c" * BS)
    assert keys(store) == {chunks.key(6, BS, 0)}  # uploaded before upload_block returned
    assert chunks.pending_uploads() == (0, 0)
    chunks.close()
