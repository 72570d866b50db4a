"""Helpers for cache tests: deterministic blocks, real tmpfs mounts (root only)."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs filesystems (a real, separately full-able filesystem); always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def make(options: str = "size=8m") -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)
