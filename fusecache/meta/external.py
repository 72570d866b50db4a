"""The registry of imported data: sources (buckets or directories the volume reads but
never writes) and the object versions its files' external slices name (lua_import.py).

A registry number stands for one version of one source object (its key, ETag and size)
for good. Reading checks that the source still has that version, so bytes of two versions
are never mixed; a changed object is imported again under a new number.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from .redis import RedisMeta


@dataclass(frozen=True)
class ExternalSource:
    number: int
    storage: str  # "s3" or "file"
    bucket: str  # bucket URL (with its prefix) or directory
    access_key: str = ""
    secret_key: str = ""

    def record(self) -> str:
        return json.dumps({"storage": self.storage, "bucket": self.bucket, "access_key": self.access_key,
                           "secret_key": self.secret_key})


@dataclass(frozen=True)
class ExternalObject:
    number: int
    source: int
    key: str  # relative to the source's bucket URL or directory
    etag: str
    size: int

    def record(self) -> str:
        return json.dumps({"src": self.source, "key": self.key, "etag": self.etag, "size": self.size})


def _sources_key(meta: RedisMeta) -> str:
    return meta._p + "extsrc"


def _objects_key(meta: RedisMeta) -> str:
    return meta._p + "ext"


def register_source(meta: RedisMeta, storage: str, bucket: str, access_key: str, secret_key: str) -> ExternalSource:
    """The number of this source, registered once (the same place and key pair reuse it;
    new credentials for the same place replace the old ones)."""
    raw = meta._call(meta._r.hgetall, _sources_key(meta))
    for number, rec in sorted(raw.items(), key=lambda kv: int(kv[0])):
        got = json.loads(rec)
        if (got["storage"], got["bucket"]) == (storage, bucket):
            src = ExternalSource(int(number), storage, bucket, access_key, secret_key)
            if (got["access_key"], got["secret_key"]) != (access_key, secret_key):
                meta._call(meta._r.hset, _sources_key(meta), str(src.number), src.record())
            return src
    number = int(meta._call(meta._r.hincrby, meta._counters, "nextextsrc", 1))
    src = ExternalSource(number, storage, bucket, access_key, secret_key)
    meta._call(meta._r.hset, _sources_key(meta), str(number), src.record())
    return src


def reserve_numbers(meta: RedisMeta, count: int) -> int:
    """`count` fresh registry numbers; returns the first."""
    end = int(meta._call(meta._r.hincrby, meta._counters, "nextext", count))
    return end - count + 1


def sources(meta: RedisMeta) -> list[ExternalSource]:
    raw = meta._call(meta._r.hgetall, _sources_key(meta))
    return [_source(int(n), rec) for n, rec in sorted(raw.items(), key=lambda kv: int(kv[0]))]


def _source(number: int, rec: bytes | str) -> ExternalSource:
    got = json.loads(rec)
    return ExternalSource(number, got["storage"], got["bucket"], got.get("access_key", ""), got.get("secret_key", ""))


def _object(number: int, rec: bytes | str) -> ExternalObject:
    got = json.loads(rec)
    return ExternalObject(number, int(got["src"]), got["key"], got["etag"], int(got["size"]))


class Registry:
    """Registry lookups for readers, cached: a number's record never changes, and a
    source changes only when its credentials are replaced (then a failed read looks again)."""

    def __init__(self, meta: RedisMeta) -> None:
        self.meta = meta
        self._lock = threading.Lock()
        self._objects: dict[int, ExternalObject] = {}
        self._sources: dict[int, ExternalSource] = {}

    def object(self, number: int) -> ExternalObject | None:
        with self._lock:
            found = self._objects.get(number)
        if found is None:
            rec = self.meta._call(self.meta._r.hget, _objects_key(self.meta), str(number))
            if rec is None:
                return None
            found = _object(number, rec)
            with self._lock:
                self._objects[number] = found
        return found

    def source(self, number: int, fresh: bool = False) -> ExternalSource | None:
        with self._lock:
            found = None if fresh else self._sources.get(number)
        if found is None:
            rec = self.meta._call(self.meta._r.hget, _sources_key(self.meta), str(number))
            if rec is None:
                return None
            found = _source(number, rec)
            with self._lock:
                self._sources[number] = found
        return found

    def objects(self, numbers: list[int]) -> dict[int, ExternalObject]:
        """Many records in one round trip (fsck)."""
        raws = self.meta._call(self.meta._r.hmget, _objects_key(self.meta), [str(n) for n in numbers])
        return {n: _object(n, r) for n, r in zip(numbers, raws, strict=True) if r is not None}
