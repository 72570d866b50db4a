"""Helpers for cache tests: deterministic blocks, tier configs, cache files on disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

from fusecache.cache import TierConfig


def key_of(i: int, size: int) -> str:
    """A block key shaped like layout.block_key (fixed width, so file sizes are equal)."""
    return f"vol/blocks/{i % 256:02x}/{i // 1024:04d}/{i:06d}_0_{size:07d}"


def block_of(i: int, size: int) -> bytes:
    return random.Random(i * 7919 + size).randbytes(size)


def mem(quota: int, **kw: float) -> TierConfig:
    return TierConfig("mem", quota, **kw)  # type: ignore[arg-type]


def ssd(quota: int, *paths: Path, **kw: float) -> TierConfig:
    return TierConfig("ssd", quota, tuple(str(p) for p in paths), **kw)  # type: ignore[arg-type]


def files_under(path: Path, state: str = "") -> list[Path]:
    """Cache files under a cache dir (all volumes), optionally only one state (clean/staged)."""
    out = []
    for root, _dirs, files in os.walk(path):
        parts = set(Path(root).relative_to(path).parts)
        wanted = {state} if state else {"clean", "staged", "tmp"}
        if not parts & wanted:
            continue
        out.extend(Path(root) / f for f in files)
    return out


def bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))
