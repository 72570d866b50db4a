"""How much memory this client can have: the machine's RAM, or less if its cgroup (a
container, a systemd slice) is limited. In a pod /proc/meminfo shows the whole node, so
the cgroup limit is the figure that decides when the kernel kills the client."""

from __future__ import annotations

from dataclasses import dataclass

MEMINFO = "/proc/meminfo"
# cgroup v2, then v1; a v1 "no limit" reads as a huge number, which min() leaves out.
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    bytes: int
    source: str  # words for messages: "this machine's RAM (MemTotal)" or "the cgroup memory limit"


def mem_total(path: str = MEMINFO) -> int | None:
    """MemTotal in bytes, or None where /proc/meminfo cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    value, unit = line.split()[1:3]
                    return int(value) * (1024 if unit.lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    for path in CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def memory_limit() -> MemoryLimit | None:
    """The smaller of MemTotal and the cgroup limit; None if neither can be read."""
    total = mem_total()
    group = _cgroup_limit()
    if group is not None and (total is None or group < total):
        return MemoryLimit(group, "the memory limit of this client's cgroup (container)")
    if total is not None:
        return MemoryLimit(total, "this machine's RAM (MemTotal)")
    return None
