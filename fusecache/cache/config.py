"""Cache tier configuration: the `TierConfig` value and the CLI spec parsers.

A tier spec is `MEDIUM:[PATHS:]SIZE`:

    mem:4GiB                  a memory tier of 4 GiB
    ssd:/var/cache/fc:100GiB  a disk tier in one directory
    ssd:/a,/b:10GiB           one disk tier spread over two directories (by hash of key)

Sizes are binary (K = 1024) with an optional `i`/`iB`/`B` suffix, or plain bytes.
The fields mirror Fluid's `tieredstore.levels` (mediumtype, path, quota, low, high).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MEDIUMS = ("mem", "ssd")

_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `4GiB`, `512M`, `1.5g`, `100k`, `4096` (binary units)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit K/M/G/T "
                         "(e.g. 512MiB, 4G, 100GiB, 4096)")
    number, unit, suffix = match.groups()
    if suffix.lower().startswith("i") and not unit:
        raise ValueError(f"invalid size {text!r}: 'i' needs a unit before it (e.g. 4GiB)")
    value = float(number) * (1 << _UNITS[unit.lower()])
    if not unit and "." in number:
        raise ValueError(f"invalid size {text!r}: a size in bytes must be a whole number")
    return int(value)


def format_size(n: int) -> str:
    """A short human-readable binary size: 4.0GiB, 512.0MiB, 100B."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


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
