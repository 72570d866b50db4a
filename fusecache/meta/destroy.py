"""The Redis side of `fusecache destroy`: the destroying mark, live sessions, and deleting
every key of one volume.

Like scan.py this knows the key schema (documented in redis.py): every key of a volume
starts with its hash tag `{P}`, so SCAN MATCH `{P}*` finds exactly that volume's keys and
no other volume's in the same database (`{fc}*` does not match `{fc2}...`; the closing
brace is part of the pattern). FLUSHDB is never used.

The mark is a field of the settings (`extra["destroying"]`): every command that opens the
volume reads the settings anyway, so refusing a marked volume costs no round trip. The
settings key is deleted last, so an interrupted destroy leaves a marked volume that the
same command finishes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MetaError
from ..types import SessionInfo, VolumeSettings
from .redis import RedisMeta
from .scan import RedisScan, volume_keys

DESTROYING = "destroying"  # key in VolumeSettings.extra: when destroy began (Unix time)
BATCH = 500
PASSES = 3  # key passes before giving up on a volume some client keeps writing to

# Write the settings only if nobody changed them since we read them (a format --force or a
# config change in between must not be overwritten, nor overwrite the mark).
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True, slots=True)
class Session:
    info: SessionInfo
    age: float  # seconds since its last heartbeat (server clock)


def being_destroyed(settings: VolumeSettings) -> bool:
    return DESTROYING in settings.extra


def _raw_settings(meta: RedisMeta) -> bytes:
    raw = meta._call(meta._r.get, meta._setting)
    if raw is None:
        raise MetaError(f"no volume at {meta._name} (nothing to destroy)")
    return raw  # type: ignore[no-any-return]


def _swap(meta: RedisMeta, old: bytes, new: str) -> None:
    script = meta._r.register_script(_SWAP)
    if not meta._call(lambda: script(keys=[meta._setting], args=[old, new])):
        raise MetaError("the volume's settings changed while destroy was starting; run it again")


def mark(meta: RedisMeta) -> tuple[VolumeSettings, bool]:
    """Mark the volume as being destroyed; (its settings, whether this call set the mark)."""
    raw = _raw_settings(meta)
    settings = VolumeSettings.from_json(raw)
    if being_destroyed(settings):
        return settings, False
    marked = VolumeSettings(**{**settings.__dict__, "extra": {**settings.extra, DESTROYING: repr(time.time())}})
    _swap(meta, raw, marked.to_json())
    return marked, True


def unmark(meta: RedisMeta) -> None:
    """Take back a mark this run set (destroy refused before deleting anything)."""
    raw = _raw_settings(meta)
    doc = json.loads(raw)
    doc.get("extra", {}).pop(DESTROYING, None)
    _swap(meta, raw, VolumeSettings(**doc).to_json())


def sessions(meta: RedisMeta) -> list[Session]:
    """Every registered session with its heartbeat age, by the Redis server's clock (the
    one heartbeats are scored by), oldest heartbeat last."""
    now = RedisScan(meta).server_time()
    found = [Session(s, max(0.0, now - s.heartbeat)) for s in meta.list_sessions()]
    return sorted(found, key=lambda s: s.age)


def _scan(meta: RedisMeta) -> list[str]:
    return meta._call(lambda: list(volume_keys(meta)))


def delete_keys(meta: RedisMeta, progress: Progress | None = None) -> int:
    """Delete every key of the volume, the settings last; the number deleted. Safe to run
    again after an interruption: until the settings go, the volume stays marked."""
    note = progress or (lambda *_: None)
    deleted = 0
    for _ in range(PASSES):
        keys = [k for k in _scan(meta) if k != meta._setting]
        if not keys:
            deleted += int(meta._call(meta._r.unlink, meta._setting))
            note("deleting metadata keys", deleted, None)
            return deleted
        for start in range(0, len(keys), BATCH):
            deleted += int(meta._call(meta._r.unlink, *keys[start:start + BATCH]))
            note("deleting metadata keys", deleted, None)
    raise MetaError("metadata keys keep appearing while they are deleted (is a client still mounted?): "
                    "unmount every client and run destroy again")
