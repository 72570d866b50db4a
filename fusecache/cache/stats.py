"""Cache statistics: plain values copied from the tiers' counters (no disk scans)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier at one moment. `hits`/`misses` count lookups that reached this tier."""

    medium: str
    paths: tuple[str, ...]
    quota: int
    low: float
    high: float
    used: int  # bytes held, including blocks being written and staged blocks
    blocks: int
    hits: int = 0
    misses: int = 0
    admitted: int = 0  # blocks written into the tier (put, demotion, promotion)
    refused: int = 0  # admissions refused: no room (quota, free space, staged blocks) or tier unusable
    evictions: int = 0
    demotions: int = 0  # blocks this tier handed down to the next tier on eviction
    corrupt: int = 0  # cache files dropped for a bad checksum, length or header
    errors: int = 0  # I/O errors (ENOSPC, EIO, EROFS, ...) that made the tier skip an operation
    staged_blocks: int = 0
    staged_bytes: int = 0
    free_ratio: float = 0.0  # ssd: the tier stops growing below this share of free disk

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["paths"] = list(self.paths)
        out["hit_ratio"] = self.hit_ratio
        return out


@dataclass(frozen=True, slots=True)
class CacheStats:
    tiers: tuple[TierStats, ...]
    hits: int  # get() calls answered by some tier
    misses: int  # get() calls no tier could answer (the caller goes to the object store)

    @property
    def staged_blocks(self) -> int:
        return sum(t.staged_blocks for t in self.tiers)

    @property
    def staged_bytes(self) -> int:
        return sum(t.staged_bytes for t in self.tiers)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "tiers": [t.to_dict() for t in self.tiers],
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hit_ratio,
            "staged_blocks": self.staged_blocks,
            "staged_bytes": self.staged_bytes,
        }
