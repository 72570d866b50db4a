"""Cache tier configuration: the `TierConfig` value and the CLI spec parsers.

A tier spec is `MEDIUM:[PATHS:]SIZE`:

    mem:4GiB                  a memory tier of 4 GiB
    ssd:/var/cache/fc:100GiB  a disk tier in one directory
    ssd:/a,/b:10GiB           one disk tier spread over two directories (by hash of key)

Sizes are binary (K = 1024) with an optional `i`/`iB`/`B` suffix, or plain bytes.
The fields mirror Fluid's `tieredstore.levels` (mediumtype, path, quota, low, high).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusecache.units import format_size, parse_size

MEDIUMS = ("mem", "ssd")
__all__ = ["MEDIUMS", "TierConfig", "format_size", "parse_cache_spec", "parse_size"]


@dataclass(frozen=True, slots=True)
class TierConfig:
    """One cache tier.

    `quota` caps the bytes the tier holds. When an admission would take usage above
    `high * quota`, clean blocks are evicted until usage is at most `low * quota`.
    `free_ratio` (ssd only): the tier also stops growing when its filesystem's free space
    would fall below this fraction of the filesystem.
    """

    medium: str
    quota: int
    paths: tuple[str, ...] = ()
    low: float = 0.7
    high: float = 0.95
    free_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.medium not in MEDIUMS:
            raise ValueError(f"unknown cache medium {self.medium!r}: expected one of {', '.join(MEDIUMS)}")
        if self.quota <= 0:
            raise ValueError(f"cache quota must be positive, got {self.quota}")
        if not 0.0 < self.low < self.high <= 1.0:
            raise ValueError(f"cache watermarks must satisfy 0 < low < high <= 1, got low={self.low} "
                             f"high={self.high}")
        if not 0.0 <= self.free_ratio < 1.0:
            raise ValueError(f"cache free ratio must be in [0, 1), got {self.free_ratio}")
        if self.medium == "mem" and self.paths:
            raise ValueError("a mem cache tier takes no paths")
        if self.medium == "ssd":
            if not self.paths:
                raise ValueError("an ssd cache tier needs at least one directory")
            if any(not p for p in self.paths):
                raise ValueError(f"empty directory in ssd cache paths {list(self.paths)}")
            if len(set(self.paths)) != len(self.paths):
                raise ValueError(f"duplicate directory in ssd cache paths {list(self.paths)}")


def parse_cache_spec(spec: str, *, low: float = 0.7, high: float = 0.95,
                     free_ratio: float = 0.1) -> TierConfig:
    """Parse `mem:4GiB`, `ssd:/var/cache/fc:100GiB` or `ssd:/a,/b:10GiB` into a TierConfig."""
    medium, sep, rest = spec.partition(":")
    medium = medium.strip().lower()
    if not sep or not rest:
        raise ValueError(f"invalid cache spec {spec!r}: expected mem:SIZE or ssd:DIR[,DIR...]:SIZE")
    if medium not in MEDIUMS:
        raise ValueError(f"invalid cache spec {spec!r}: unknown medium {medium!r} "
                         f"(expected one of {', '.join(MEDIUMS)})")
    if medium == "mem":
        if ":" in rest:
            raise ValueError(f"invalid cache spec {spec!r}: a mem tier takes only a size (mem:4GiB)")
        paths: tuple[str, ...] = ()
        size_text = rest
    else:
        # rpartition: a directory may itself contain ':'; the size never does.
        path_text, sep, size_text = rest.rpartition(":")
        if not sep or not path_text:
            raise ValueError(f"invalid cache spec {spec!r}: an ssd tier needs a directory and a size "
                             "(ssd:/var/cache/fc:100GiB)")
        paths = tuple(p.strip() for p in path_text.split(","))
        if any(not p for p in paths):
            raise ValueError(f"invalid cache spec {spec!r}: empty directory in the list")
    try:
        quota = parse_size(size_text)
    except ValueError as exc:
        raise ValueError(f"invalid cache spec {spec!r}: {exc}") from None
    try:
        return TierConfig(medium=medium, quota=quota, paths=paths, low=low, high=high,
                          free_ratio=free_ratio)
    except ValueError as exc:
        raise ValueError(f"invalid cache spec {spec!r}: {exc}") from None
