"""The tiered block cache: an optional MEM tier over zero or more SSD tiers.

Synchronous and thread-safe: the chunk store calls it from many worker threads at once
(never from the trio loop). Reads go MEM → SSD tiers; admissions go to the top tier, and
blocks the MEM tier evicts are demoted (by a background thread, see demote.py) to the
first SSD tier that takes them. Writeback
staging, the states of a block and the crash rules are described in docs/cache.md.

Nothing here raises because a cache disk is full or failing: that tier is skipped for a
while and the caller falls back to the object store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from fusecache.cache.blockfile import Buffer
from fusecache.cache.config import TierConfig
from fusecache.cache.demote import Demoter
from fusecache.cache.disk import DiskTier
from fusecache.cache.mem import MemTier
from fusecache.cache.policy import PROTECTED_SHARE
from fusecache.cache.stats import CacheStats

log = logging.getLogger(__name__)

DEMOTE_QUEUE_MIN = 64 << 20  # bytes of MEM evictions that may wait for the disk


def check_volume_id(volume_id: str) -> None:
    """A volume id becomes one directory name under every cache directory."""
    if (not volume_id or volume_id in (".", "..") or "/" in volume_id or "\0" in volume_id
            or len(volume_id) > 200):
        raise ValueError(f"volume id {volume_id!r} cannot name a cache directory")


def _demotion_writer(mem: MemTier | None, disks: list[DiskTier]) -> Callable[[str, bytes], None]:
    def demote(key: str, data: bytes) -> None:
        """Hand a block evicted from MEM down to the SSD tiers (it is not dropped)."""
        if any(disk.contains(key) for disk in disks):
            return  # a promoted block: its SSD copy is still there
        if any(disk.put(key, data) for disk in disks) and mem is not None:
            mem.note_demoted(1)

    return demote


def _demotion_undo(disks: list[DiskTier]) -> Callable[[str], None]:
    def undo(key: str) -> None:
        for disk in disks:
            disk.remove(key)

    return undo


class TieredCache:
    """Block cache over `tiers` for one volume.

    Construction rebuilds the SSD index from disk (blocking: it lists the cache
    directories), so blocks cached by an earlier process are found again.
    `promote`: also admit SSD hits to the MEM tier (no copy, and no rewrite when MEM evicts
    them again). Off by default: the kernel page cache already keeps hot cache files in
    memory, and promotion made scans of more data than MEM holds ~2.5x slower (see
    docs/cache.md).
    `protected_share`: share of each tier's quota for blocks read more than once (see
    policy.py); 0 gives plain LRU.
    """

    def __init__(self, tiers: Sequence[TierConfig], volume_id: str, *, checksum: bool = True,
                 promote: bool = False, protected_share: float = PROTECTED_SHARE,
                 demote_limit: int | None = None) -> None:
        check_volume_id(volume_id)
        mems = [t for t in tiers if t.medium == "mem"]
        if len(mems) > 1:
            raise ValueError("at most one mem cache tier can be configured")
        self.volume_id = volume_id
        self._mem = MemTier(mems[0], protected_share=protected_share) if mems else None
        self._disks = [DiskTier(t, volume_id, verify=checksum, protected_share=protected_share)
                       for t in tiers if t.medium == "ssd"]
        self._promote = promote
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        burst = int((mems[0].high - mems[0].low) * mems[0].quota) if mems else 0
        # The writer closes over the tiers, not over self: no reference cycle, so a dropped
        # cache is freed (and its directory locks released) at once.
        disks = self._disks
        if demote_limit is None:
            demote_limit = max(burst, DEMOTE_QUEUE_MIN)
        self._demoter = Demoter(_demotion_writer(self._mem, disks), _demotion_undo(disks), limit=demote_limit)
        for disk in self._disks:
            disk.load()

    @classmethod
    def open(cls, tiers: Sequence[TierConfig], volume_id: str, *, checksum: bool = True,
             promote: bool = False, protected_share: float = PROTECTED_SHARE,
             demote_limit: int | None = None) -> TieredCache:
        """Open the cache of a volume, finding the blocks earlier processes left on disk.
        `demote_limit`: bytes of MEM evictions that may wait for the disk (a memory bound)."""
        return cls(tiers, volume_id, checksum=checksum, promote=promote, protected_share=protected_share,
                   demote_limit=demote_limit)

    @property
    def can_stage(self) -> bool:
        """Whether writeback staging is possible at all (there is an SSD tier)."""
        return bool(self._disks)

    # ----------------------------------------------------------------- reads

    def get(self, key: str) -> bytes | None:
        """The block, or None if no tier has a valid copy (never bad data)."""
        data = self._lookup(key)
        self._count(data is not None)
        return data

    def get_range(self, key: str, offset: int, length: int) -> Buffer | None:
        """Bytes [offset, offset+length) of a block, or None if no tier has a valid copy.
        A MEM hit is a view of the stored block (no copy); an SSD hit reads and verifies
        only the pages the range lies in."""
        data = self._range(key, offset, length, nowait=False)
        self._count(data is not None)
        return data

    def get_range_nowait(self, key: str, offset: int, length: int) -> Buffer | None:
        """Like get_range, but only what needs no disk wait: MEM, or SSD pages already in
        the page cache of a file held open. None means "ask get_range on a thread"; it is
        not counted as a miss. Safe to call from an event loop."""
        data = self._range(key, offset, length, nowait=True)
        if data is not None:
            self._count(True)
        return data

    def _range(self, key: str, offset: int, length: int, *, nowait: bool) -> Buffer | None:
        if self._mem is not None:
            whole = self._mem.get(key)
            if whole is None:
                whole = self._demoter.get(key)
            if whole is not None:
                return memoryview(whole)[offset : offset + length]
        for disk in self._disks:
            data = disk.get_range_nowait(key, offset, length) if nowait else disk.get_range(key, offset, length)
            if data is not None:
                return data
        return None

    def count_miss(self) -> None:
        """A miss found without a lookup (the caller saw `contains` say no)."""
        self._count(False)

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def _lookup(self, key: str) -> bytes | None:
        if self._mem is not None:
            data = self._mem.get(key)
            if data is None:
                data = self._demoter.get(key)  # between MEM and disk
            if data is not None:
                return data
        for disk in self._disks:
            data = disk.get(key)
            if data is not None:
                if self._promote and self._mem is not None:
                    self._admit_mem(key, data)
                return data
        return None

    def contains(self, key: str) -> str | None:
        """The medium of the first tier holding the block ("mem" or "ssd"), or None."""
        if self._mem is not None and (self._mem.contains(key) or self._demoter.get(key) is not None):
            return "mem"
        for disk in self._disks:
            if disk.contains(key):
                return "ssd"
        return None

    # ----------------------------------------------------------------- writes

    def put(self, key: str, data: Buffer) -> None:
        """Admit a clean block (bytes the object store has) to the top tier that takes it."""
        if self._mem is not None and self._admit_mem(key, data):
            return
        for disk in self._disks:
            if disk.put(key, data):
                return

    def _admit_mem(self, key: str, data: Buffer) -> bool:
        assert self._mem is not None
        admitted, evicted = self._mem.put(key, data)
        if evicted and self._disks:
            self._demoter.submit(evicted)  # written by a background thread
        return admitted

    def wait_demotions(self) -> None:
        """Block until blocks evicted from MEM so far are on disk (or refused there)."""
        self._demoter.wait()

    def stage(self, key: str, data: Buffer) -> bool:
        """Write a dirty block durably to an SSD tier (fsync'ed file and directory).

        True: the block survives a crash and stays listed by `pending_staged()` until
        `uploaded(key)`; it is never evicted. False: it could not be staged (no SSD tier, no
        room, disk failing) and the caller must upload it synchronously.
        """
        return any(disk.stage(key, data) for disk in self._disks)

    def uploaded(self, key: str) -> None:
        """The store has the staged block now: it becomes an ordinary clean cached block."""
        for disk in self._disks:
            if disk.uploaded(key):
                return

    def read_staged(self, key: str) -> bytes | None:
        """A staged block's bytes, for its upload; None if it is no longer staged (uploaded
        or removed meanwhile) or its file turned out unreadable. Counts no hit."""
        for disk in self._disks:
            data = disk.read_staged(key)
            if data is not None:
                return data
        return None

    def is_staged(self, key: str) -> bool:
        """Whether the block is staged (dirty) in some tier, being written or ready."""
        return any(disk.is_staged(key) for disk in self._disks)

    def pending_staged(self) -> list[str]:
        """Keys of staged blocks not yet uploaded, including those found at start-up."""
        keys: set[str] = set()
        for disk in self._disks:
            keys.update(disk.pending_staged())
        return sorted(keys)

    # ----------------------------------------------------------------- removal

    def remove(self, key: str) -> None:
        """Forget the block in every tier and state (staged too: its slice is gone)."""
        if self._mem is not None:
            self._mem.remove(key)
        self._demoter.discard(key)
        for disk in self._disks:
            disk.remove(key)

    def evict(self, keys: Iterable[str]) -> int:
        """Drop clean copies of these blocks from every tier (staged blocks stay).
        Returns the number of copies dropped."""
        keys = list(keys)
        n = self._mem.evict(keys) if self._mem is not None else 0
        return n + sum(disk.evict(keys) for disk in self._disks)

    def evict_prefix(self, prefix: str) -> int:
        """Drop clean copies of every block whose key starts with `prefix`."""
        keys: set[str] = set(self._mem.keys_with_prefix(prefix)) if self._mem is not None else set()
        for disk in self._disks:
            keys.update(disk.keys_with_prefix(prefix))
        return self.evict(keys)

    def flush_mem(self) -> None:
        """Move every MEM block down to the SSD tiers, so a restart finds them there."""
        if self._mem is not None and self._disks:
            self._demoter.submit(self._mem.drain())
        self._demoter.wait()

    def close(self) -> None:
        """Demote what the MEM tier holds to disk, so a restart finds it, and release the
        cache directories for another process. Reads still work afterwards; writes don't."""
        self.flush_mem()
        for disk in self._disks:
            disk.close()

    def clean(self, *, force: bool = False) -> int:
        """Delete this volume's cached blocks and cache directories. Staged blocks (never
        uploaded) are kept unless `force`; returns how many were kept."""
        if self._mem is not None:
            self._mem.drain()
        kept = sum(disk.clean(force=force) for disk in self._disks)
        if kept:
            log.warning("cache of volume %s: kept %d staged blocks that were never uploaded",
                        self.volume_id, kept)
        return kept

    # ----------------------------------------------------------------- stats

    def stats(self) -> CacheStats:
        tiers = ([self._mem.stats()] if self._mem is not None else []) + [d.stats() for d in self._disks]
        with self._lock:
            return CacheStats(tiers=tuple(tiers), hits=self._hits, misses=self._misses)
