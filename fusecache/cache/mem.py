"""The memory tier: a map of key → block bytes under one short lock, evicted in SLRU order.

Blocks are immutable `bytes`, so a hit returns the stored object itself (no copy).
Eviction never drops data silently: `put` returns the evicted blocks so the tiered cache
can demote them to the next tier outside this tier's lock.
"""

from __future__ import annotations

import threading

from fusecache.cache.blockfile import Buffer
from fusecache.cache.config import TierConfig
from fusecache.cache.policy import PROTECTED_SHARE, SegmentedLRU
from fusecache.cache.stats import TierStats

Evicted = list[tuple[str, bytes]]


class MemTier:
    def __init__(self, config: TierConfig, *, protected_share: float = PROTECTED_SHARE) -> None:
        if config.medium != "mem":
            raise ValueError(f"MemTier needs a mem tier config, got {config.medium!r}")
        self.config = config
        self._lock = threading.Lock()
        self._blocks: dict[str, bytes] = {}
        self._order = SegmentedLRU(config.quota, protected_share)
        self._used = 0
        self._hits = self._misses = self._admitted = self._refused = 0
        self._evictions = self._demotions = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is None:
                self._misses += 1
                return None
            self._order.touch(key)
            self._hits += 1
            return data

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._blocks

    def put(self, key: str, data: Buffer) -> tuple[bool, Evicted]:
        """Admit a block. Returns (admitted, blocks evicted to make room, oldest first)."""
        size = len(data)
        if size > self.config.quota:
            with self._lock:
                self._refused += 1
            return False, []
        block = data if isinstance(data, bytes) else bytes(data)
        quota = self.config.quota
        evicted: Evicted = []
        with self._lock:
            if key in self._blocks:
                self._order.touch(key)
                return True, []
            if self._used + size > self.config.high * quota:
                # Crossing the high watermark: evict down to the low one in one go, so
                # eviction runs in bursts rather than on every admission.
                target = self.config.low * quota
                while self._used + size > target:
                    old_key = self._order.oldest()
                    if old_key is None:
                        break
                    evicted.append((old_key, self._pop_locked(old_key)))
                self._evictions += len(evicted)
            self._blocks[key] = block
            self._order.add(key, size)
            self._used += size
            self._admitted += 1
        return True, evicted

    def remove(self, key: str) -> bool:
        with self._lock:
            return key in self._blocks and self._pop_locked(key) is not None

    def evict(self, keys: list[str]) -> int:
        """Drop these blocks (no demotion: the caller asked for them to leave the cache)."""
        n = 0
        with self._lock:
            for key in keys:
                if key in self._blocks:
                    self._pop_locked(key)
                    n += 1
            self._evictions += n
        return n

    def keys_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._blocks if k.startswith(prefix)]

    def drain(self) -> Evicted:
        """Remove and return every block, least recently used first (flush to disk on close)."""
        with self._lock:
            out = [(k, self._blocks[k]) for k in self._order.in_eviction_order()]
            self._blocks.clear()
            self._order.clear()
            self._used = 0
        return out

    def _pop_locked(self, key: str) -> bytes:
        data = self._blocks.pop(key)
        self._order.discard(key)
        self._used -= len(data)
        return data

    def note_demoted(self, n: int) -> None:
        with self._lock:
            self._demotions += n

    def stats(self) -> TierStats:
        c = self.config
        with self._lock:
            return TierStats(
                medium=c.medium, paths=c.paths, quota=c.quota, low=c.low, high=c.high,
                used=self._used, blocks=len(self._blocks), hits=self._hits, misses=self._misses,
                admitted=self._admitted, refused=self._refused, evictions=self._evictions,
                demotions=self._demotions,
            )
