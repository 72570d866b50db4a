"""Changing a volume's settings after format (`fusecache config`), and finding directories
by path for `fusecache quota`.

The settings are one JSON value (`{P}setting`); capacity and the inode limit are also in
`{P}counters`, where the write and create scripts read them. Both change in one script,
and only if the settings are still the ones the change was computed from, so two config
runs or a config beside a format never lose one another's change.

How each setting reaches live clients:
- capacity, inodes: at once (every write and create reads the counters);
- trash days, garbage delay: within one heartbeat (10 s), which carries the settings;
- credentials and the bucket: at the next mount (a client keeps its store connection).
"""

from __future__ import annotations

import errno
from dataclasses import asdict

from ..errors import FsError, MetaError
from ..types import ROOT_INO, VolumeSettings
from .redis import RedisMeta

_UPDATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'capacity', ARGV[3], 'maxinodes', ARGV[4])
return 1
"""

LIVE = {"capacity": "now", "inodes": "now", "trash_days": "within 10 s", "garbage_delay": "within 10 s"}


def raw_settings(meta: RedisMeta) -> bytes:
    raw = meta._call(meta._r.get, meta._setting)
    if raw is None:
        raise MetaError(f"volume not formatted at {meta._name}: run 'fusecache format' first")
    return raw  # type: ignore[no-any-return]


def update_settings(meta: RedisMeta, old_raw: bytes, new: VolumeSettings) -> None:
    """Write `new` if the stored settings are still `old_raw`; MetaError if they changed."""
    script = meta._r.register_script(_UPDATE)
    done = meta._call(lambda: script(keys=[meta._setting, meta._counters],
                                     args=[old_raw, new.to_json(), new.capacity, new.inodes]))
    if not done:
        raise MetaError("the volume's settings changed while config ran; run it again")


def changes(old: VolumeSettings, new: VolumeSettings) -> list[tuple[str, object, object]]:
    """(field, old value, new value) of every setting that differs, secrets masked."""
    shown_old, shown_new = old.masked(), new.masked()
    before, after = asdict(old), asdict(new)
    return [(name, shown_old[name], shown_new[name]) for name in after if before[name] != after[name]]


def used(meta: RedisMeta) -> tuple[int, int]:
    """The volume's bytes and inodes in use."""
    usage = meta.statfs()
    return max(0, usage.total_bytes - usage.avail_bytes), usage.used_inodes


def resolve_dir(meta: RedisMeta, path: str) -> int:
    """The inode of a directory of the volume given by its path from the volume's root."""
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        try:
            attr = meta.lookup(ino, part.encode())
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                raise FsError(errno.ENOENT, f"no directory {path} in the volume") from None
            raise
        ino = attr.ino
    if not meta.getattr(ino).is_dir:
        raise FsError(errno.ENOTDIR, f"{path} is not a directory")
    return ino


def path_of(meta: RedisMeta, ino: int) -> str:
    """A directory's path from the volume's root (directories have one parent)."""
    parts: list[str] = []
    seen = 0
    while ino != ROOT_INO and seen < 4096:
        parent = meta.getattr(ino).parent
        name = next((e.name for e in meta.readdir(parent) if e.attr.ino == ino), None)
        if name is None:
            return f"(inode {ino}, not in the tree)"
        parts.append(name.decode(errors="replace"))
        ino, seen = parent, seen + 1
    return "/" + "/".join(reversed(parts))
