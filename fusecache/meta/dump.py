"""The Redis side of `fusecache dump` / `load`: a volume's keys as typed values, a watch that
tells whether any of them changed while they were read, and writing them back.

A dump is made of keys, not of namespace calls: every key of the volume (schema in
redis.py) but the runtime state of live clients, each with its type and value. That keeps
everything a volume has (tree, attributes, xattrs, symlinks, slices with their checksums,
quotas and their usage, counters, trash, delayed garbage) byte for byte, and load needs
no knowledge of what the values mean beyond two things: secrets in the settings, and
files that were unlinked while open (kept for a session that will not exist after a
load, so load frees them as their last close would have).

Consistency: Redis has no snapshot of a key range, so the dump proves one instead. Before
the first key is read, a connection asks for broadcast tracking of the volume's prefix
(CLIENT TRACKING ... BCAST), which makes Redis tell it of every change to any key of the
volume. If none arrived (other than the excluded runtime keys) by the time the last key
is read, every value read equals the volume's state at that moment: the dump is that
instant's snapshot. Otherwise the caller tries again, or says it cannot.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.cluster import RedisCluster

from ..errors import MetaError
from .codec import unpack_attr
from .redis import RedisMeta

BATCH = 200
LOADING = "loading"  # key in VolumeSettings.extra: a load into this prefix is not finished

# Keys of the clients' runtime state (sessions, open notes, operation tokens, leases): they
# describe processes, not the volume, and mean nothing after a load.
_RUNTIME = re.compile(r"sessions|sessinfo|inuse|o\d+|open\d+|op.*|lease:.*|importseen:.*|sustained\d+")
_INODE = re.compile(r"i(\d+)")

Value = Any  # a JSON-ready value: see encode_value


@dataclass(slots=True)
class KeyDump:
    name: str  # the key without the volume's `{prefix}`
    kind: str  # Redis type: string, hash, list, set, zset
    value: Value


def _text(raw: bytes) -> str | dict[str, str]:
    """Bytes as JSON: text when it is UTF-8, else {"b64": ...}."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode()}


def _bytes(value: str | dict[str, str]) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value.encode()


def is_runtime(name: str) -> bool:
    return bool(_RUNTIME.fullmatch(name))


class ChangeWatch:
    """Redis's notices of changes to any key of one volume, from the moment it starts.

    A connection of the volume's pool (so AUTH, SELECT and Sentinel's choice of master are
    redis-py's), read with a plain RESP reader: once it subscribes, its replies are pushes
    that redis-py's own reader would try to dispatch."""

    def __init__(self, meta: RedisMeta, timeout: float = 10.0) -> None:
        self._meta = meta
        self._conn = self._connection(meta)
        self._reader = hiredis.Reader()
        self.changed: set[str] = set()
        self.everything = False  # a FLUSHDB/FLUSHALL, or the notices were lost
        try:
            self._conn.socket_timeout = timeout
            self._conn.connect()
            self._conn._sock.settimeout(timeout)
            cid = self._call("CLIENT", "ID")
            self._call("CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", meta._p)
            self._call("SUBSCRIBE", "__redis__:invalidate")
        except hiredis.ReplyError as exc:  # Redis < 6, or an ACL without CLIENT
            self.close()
            raise MetaError(f"Redis cannot tell of changes ({exc})") from None
        except (redis.RedisError, OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise MetaError(f"metadata server {meta._name} failed: {exc or type(exc).__name__}") from None

    @staticmethod
    def _connection(meta: RedisMeta) -> Any:
        client = meta._r
        if isinstance(client, RedisCluster):  # all of a volume's keys share one slot
            client = client.get_node_from_key(meta._setting).redis_connection
        return client.connection_pool.make_connection()

    def _next(self) -> Any:
        while (reply := self._reader.gets()) is False:
            chunk = self._conn._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("Redis closed the connection")
            self._reader.feed(chunk)
        return reply

    def _call(self, *command: Any) -> Any:
        self._conn.send_command(*command)
        reply = self._next()
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    def collect(self) -> set[str]:
        """The volume keys (without the prefix) changed since the start, runtime keys left
        out. A PING's answer comes after every notice of a change made before it."""
        try:
            self._conn.send_command("PING")
            while True:
                message = self._next()
                if message == b"PONG" or (isinstance(message, list) and message[:1] == [b"pong"]):
                    break
                # RESP3 pushes ["invalidate", keys]; RESP2 ["message", channel, keys].
                if isinstance(message, list) and message[:1] in ([b"invalidate"], [b"message"]):
                    self._note(message[-1])
        except (redis.RedisError, OSError, hiredis.ProtocolError):
            self.everything = True
        return self.changed

    def _note(self, keys: list[bytes] | None) -> None:
        if keys is None:
            self.everything = True
            return
        for raw in keys:
            name = raw.decode(errors="replace")[len(self._meta._p):]
            if not is_runtime(name):
                self.changed.add(name)

    def close(self) -> None:
        self._conn.disconnect()


def read_keys(meta: RedisMeta, names: Iterable[str]) -> Iterator[KeyDump]:
    """The typed values of the given full key names, BATCH keys per pair of round trips;
    keys gone since they were listed are skipped."""
    batch: list[str] = []
    for key in names:
        batch.append(key)
        if len(batch) >= BATCH:
            yield from _read_batch(meta, batch)
            batch = []
    if batch:
        yield from _read_batch(meta, batch)


_READ: dict[str, Callable[[Any, str], Any]] = {
    "string": lambda pipe, key: pipe.get(key),
    "hash": lambda pipe, key: pipe.hgetall(key),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
    "set": lambda pipe, key: pipe.smembers(key),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
}


def _read_batch(meta: RedisMeta, keys: list[str]) -> Iterator[KeyDump]:
    kinds = [k.decode() if isinstance(k, bytes) else k
             for k in meta._pipe(lambda pipe: [pipe.type(key) for key in keys])]
    for kind in kinds:
        if kind != "none" and kind not in _READ:
            raise MetaError(f"a volume key has Redis type {kind!r}, which dump does not know")
    wanted = [(key, kind) for key, kind in zip(keys, kinds, strict=True) if kind != "none"]
    values = meta._pipe(lambda pipe: [_READ[kind](pipe, key) for key, kind in wanted])
    for (key, kind), raw in zip(wanted, values, strict=True):
        if raw is None or (kind != "string" and not raw):
            continue  # deleted between TYPE and read
        yield KeyDump(key[len(meta._p):], kind, encode_value(kind, raw))


def encode_value(kind: str, raw: Any) -> Value:
    if kind == "string":
        return _text(raw)
    if kind == "hash":  # pairs, not an object: field names may be any bytes, and sorted
        return [[_text(f), _text(v)] for f, v in sorted(raw.items())]
    if kind == "list":
        return [_text(v) for v in raw]
    if kind == "set":
        return sorted((_text(v) for v in raw), key=str)
    return [[_text(m), s] for m, s in raw]  # zset: (member, score) in score order


def write_keys(meta: RedisMeta, dumps: Iterable[KeyDump]) -> list[int]:
    """Write the keys (each replacing any key of that name), BATCH keys per round trip; the
    inodes found unlinked but kept open (nlink 0, parent 0) that the caller must free."""
    kept_open: list[int] = []
    batch: list[KeyDump] = []
    for item in dumps:
        match = _INODE.fullmatch(item.name)
        if match and item.kind == "string":
            attr = unpack_attr(int(match.group(1)), _bytes(item.value))
            if attr.nlink == 0 and attr.parent == 0:
                kept_open.append(attr.ino)
        batch.append(item)
        if len(batch) >= BATCH:
            _write_batch(meta, batch)
            batch = []
    if batch:
        _write_batch(meta, batch)
    return kept_open


def _write_batch(meta: RedisMeta, batch: list[KeyDump]) -> None:
    def build(pipe: Any) -> None:
        for item in batch:
            key = meta._p + item.name
            pipe.delete(key)  # a resumed load writes a key again from scratch
            value = item.value
            if item.kind == "string":
                pipe.set(key, _bytes(value))
            elif item.kind == "hash":
                for start in range(0, len(value), 1000):
                    pipe.hset(key, mapping={_bytes(f): _bytes(v) for f, v in value[start:start + 1000]})
            elif item.kind == "list":
                for start in range(0, len(value), 1000):
                    pipe.rpush(key, *(_bytes(v) for v in value[start:start + 1000]))
            elif item.kind == "set":
                for start in range(0, len(value), 1000):
                    pipe.sadd(key, *(_bytes(v) for v in value[start:start + 1000]))
            elif item.kind == "zset":
                for start in range(0, len(value), 1000):
                    pipe.zadd(key, {_bytes(m): float(s) for m, s in value[start:start + 1000]})
            else:
                raise MetaError(f"the dump has a key {item.name!r} of unknown type {item.kind!r}")

    # Every command in it replaces what it writes: retrying the whole batch is harmless.
    meta._pipe(build)


def free_kept_open(meta: RedisMeta, inodes: list[int]) -> None:
    """Free files that were unlinked while open when dumped: no session holds them after a
    load, so they go as their last close would have made them go."""
    for start in range(0, len(inodes), 500):
        meta._run("RELEASE", [f"{meta._p}open0"], ["0", *inodes[start:start + 500]])
