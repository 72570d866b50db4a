"""Block I/O of slices: the one place that turns (slice id, block index) into object keys.

Synchronous and thread-safe: the async reader/writer call it from worker threads. Every
block goes through the block cache: reads look there first and admit what they fetch;
writes admit what they upload (write-through), so a file just written reads back locally.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..errors import FsError, ObjectNotFound, ObjectStoreError
from ..layout import block_count, block_key, block_len, slice_keys
from ..object.base import ObjectStore

log = logging.getLogger(__name__)


class BlockCache(Protocol):
    """What the chunk store needs of a cache (fusecache.cache.TieredCache provides it)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def remove(self, key: str) -> None: ...


class NoCache:
    def get(self, key: str) -> bytes | None:
        return None

    def put(self, key: str, data: bytes) -> None:
        pass

    def remove(self, key: str) -> None:
        pass


class ChunkStore:
    def __init__(self, store: ObjectStore, volume: str, block_size: int, cache: BlockCache | None = None):
        self.store = store
        self.volume = volume
        self.block_size = block_size
        self.cache: BlockCache = cache or NoCache()
        self.bytes_fetched = 0
        self.bytes_uploaded = 0

    def key(self, slice_id: int, slice_size: int, index: int) -> str:
        return block_key(self.volume, slice_id, index, block_len(slice_size, self.block_size, index))

    def load_block(self, slice_id: int, slice_size: int, index: int) -> bytes:
        """One whole block: from the cache, else from the object store (then cached).

        A missing or short object is EIO: a reader gets an error, never wrong bytes."""
        key = self.key(slice_id, slice_size, index)
        data = self.cache.get(key)
        if data is not None:
            return data
        expected = block_len(slice_size, self.block_size, index)
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            log.error("block %s is missing from the object store", key)
            raise FsError(5, f"block {key} is missing") from None
        except ObjectStoreError as exc:
            log.error("cannot read block %s: %s", key, exc)
            raise FsError(5, str(exc)) from None
        if len(data) != expected:
            log.error("block %s has %d bytes, expected %d", key, len(data), expected)
            raise FsError(5, f"block {key} is corrupt")
        self.bytes_fetched += len(data)
        self.cache.put(key, data)
        return data

    def cached_block(self, slice_id: int, slice_size: int, index: int) -> bytes | None:
        return self.cache.get(self.key(slice_id, slice_size, index))

    def upload_block(self, slice_id: int, index: int, data: bytes) -> None:
        """Store one block of a slice being written. Only a slice's last block may be
        shorter than the block size; its key carries its length."""
        key = block_key(self.volume, slice_id, index, len(data))
        try:
            self.store.put(key, data)
        except ObjectStoreError as exc:
            log.error("cannot upload block %s: %s", key, exc)
            raise FsError(5, str(exc)) from None
        self.bytes_uploaded += len(data)
        self.cache.put(key, bytes(data))

    def remove_slice(self, slice_id: int, slice_size: int) -> None:
        """Delete every block object of a slice (idempotent) and drop them from the cache."""
        for key in slice_keys(self.volume, slice_id, slice_size, self.block_size):
            self.cache.remove(key)
            self.store.delete(key)

    def blocks_of(self, slice_size: int) -> int:
        return block_count(slice_size, self.block_size)


class SmallLru:
    """A bounded in-memory block cache (used when no tiered cache is configured)."""

    def __init__(self, capacity: int) -> None:
        import threading
        from collections import OrderedDict

        self.capacity = capacity
        self.used = 0
        self._blocks: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._blocks[key] = data
            self.used += len(data)
            while self.used > self.capacity:
                _, dropped = self._blocks.popitem(last=False)
                self.used -= len(dropped)

    def remove(self, key: str) -> None:
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self.used -= len(old)
