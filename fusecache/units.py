"""Human-readable sizes, the one parser every command uses: '4M', '4MiB', '10G', '512k', '1048576'.

Units are binary (K = 1024) with an optional `i`/`iB`/`B` suffix; a plain number is bytes.
"""

from __future__ import annotations

import re

_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `4GiB`, `512M`, `1.5g`, `100k`, `4096`. ValueError otherwise."""
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
    if not unit and "." in number:
        raise ValueError(f"invalid size {text!r}: a size in bytes must be a whole number")
    return int(float(number) * (1 << _SHIFTS[unit.lower()]))


def format_size(n: int) -> str:
    """A short binary size: 100B, 1.5MiB, 4.0GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90`, `30s`, `5m`, `1h`, `2d`. ValueError otherwise."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: expected a number with an optional unit "
                         "ms/s/m/h/d (e.g. 30s, 5m, 1h)")
    number, unit = match.groups()
    return float(number) * _SECONDS[(unit or "").lower()]


def format_duration(seconds: float) -> str:
    """A short duration: 45s, 5m, 2h, 3d (rounded to the largest whole unit that fits)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
