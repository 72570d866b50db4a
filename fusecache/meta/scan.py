"""Reading a whole volume's metadata out of Redis, and the few raw repairs fsck may make.

`fsck` and `gc` (fusecache/check/) need what no namespace call gives: every inode, every
directory, every slice list, whatever the tree says. This module is the only code besides
redis.py that knows the key schema (documented there). Keys are found with SCAN in batches
and read with pipelines, so a scan holds one batch at a time in memory (its callers keep
what they need to compare).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any

from redis.cluster import RedisCluster

from ..types import Attr, Slice
from .codec import entry_ino, pack_attr, pack_entry, unpack_attr, unpack_garbage, unpack_slice
from .redis import RedisMeta

BATCH = 500


def volume_keys(meta: RedisMeta) -> Iterator[str]:
    """Every key of the volume (SCAN MATCH `{P}*`, on every primary of a cluster); a key may
    come more than once, as SCAN may return it again."""
    pattern = re.sub(r"([\\*?\[\]])", r"\\\1", meta._p) + "*"
    kwargs: dict[str, Any] = {"match": pattern, "count": 1000}
    if isinstance(meta._r, RedisCluster):
        kwargs["target_nodes"] = RedisCluster.PRIMARIES
    with meta._errors():
        for raw in meta._r.scan_iter(**kwargs):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(meta._p):  # only keys that truly start with this volume's tag
                yield key


class RedisScan:
    def __init__(self, meta: RedisMeta) -> None:
        self.meta = meta
        self._r = meta._r
        self._p = meta._p

    # -- plumbing --------------------------------------------------------------------------
    def _keys(self, kind: str, pattern: str) -> Iterator[tuple[str, re.Match[str]]]:
        """Keys `{P}<kind>...` whose rest matches `pattern` (the key schema shares first
        letters: `{P}d<ino>` and `{P}delayed`), with the match."""
        rest = re.compile(pattern)
        glob = f"{self._p}{kind}*".replace("[", "\\[")
        kwargs: dict[str, Any] = {"match": glob, "count": 1000}
        if isinstance(self._r, RedisCluster):
            kwargs["target_nodes"] = RedisCluster.PRIMARIES
        start = len(self._p) + len(kind)
        for raw in self.meta._call(lambda: list(self._r.scan_iter(**kwargs))):
            key = raw.decode() if isinstance(raw, bytes) else raw
            match = rest.fullmatch(key[start:])
            if match:
                yield key, match

    def _batches(self, kind: str, pattern: str) -> Iterator[list[tuple[str, re.Match[str]]]]:
        batch: list[tuple[str, re.Match[str]]] = []
        for item in self._keys(kind, pattern):
            batch.append(item)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    # -- reading ---------------------------------------------------------------------------
    def inodes(self) -> Iterator[Attr]:
        for batch in self._batches("i", r"(\d+)"):
            raws = self.meta._call(self._r.mget, [key for key, _ in batch])
            for (_, match), raw in zip(batch, raws, strict=True):
                if raw is not None:
                    yield unpack_attr(int(match.group(1)), raw)

    def directories(self) -> Iterator[tuple[int, dict[bytes, tuple[int, int]]]]:
        """(directory inode, {name: (inode, type bits)}) for every directory hash."""
        for batch in self._batches("d", r"(\d+)"):
            def build(pipe: Any, batch: list[tuple[str, re.Match[str]]] = batch) -> None:
                for key, _ in batch:
                    pipe.hgetall(key)

            for (_, match), entries in zip(batch, self.meta._pipe(build), strict=True):
                yield int(match.group(1)), {bytes(n): (entry_ino(v), v[0] << 12) for n, v in entries.items()}

    def chunks(self) -> Iterator[tuple[int, int, list[Slice]]]:
        """(inode, chunk index, slices) for every slice list."""
        for batch in self._batches("c", r"(\d+)_(\d+)"):
            def build(pipe: Any, batch: list[tuple[str, re.Match[str]]] = batch) -> None:
                for key, _ in batch:
                    pipe.lrange(key, 0, -1)

            for (_, match), raws in zip(batch, self.meta._pipe(build), strict=True):
                yield int(match.group(1)), int(match.group(2)), [unpack_slice(r) for r in raws]

    def delayed(self) -> set[tuple[int, int]]:
        """Slices dropped from files whose objects still wait for deletion."""
        raws = self.meta._call(self._r.zrange, self.meta._delayed, 0, -1)
        legacy = self.meta._call(self._r.smembers, self._p + "garbage")
        return {unpack_garbage(r) for r in [*raws, *legacy]}

    def deleted_files(self) -> set[int]:
        return {int(v) for v in self.meta._call(self._r.smembers, self._p + "delfiles")}

    def counters(self) -> dict[str, int]:
        raw = self.meta._call(self._r.hgetall, self.meta._counters)
        return {k.decode(): int(v) for k, v in raw.items()}

    def quotas(self) -> dict[int, tuple[int, int]]:
        """Quota directories and their usage counters (bytes, inodes)."""
        limits = self.meta._call(self._r.hkeys, self.meta._quota)
        used = self.meta._call(self._r.hgetall, self.meta._qused)
        out = {}
        for raw in limits:
            ino = int(raw)
            out[ino] = (int(used.get(f"{ino}b".encode(), 0)), int(used.get(f"{ino}i".encode(), 0)))
        return out

    def open_notes(self) -> dict[int, set[int]]:
        """inode -> sessions noted as holding it open."""
        out: dict[int, set[int]] = {}
        for batch in self._batches("o", r"(\d+)"):
            def build(pipe: Any, batch: list[tuple[str, re.Match[str]]] = batch) -> None:
                for key, _ in batch:
                    pipe.hkeys(key)

            for (_, match), sids in zip(batch, self.meta._pipe(build), strict=True):
                out[int(match.group(1))] = {int(s) for s in sids}
        return out

    def session_sets(self) -> set[int]:
        """Sessions that have a set of open notes ({P}open<sid>)."""
        return {int(m.group(1)) for _, m in self._keys("open", r"(\d+)")}

    def in_use_marks(self) -> dict[int, int]:
        """session -> lowest slice id it may still commit (HEARTBEAT)."""
        raw = self.meta._call(self._r.hgetall, self._p + "inuse")
        return {int(k): int(v) for k, v in raw.items()}

    def session_beats(self) -> dict[int, float]:
        """Every session in the sessions set with its last heartbeat (server clock)."""
        return {int(s): float(b) for s, b in self.meta._call(self._r.zrange, self.meta._sessions, 0, -1,
                                                             withscores=True)}

    def slice_refs(self) -> dict[int, int]:
        """slice id -> chunks beyond the first that hold it ({P}sliceref, kept by clones)."""
        raw = self.meta._call(self._r.hgetall, self._p + "sliceref")
        return {struct.unpack("<Q", k)[0]: int(v) for k, v in raw.items() if len(k) == 8}

    def server_time(self) -> float:
        seconds, micros = self.meta._call(self._r.time)
        return float(seconds) + micros / 1e6

    # -- repairs (each one key, each safe to repeat) ---------------------------------------
    def set_counter(self, name: str, value: int) -> None:
        self.meta._call(self._r.hset, self.meta._counters, name, value)

    def set_quota_usage(self, ino: int, used_bytes: int, used_inodes: int) -> None:
        self.meta._call(self._r.hset, self.meta._qused, mapping={f"{ino}b": used_bytes, f"{ino}i": used_inodes})

    def set_slice_ref(self, slice_id: int, extra_holders: int, seen: int | None = None) -> bool:
        """Set a slice's count of extra holders; with `seen`, only if it is still that
        value (a compare-and-set: a clone or a release since the scan changed it, and the
        scan's view of that slice is stale). Returns whether it was set."""
        field = struct.pack("<Q", slice_id)
        script = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if ARGV[3] ~= '' and cur ~= tonumber(ARGV[3]) then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1"""
        args = [field, max(0, extra_holders), "" if seen is None else seen]
        return bool(self.meta._call(self._r.eval, script, 1, self._p + "sliceref", *args))

    def set_attr(self, attr: Attr) -> None:
        self.meta._call(self._r.set, self.meta._ik(attr.ino), pack_attr(attr))

    def remove_entry(self, dir_ino: int, name: bytes) -> None:
        self.meta._call(self._r.hdel, self.meta._dk(dir_ino), name)

    def add_entry(self, dir_ino: int, name: bytes, attr: Attr) -> bool:
        """Link `attr` as `name` in directory `dir_ino` unless the name is taken."""
        return bool(self.meta._call(self._r.hsetnx, self.meta._dk(dir_ino), name, pack_entry(attr.mode, attr.ino)))

    def queue_deleted_file(self, ino: int, indexes: list[int]) -> None:
        """Slice lists of an inode that is gone: let take_garbage release them (it expands
        the chunks listed in {P}k<ino>)."""
        self.meta._call(self._r.sadd, f"{self._p}k{ino}", *indexes)
        self.meta._call(self._r.sadd, self._p + "delfiles", ino)

    def drop_session_leftovers(self, sid: int, noted: list[int]) -> None:
        """Remove what a session that is not in the sessions set left behind: its sets, and
        its notes on the inodes in `noted` (which its set may no longer list)."""
        self.meta.close_session(sid)
        for ino in noted:
            self.meta._call(self._r.hdel, f"{self._p}o{ino}", sid)
