"""Block I/O of slices: the one place that turns (slice id, block index) into object keys.

Synchronous and thread-safe: the async reader/writer call it from worker threads. Every
block goes through the block cache (`fusecache.cache.TieredCache`):

- reads look there first (MEM, then SSD tiers) and admit what they fetch from the store;
- writes, by default, PUT the block and then admit it (write-through), so a file just
  written reads back locally;
- with `writeback`, a block is staged durably on an SSD tier instead and `upload_block`
  returns at once; `writeback.Uploader` uploads it in the background (docs/cache.md).

The cache is an accelerator only: any failure inside it is logged and treated as a miss (or
as a refused admission), never passed to a reader or writer.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import trio
import xxhash

from ..errors import FsError, ObjectNotFound, ObjectStoreError
from ..layout import (
    block_count,
    block_key,
    block_len,
    external_block_key,
    external_id,
    is_external,
    parse_external_key,
    slice_keys,
)
from ..object.base import ObjectStore
from .writeback import Uploader

if TYPE_CHECKING:
    from .external import ExternalReader

Buffer = bytes | bytearray | memoryview

log = logging.getLogger(__name__)

# A block committed by a writeback client on another node may not be uploaded yet: a missing
# object is retried for this long before the read fails with EIO.
MISSING_WAIT = 10.0
KEYS_KEPT = 8192  # block keys remembered (ChunkStore.key)


class BlockMissing(FsError):
    """A block's object is not in the store. The slice list that named it may be stale
    (another client compacted or truncated the chunk): re-read it before reporting EIO."""

    def __init__(self, key: str) -> None:
        super().__init__(errno.EIO, f"block {key} is missing")
        self.key = key


def block_hash(data: Buffer) -> int:
    """The checksum kept in metadata for every block (xxh3-64). Part of the stored format,
    so deliberately not the cache's file checksum (cache/blockfile.py), which may change."""
    return xxhash.xxh3_64_intdigest(data)


class BlockCache(Protocol):
    """What the chunk store needs of a cache (fusecache.cache.TieredCache provides it)."""

    @property
    def can_stage(self) -> bool: ...

    def get(self, key: str) -> bytes | None: ...

    def get_range(self, key: str, offset: int, length: int) -> Buffer | None: ...

    def get_range_nowait(self, key: str, offset: int, length: int) -> Buffer | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def contains(self, key: str) -> str | None: ...

    def count_miss(self) -> None: ...

    def remove(self, key: str) -> None: ...

    def evict(self, keys: Iterable[str]) -> int: ...

    def stage(self, key: str, data: bytes) -> bool: ...

    def uploaded(self, key: str) -> None: ...

    def read_staged(self, key: str) -> bytes | None: ...

    def is_staged(self, key: str) -> bool: ...

    def pending_staged(self) -> list[str]: ...

    def stats(self) -> Any: ...  # CacheStats

    def close(self) -> None: ...


class StoreCounters:
    """Object store traffic of this client (thread-safe counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.gets = self.get_bytes = self.puts = self.put_bytes = 0
        self.get_errors = self.put_errors = 0
        self.loop_gets = 0  # of `gets`, those made on the event loop (fetch_async)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"gets": self.gets, "get_bytes": self.get_bytes, "puts": self.puts,
                    "put_bytes": self.put_bytes, "get_errors": self.get_errors,
                    "put_errors": self.put_errors, "loop_gets": self.loop_gets}


def _block_length(key: str) -> int:
    """The length a block key carries in its name (layout.block_key), 0 if unparseable."""
    try:
        return int(key.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return 0


class ChunkStore:
    def __init__(self, store: ObjectStore, volume: str, block_size: int, cache: BlockCache | None = None,
                 *, writeback: bool = False, upload_threads: int = 8, missing_wait: float = MISSING_WAIT) -> None:
        self.store = store
        self.volume = volume
        self.block_size = block_size
        self.cache = cache
        self.writeback = writeback and cache is not None and cache.can_stage
        self.missing_wait = missing_wait
        self.counters = StoreCounters()
        self.uploader: Uploader | None = None
        if cache is not None and cache.can_stage:
            # Also without --writeback: staged blocks left by an earlier writeback mount
            # must still be uploaded.
            self.uploader = Uploader(self._put_object, self.store.delete, cache, threads=upload_threads)
        self._cache_failures: set[str] = set()
        # Reads of imported data (external slices), set up by the mount when the volume has
        # any; without it such blocks are EIO.
        self.external: ExternalReader | None = None
        self._external_limiter = trio.CapacityLimiter(32)
        # Keys of recently named blocks: a random reader names the same few blocks again
        # and again, and formatting a key costs more than finding it.
        self._keys: dict[tuple[int, int, int], str] = {}

    # ----------------------------------------------------------------- keys

    def key(self, slice_id: int, slice_size: int, index: int) -> str:
        where = (slice_id, slice_size, index)
        key = self._keys.get(where)
        if key is None:
            length = block_len(slice_size, self.block_size, index)
            key = (external_block_key if is_external(slice_id) else block_key)(self.volume, slice_id, index, length)
            if len(self._keys) >= KEYS_KEPT:
                self._keys.clear()
            self._keys[where] = key
        return key

    def blocks_of(self, slice_size: int) -> int:
        return block_count(slice_size, self.block_size)

    # ----------------------------------------------------------------- reads

    def load_block(self, slice_id: int, slice_size: int, index: int, expected_hash: int = 0,
                   wait_missing: bool = True, look_in_cache: bool = True) -> bytes:
        """One whole block: from the cache, else from the object store (then cached).

        Bytes from the store must match `expected_hash` (the checksum metadata recorded at
        upload; 0: none recorded). A missing, short or corrupt object is EIO (BlockMissing
        when missing): a reader gets an error, never wrong bytes, and nothing is cached.
        `wait_missing`: wait up to `missing_wait` for a missing object first (a writeback
        client may not have uploaded it yet). `look_in_cache=False` (warmup, which has just
        seen the cache without it) goes to the store at once, and the cache's hit ratio does
        not count a miss for it."""
        key = self.key(slice_id, slice_size, index)
        data = self._cache_call("get", key) if look_in_cache else None
        if data is not None:
            return data
        data = self._fetch(key, block_len(slice_size, self.block_size, index), expected_hash, wait_missing)
        self._cache_call("put", key, data)
        return data

    def load_range(self, slice_id: int, slice_size: int, index: int, expected_hash: int, offset: int,
                   length: int, wait_missing: bool = True) -> tuple[Buffer, bytes | None]:
        """Bytes [offset, offset+length) of a block: a ranged read of the cache if it has
        the block, else the whole block from the store (checked and cached as in
        load_block). Returns (the range, the whole block if it was fetched, else None)."""
        key = self.key(slice_id, slice_size, index)
        data = self._cache_call("get_range", key, offset, length)
        if data is not None:
            return data, None
        whole = self._fetch(key, block_len(slice_size, self.block_size, index), expected_hash, wait_missing)
        self._cache_call("put", key, whole)
        return memoryview(whole)[offset : offset + length], whole

    def try_range(self, slice_id: int, slice_size: int, index: int, offset: int, length: int) -> Buffer | None:
        """A block range if the cache can give it without waiting for a disk (safe on the
        event loop: no store request, no disk wait); None means "use load_range on a
        thread". length -1: to the block's end."""
        if length < 0:
            length = block_len(slice_size, self.block_size, index) - offset
        return self._cache_call("get_range_nowait", self.key(slice_id, slice_size, index), offset, length)

    def is_cached(self, slice_id: int, slice_size: int, index: int) -> bool:
        return self._cache_call("contains", self.key(slice_id, slice_size, index)) is not None

    def evict(self, keys: list[str]) -> int:
        """Drop clean cached copies of these blocks (staged blocks stay)."""
        return self._cache_call("evict", keys) or 0

    def _fetch(self, key: str, expected: int, expected_hash: int, wait_missing: bool) -> bytes:
        ext = parse_external_key(key)
        if ext is not None:
            return self._checked(key, self._fetch_external(key, *ext), expected, expected_hash)
        deadline = time.monotonic() + (self.missing_wait if wait_missing else 0.0)
        delay = 0.1
        while True:
            try:
                data = self.store.get(key)
                break
            except ObjectNotFound:
                self._still_missing(key, delay, deadline, wait_missing)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except ObjectStoreError as exc:
                raise self._unreadable(key, exc) from None
        return self._checked(key, data, expected, expected_hash)

    def _fetch_external(self, key: str, objno: int, chunk: int, index: int, length: int) -> bytes:
        if self.external is None:
            self.counters.add(get_errors=1)
            log.error("block %s is imported data, which this client cannot read", key)
            raise FsError(errno.EIO, "imported data without a reader")
        try:
            return self.external.read(external_id(objno, chunk), index, length, self.block_size)
        except FsError:
            self.counters.add(get_errors=1)
            raise

    @property
    def async_fetch(self) -> bool:
        """Whether `fetch_async` can fetch blocks on the event loop (the store's `aget`)."""
        return self.store.async_get

    async def fetch_async(self, slice_id: int, slice_size: int, index: int, expected_hash: int = 0,
                          wait_missing: bool = True) -> bytes:
        """One block from the object store, on the event loop, checked as in load_block.
        Not cached: `admit` it from a thread (the cache writes to disk)."""
        key = self.key(slice_id, slice_size, index)
        if is_external(slice_id):  # a registry lookup and another store: on a thread
            length = block_len(slice_size, self.block_size, index)
            data = await trio.to_thread.run_sync(self._fetch, key, length, expected_hash, wait_missing,
                                                 limiter=self._external_limiter)
            self.counters.add(loop_gets=1)
            return data
        deadline = time.monotonic() + (self.missing_wait if wait_missing else 0.0)
        delay = 0.1
        while True:
            try:
                data = await self.store.aget(key)
                break
            except ObjectNotFound:
                self._still_missing(key, delay, deadline, wait_missing)
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except ObjectStoreError as exc:
                raise self._unreadable(key, exc) from None
        data = self._checked(key, data, block_len(slice_size, self.block_size, index), expected_hash)
        self.counters.add(loop_gets=1)
        return data

    def count_miss(self) -> None:
        """A reader's block that was not in the cache (when it is fetched without asking it)."""
        self._cache_call("count_miss")

    def admit(self, slice_id: int, slice_size: int, index: int, data: bytes) -> None:
        """Put a block fetched by fetch_async into the cache."""
        self._cache_call("put", self.key(slice_id, slice_size, index), data)

    def _still_missing(self, key: str, delay: float, deadline: float, wait_missing: bool) -> None:
        """A missing object: BlockMissing once waiting `delay` more would pass the deadline."""
        if time.monotonic() + delay > deadline:
            self.counters.add(get_errors=1)
            if wait_missing:
                log.error("block %s is missing from the object store", key)
            raise BlockMissing(key) from None
        # Perhaps staged by a writeback client and not uploaded yet: wait a little.
        log.info("block %s is not in the object store yet; retrying", key)

    def _unreadable(self, key: str, exc: ObjectStoreError) -> FsError:
        self.counters.add(get_errors=1)
        log.error("cannot read block %s: %s", key, exc)
        return FsError(errno.EIO, str(exc))

    def _checked(self, key: str, data: bytes, expected: int, expected_hash: int) -> bytes:
        if len(data) != expected:
            self.counters.add(get_errors=1)
            log.error("block %s has %d bytes, expected %d", key, len(data), expected)
            raise FsError(errno.EIO, f"block {key} is corrupt")
        if expected_hash and block_hash(data) != expected_hash:
            self.counters.add(get_errors=1)
            log.error("block %s is corrupt: its checksum does not match the one recorded at upload", key)
            raise FsError(errno.EIO, f"block {key} is corrupt")
        self.counters.add(gets=1, get_bytes=len(data))
        return data

    # ----------------------------------------------------------------- writes

    def upload_block(self, slice_id: int, index: int, data: bytes, *, durable: bool = False) -> int:
        """Store one block of a slice being written; returns its checksum (block_hash),
        which the slice's commit records. Only a slice's last block may be shorter than the
        block size; its key carries its length.

        Write-through: returns once the store has the block. Writeback: returns once the
        block is staged durably on disk (its upload follows in the background); if it cannot
        be staged, it is uploaded synchronously as in write-through. `durable` forces
        write-through: data rewritten from existing slices (compaction) must never live on
        one node's disk only."""
        digest, uncached = self.store_block(slice_id, index, data, durable=durable)
        if uncached:
            self.keep_written(slice_id, index, data)
        return digest

    def store_block(self, slice_id: int, index: int, data: bytes, *, durable: bool = False) -> tuple[int, bool]:
        """`upload_block` without its last step: returns the checksum and whether the block
        still needs `keep_written` (a write-through block: its clean copy is not cached
        yet), so that a writer's commit need not wait for the cache."""
        digest = block_hash(data)
        key = block_key(self.volume, slice_id, index, len(data))
        if not durable and self.writeback and self.uploader is not None and self._cache_call("stage", key, data):
            self.uploader.submit(key, len(data))
            return digest, False
        try:
            self._put_object(key, data)
        except ObjectStoreError as exc:
            log.error("cannot upload block %s: %s", key, exc)
            raise FsError(errno.EIO, str(exc)) from None
        return digest, self.cache is not None

    def keep_written(self, slice_id: int, index: int, data: bytes) -> None:
        """Cache the clean copy of a block `store_block` stored: the bytes the store has,
        under a key no other block has, so when it lands does not matter."""
        self._cache_call("put", block_key(self.volume, slice_id, index, len(data)), data)

    def _put_object(self, key: str, data: bytes) -> None:
        try:
            self.store.put(key, data)
        except ObjectStoreError:
            self.counters.add(put_errors=1)
            raise
        self.counters.add(puts=1, put_bytes=len(data))

    def resume_uploads(self) -> int:
        """Queue the staged blocks an earlier process left behind (crash, or an unmount that
        could not reach the store). Returns how many."""
        if self.uploader is None or self.cache is None:
            return 0
        keys = self._cache_call("pending_staged") or []
        for key in keys:
            self.uploader.submit(key, _block_length(key))
        if keys:
            log.warning("uploading %d staged blocks left by an earlier mount", len(keys))
        return len(keys)

    def cache_stats(self) -> dict[str, Any] | None:
        stats = self._cache_call("stats")
        return stats.to_dict() if stats is not None else None

    def pending_uploads(self) -> tuple[int, int]:
        return self.uploader.pending() if self.uploader is not None else (0, 0)

    # ----------------------------------------------------------------- removal

    def remove_slice(self, slice_id: int, slice_size: int) -> None:
        """Delete every block object of a slice (idempotent) and drop them from the cache."""
        if is_external(slice_id):
            return  # imported data: its objects are the source's, never ours to delete
        for key in slice_keys(self.volume, slice_id, slice_size, self.block_size):
            if self.uploader is not None:
                self.uploader.cancel(key)
            self._cache_call("remove", key)
            self.store.delete(key)

    # ----------------------------------------------------------------- life cycle

    def close(self, drain_stall: float = 60.0) -> int:
        """Finish background uploads (until the store stops making progress for
        `drain_stall` seconds), then close the cache. Returns blocks left staged."""
        left = 0
        if self.uploader is not None:
            left = self.uploader.drain(drain_stall)
            self.uploader.close()
            if left:
                log.warning("%d staged blocks could not be uploaded; the next mount will upload them", left)
        self._cache_call("close")
        return left

    # ----------------------------------------------------------------- helpers

    def _cache_call(self, method: str, *args: Any) -> Any:
        """Call the cache; a failure there is logged (once per method) and ignored."""
        if self.cache is None:
            return None
        try:
            return getattr(self.cache, method)(*args)
        except Exception:
            if method not in self._cache_failures:
                self._cache_failures.add(method)
                log.exception("block cache %s failed; going on without the cache for this block", method)
            return None
