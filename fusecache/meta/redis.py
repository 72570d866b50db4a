"""The Redis metadata engine.

Key schema. Every key of a volume starts with the hash tag `{P}` (P = the URL's `prefix`,
default "fc"), so all of them live in one Redis Cluster slot and a Lua script may touch
any of them. Numbers in key names are decimal.

    {P}setting          string  VolumeSettings as JSON (written by `format`); `destroy`
                                marks it first (extra.destroying) and deletes it last
    {P}counters         hash    nextinode, nextslice, nextsession (allocation counters),
                                usedspace (sum of file lengths, trashed files included),
                                usedinodes (excluding the root, the trash and its hour
                                directories), capacity and maxinodes (limits, 0 = none)
    {P}i<ino>           string  attributes, packed by codec.ATTR (60 bytes)
    {P}d<ino>           hash    directory entries: name -> type byte + decimal inode
    {P}s<ino>           string  symlink target
    {P}x<ino>           hash    extended attributes: name -> value
    {P}c<ino>_<index>   list    slices of one chunk in commit order, packed by codec.SLICE
                                (with the block checksums)
    {P}k<ino>           set     indexes of the chunks of <ino> that have a slice list
    {P}delfiles         set     freed file inodes whose chunks still await take_garbage
    {P}delayed          zset    dropped slices (codec.GARBAGE: id, size) scored by the
                                server time they were dropped; their objects are deleted
                                only `garbage_delay` seconds later
    {P}sessions         zset    session id scored by its last heartbeat (server clock)
    {P}sessinfo         hash    session id -> "<started> <JSON host/pid/mountpoint/version>"
    {P}inuse            hash    session id -> lowest slice id it may still commit (gc's bound)
    {P}lease:<chore>    string  which client does a volume-wide chore now (expires)
    {P}o<ino>           hash    session id -> 1 for every session holding <ino> open
    {P}open<sid>        set     inodes session <sid> noted open (cleared when it closes)
    {P}op<token>        string  result of a namespace change, kept 2 min (lua.TOKEN_TTL_MS)
    {P}quota            hash    directory inode -> packed (max_bytes, max_inodes)
    {P}qused            hash    "<ino>b" / "<ino>i" -> bytes / inodes used under a quota
    {P}sliceref         hash    slice id (8 bytes, as in a slice record) -> how many chunks
                                beyond the first hold it (clones share slices, see clone.py)
    {P}detached, {P}detuse, {P}detmap<root>
                                clones being built, not yet linked (see lua_tree.py)
    {P}ext, {P}extsrc, {P}extino
                        hash    imported object versions, their sources, and which one
                                each imported inode was made from (lua_import.py)
    {P}importseen:<run> set     object versions an `import --update --delete` run saw

The trash is the directory inode TRASH_INO, reached as `/.trash` by lookup but not listed
in the root; it holds one directory per hour (`YYYY-MM-DD-HH`, UTC) whose entries are
named `<parent>-<ino>-<name>`. A trashed file has nlink 0 (it has no link in the user's
tree) and `parent` = its hour directory; renaming it out restores it with nlink 1.

Invariants kept by the Lua scripts (lua.py), each of which runs atomically:
- an entry in {P}d<dir> names an inode whose {P}i key exists (rmdir/unlink/rename remove
  the entry and release the inode in the same script);
- a directory's nlink is 2 + its subdirectories; its `parent` field is its parent; a
  file's `parent` is the directory its usage is charged to (0 after it lost that link);
- an inode with nlink 0 is either in the trash (parent = an hour directory, one entry)
  or kept for the sessions in {P}o<ino> (parent 0), and freed when the last live one
  closes it or ends;
- a chunk exists only below the file length's chunk count (truncate drops the rest);
- a slice id is held by 1 + {P}sliceref[id] chunks, and the last of them to let go
  queues it (clones, lua.release_slices);
- an inode whose mode has codec.FROZEN_BIT (a read-only snapshot) is changed by no script
  but lua_tree.TREE_REMOVE: the others answer EROFS;
- a slice id leaves the metadata only by entering {P}delayed (directly, or through
  {P}delfiles and a later take_garbage), so no object leaks and none is freed early.

Failure model: a script either ran entirely or not at all, so a client dying at any point
leaves the namespace consistent. A call whose reply is lost is retried (connect.py:
call_with_retries), and a retry is harmless: namespace changes carry an operation token
and report the first attempt's result, slice commits are recognised by their slice id.
Quota usage of a directory moved between quota trees, and the usage counted by
set_quota, are measured by a walk outside the script, so concurrent writes inside the
moving subtree can leave them slightly off; set_quota recounts.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from ..errors import FsError, MetaError, UnfilledDir
from ..layout import CHUNK_SIZE, MAX_FILE_SIZE
from ..types import (
    ROOT_INO,
    TRASH_INO,
    TRASH_NAME,
    Attr,
    DirEntry,
    Quota,
    SessionInfo,
    SetAttr,
    Slice,
    StatFs,
    VolumeSettings,
)
from . import lua, lua_import, lua_tree
from .aio import DirectAddress, FallBack, MetaRequest, OwnChange
from .base import (
    MAX_NAME,
    MAX_XATTR_NAME,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    GarbageBatch,
    Meta,
)
from .codec import (
    entry_ino,
    pack_attr,
    pack_entry,
    pack_garbage,
    pack_slice,
    pack_time,
    unpack_attr,
    unpack_garbage,
    unpack_slice,
)
from .connect import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")

Client = redis.Redis | RedisCluster

INODE_BATCH = 64  # inode numbers reserved per round trip; a crash only leaves a gap
INODE_SKIP = 1 << 16  # jump of the inode counter when a reserved number turns out taken
MGET_BATCH = 2000
DIR_SIZE = 4096
MAX_SYMLINK = 4096
UNLIMITED_BYTES = 1 << 50  # what statfs reports as total when the volume has no capacity
UNLIMITED_INODES = 1 << 30
_UNFILLED_MISS = -3  # LOOKUP: no such name, in a lazy import's directory not listed yet
GARBAGE_CHUNK_BUDGET = 256  # deleted-file chunks expanded per take_garbage call
GARBAGE_LEASE = 60.0  # seconds a taken garbage item stays hidden from other collectors
RELEASE_BATCH = 500  # closed inodes whose open notes one RELEASE call drops
_QUOTA = struct.Struct("<QQ")
_INODE_TAKEN = -2  # lua.CREATE: the chosen inode number exists (a stale batch)
_KEPT = 1  # lua.drop_link: the inode lost its last link and is kept for its openers


def _check_name(name: bytes) -> None:
    if len(name) > MAX_NAME:
        raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, "invalid file name")


def _check_new_name(parent: int, name: bytes) -> None:
    _check_name(name)
    if name in (b".", b"..") or (parent == ROOT_INO and name == TRASH_NAME):
        raise FsError(errno.EEXIST)


def _check_not_trash(parent: int, name: bytes) -> None:
    """The trash itself can be neither removed nor moved."""
    if parent == ROOT_INO and name == TRASH_NAME:
        raise FsError(errno.EPERM, "the trash cannot be removed or moved")


_hour_name: tuple[int, str] = (-1, "")


def trash_hour(now: float | None = None) -> str:
    """The name of the trash directory for files trashed at `now` (UTC hour)."""
    global _hour_name
    hour = int((time.time() if now is None else now) // 3600)
    if _hour_name[0] != hour:
        _hour_name = (hour, time.strftime("%Y-%m-%d-%H", time.gmtime(hour * 3600)))
    return _hour_name[1]


class RedisMeta(Meta):
    """Metadata in one Redis database (standalone, Sentinel-managed or Cluster).

    Thread-safe: redis-py's pool hands each call its own connection; the engine's own
    state (inode batch, open files of this session) is guarded by locks.
    """

    def __init__(self, client: Client, prefix: str = "fc", name: str = "redis") -> None:
        self._r = client
        self._p = "{" + prefix + "}"
        self._name = name  # the redacted URL, for messages
        self._counters = self._p + "counters"
        self._delayed = self._p + "delayed"
        self._sessions = self._p + "sessions"
        self._setting = self._p + "setting"
        self._quota = self._p + "quota"
        self._qused = self._p + "qused"
        self._scripts: dict[str, Script] = {}
        for attr_name in ("LOOKUP", "CREATE", "UNLINK", "RMDIR", "LINK", "RENAME", "SETATTR",
                          "WRITE", "COMPACT", "TAKE_GARBAGE", "ACK_GARBAGE", "SETXATTR", "REMOVEXATTR",
                          "OPEN", "RELEASE", "REGISTER", "NEW_SESSION", "HEARTBEAT", "STALE_SESSIONS",
                          "CLOSE_SESSION", "STATFS", "SET_QUOTA", "FORMAT"):
            self._scripts[attr_name] = client.register_script(lua.script(getattr(lua, attr_name)))
        for module in (lua_tree, lua_import):
            for attr_name in module.SCRIPTS:
                self._scripts[attr_name] = client.register_script(lua.script(getattr(module, attr_name)))
        self._token_prefix = secrets.token_hex(6)
        self._token_seq = itertools.count(1)
        self._ino_lock = threading.Lock()
        self._ino_next = 0
        self._ino_end = 0
        self._skip_inodes = False  # move the counter ahead before the next batch
        # Volume settings the engine acts on (set by format/load).
        self.trash_days = 0
        self.garbage_delay = VolumeSettings.garbage_delay
        self.garbage_lease = GARBAGE_LEASE
        # Open files of this session. Each inode this session holds open is noted in Redis
        # ({P}o<ino>) so that an unlink by any client keeps it; the note is dropped a little
        # after the last local close (RELEASE, batched by flush_releases), so a file opened
        # again soon after needs no round trip for it.
        self._sid: int | None = None
        self._session_info = ""
        self._cond = threading.Condition()
        self._held: dict[int, int] = {}  # ino -> local opens
        self._noted: set[int] = set()  # inodes noted open in Redis (held or lingering)
        self._linger: dict[int, float] = {}  # noted, no local open since (monotonic time)
        self._unnoting: set[int] = set()  # RELEASE in flight: opens wait for it
        self._noting: set[int] = set()  # OPEN in flight: other opens wait for it

    # -- plumbing -------------------------------------------------------------------------
    def _ik(self, ino: int | str) -> str:
        return f"{self._p}i{ino}"

    def _dk(self, ino: int | str) -> str:
        return f"{self._p}d{ino}"

    def _ck(self, ino: int, index: int) -> str:
        return f"{self._p}c{ino}_{index}"

    def _op_key(self) -> str:
        """A fresh operation token's key (see lua.py: replay/done)."""
        return f"{self._p}op{self._token_prefix}{next(self._token_seq):x}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate Redis failures: out of memory is ENOSPC, anything else MetaError."""
        try:
            yield
        except redis.ResponseError as exc:
            if str(exc).startswith("OOM"):
                raise FsError(errno.ENOSPC, "metadata server out of memory") from None
            raise MetaError(f"metadata error from {self._name}: {exc}") from None
        except redis.RedisError as exc:
            raise MetaError(f"metadata server {self._name} failed: {exc or type(exc).__name__}") from None

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One idempotent Redis command (or pipeline builder), retried, errors translated."""
        with self._errors():
            return call_with_retries(lambda _: fn(*args, **kwargs))

    def _pipe(self, build: Callable[[Any], None]) -> list[Any]:
        """Read commands in one pipeline; `build(pipe)` queues them (again for a retry)."""
        def attempt(_: int) -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()  # type: ignore[no-any-return]

        with self._errors():
            return call_with_retries(attempt)

    def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """Run a Lua script, retried (scripts are retry-safe, see lua.py)."""
        with self._errors():
            return call_with_retries(lambda _: self._scripts[script](keys=keys, args=[self._p, *args]))

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], *, token: bool = False) -> list[Any]:
        """Run a Lua script; a positive status becomes FsError, -1/-2 are returned.
        `token`: a namespace change, which gets an operation token (KEYS[2])."""
        if token:
            keys = [*keys, self._op_key()]
        res = self._eval(script, keys, args)
        if res[0] > 0:
            raise FsError(res[0])
        return res

    def _new_ino(self) -> int:
        self._new_ino_batch_if_needed()
        with self._ino_lock:
            if self._ino_next >= self._ino_end:
                end = int(self._call(self._r.hincrby, self._counters, "nextinode", INODE_BATCH))
                self._ino_next, self._ino_end = end - INODE_BATCH + 1, end + 1
            ino = self._ino_next
            self._ino_next += 1
            return ino

    def _new_ino_nowait(self) -> int | None:
        """An inode number from the batch at hand, or None when getting one would block."""
        if not self._ino_lock.acquire(blocking=False):
            return None
        try:
            if self._ino_next >= self._ino_end:
                return None
            ino = self._ino_next
            self._ino_next += 1
            return ino
        finally:
            self._ino_lock.release()

    def _drop_inode_batch(self) -> None:
        """A reserved inode number is taken already: the counter went back (a Redis restart
        or failover that lost its last writes). Drop the batch; the next reservation moves
        the counter well past it. Never waits (the non-blocking path calls it)."""
        log.warning("inode counter of %s is behind existing inodes; skipping ahead", self._name)
        self._ino_end = 0
        self._skip_inodes = True

    def _skip_taken_inodes(self) -> None:
        self._drop_inode_batch()
        self._new_ino_batch_if_needed()

    def _new_ino_batch_if_needed(self) -> None:
        with self._ino_lock:
            if self._skip_inodes:
                self._call(self._r.hincrby, self._counters, "nextinode", INODE_SKIP)
                self._skip_inodes = False

    def _get_attr(self, ino: int) -> Attr:
        raw = self._call(self._r.get, self._ik(ino))
        if raw is None:
            raise FsError(errno.ENOENT)
        return unpack_attr(ino, raw)

    def _apply_settings(self, settings: VolumeSettings) -> None:
        self.trash_days = max(0, int(settings.trash_days))
        self.garbage_delay = max(0.0, float(settings.garbage_delay))

    def _trash_hour(self) -> str:
        return trash_hour() if self.trash_days > 0 else ""

    # -- volume ---------------------------------------------------------------------------
    def format(self, settings: VolumeSettings, force: bool = False) -> None:
        now = time.time_ns()
        root = Attr(ROOT_INO, stat.S_IFDIR | 0o777, nlink=2, size=DIR_SIZE,
                    atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO)
        self._run("FORMAT", [self._setting], [settings.to_json(), settings.capacity, settings.inodes,
                                              pack_attr(root), "1" if force else "0", pack_time(now)])
        self._apply_settings(settings)

    def load(self) -> VolumeSettings:
        raw = self._call(self._r.get, self._setting)
        if raw is None:
            raise MetaError(f"volume not formatted at {self._name}: run 'fusecache format' first")
        try:
            settings = VolumeSettings.from_json(raw)
        except (ValueError, TypeError) as exc:
            raise MetaError(f"corrupt volume settings at {self._name}: {exc}") from None
        self._apply_settings(settings)
        return settings

    def statfs(self, ino: int = ROOT_INO) -> StatFs:
        res = self._run("STATFS", [self._counters], [ino])
        capacity, max_inodes, used, used_inodes = (int(v or 0) for v in res[1])
        total = capacity if capacity > 0 else max(UNLIMITED_BYTES, used)
        avail = max(total - used, 0)
        avail_inodes = max(max_inodes - used_inodes, 0) if max_inodes > 0 else UNLIMITED_INODES
        if res[2]:
            q_max_bytes, q_max_inodes = _QUOTA.unpack(res[2][0])
            q_bytes, q_inodes = int(res[2][1]), int(res[2][2])
            if q_max_bytes:
                total = min(total, q_max_bytes)
                avail = min(avail, max(q_max_bytes - q_bytes, 0))
            if q_max_inodes:
                used_inodes = q_inodes
                avail_inodes = min(avail_inodes, max(q_max_inodes - q_inodes, 0))
        return StatFs(total, avail, used_inodes, avail_inodes)

    def server_config(self, name: str) -> str | None:
        """A Redis configuration value, or None where CONFIG is not allowed (managed Redis)."""
        try:
            found = self._r.config_get(name)
        except redis.RedisError:
            return None
        value = found.get(name) if isinstance(found, dict) else None
        if value is None and isinstance(found, dict):  # Redis Cluster: one answer per node
            value = next((v.get(name) for v in found.values() if isinstance(v, dict) and name in v), None)
        return None if value is None else str(value)

    def shutdown(self) -> None:
        with self._errors():
            self._r.close()
            if isinstance(self._r, redis.Redis):
                # A pool handed to the client is not closed by client.close().
                self._r.connection_pool.disconnect()

    # -- sessions -------------------------------------------------------------------------
    def new_session(self, host: str, pid: int, mountpoint: str, version: str, origin: str = "") -> int:
        info = json.dumps({"host": host, "pid": pid, "mountpoint": mountpoint, "version": version,
                           "origin": origin})
        res = self._run("NEW_SESSION", [self._sessions], [info, ""])
        self._sid = int(res[1])
        self._session_info = info
        log.info("session %d started on %s", self._sid, self._name)
        return self._sid

    def heartbeat(self, sid: int, in_use: int = 0) -> None:
        res = self._run("HEARTBEAT", [self._sessions], [sid, in_use or ""])
        if len(res) > 2 and res[2]:
            self._follow_settings(res[2])
        if not res[1] and sid == self._sid and not self._volume_gone():
            # Cleaned as stale (Redis was away longer than the stale timeout, or this client
            # was frozen): take the session up again and note the files still open.
            log.warning("session %d was no longer registered; registering it again", sid)
            self._run("NEW_SESSION", [self._sessions], [self._session_info, sid])
            self._run("HEARTBEAT", [self._sessions], [sid, in_use or 1])  # unknown: protect all
            with self._cond:
                noted = sorted(self._noted)
            for start in range(0, len(noted), RELEASE_BATCH):
                self._run("REGISTER", [f"{self._p}open{sid}"], [sid, *noted[start:start + RELEASE_BATCH]])
        elif not res[1]:
            log.warning("session %d is no longer registered (cleaned as stale?)", sid)

    def _follow_settings(self, raw: bytes) -> None:
        """Apply settings `fusecache config` changed (trash days, garbage delay) to this
        live client; unreadable ones are left for the next beat."""
        try:
            settings = VolumeSettings.from_json(raw)
        except (ValueError, TypeError):
            return
        if (settings.trash_days, settings.garbage_delay) != (self.trash_days, self.garbage_delay):
            log.info("volume settings changed: trash %d days, garbage delay %.0f s",
                     settings.trash_days, settings.garbage_delay)
            self._apply_settings(settings)

    def _volume_gone(self) -> bool:
        """Whether the volume was destroyed, or is being destroyed (`fusecache destroy`
        deleted the sessions): then a session must not register itself again."""
        raw = self._call(self._r.get, self._setting)
        if raw is not None and "destroying" not in json.loads(raw).get("extra", {}):
            return False
        log.error("volume at %s is %s; session %s not registered again", self._name,
                  "being destroyed" if raw is not None else "gone", self._sid)
        return True

    def close_session(self, sid: int) -> None:
        res = self._run("CLOSE_SESSION", [self._sessions], [sid])
        if sid == self._sid:
            with self._cond:
                self._sid = None
                self._noted.clear()
                self._linger.clear()
        log.info("session %d closed, %d unlinked open files freed", sid, res[1])

    def list_sessions(self) -> list[SessionInfo]:
        beats = self._call(self._r.zrange, self._sessions, 0, -1, withscores=True)
        infos = self._call(self._r.hmget, self._p + "sessinfo", [sid for sid, _ in beats]) if beats else []
        out = []
        for (sid, beat), raw in zip(beats, infos, strict=True):
            if raw is None:
                continue
            started, _, text = raw.partition(b" ")
            info = json.loads(text)
            out.append(SessionInfo(int(sid), info["host"], int(info["pid"]), info["mountpoint"],
                                   info["version"], float(started), float(beat), info.get("origin", "")))
        return out

    def clean_stale_sessions(self, max_age: float) -> int:
        res = self._run("STALE_SESSIONS", [self._sessions], [repr(float(max_age))])
        stale = [int(sid) for sid in res[1]]
        for sid in stale:
            log.warning("closing stale session %d", sid)
            self.close_session(sid)
        return len(stale)

    # -- namespace ------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Attr:
        if name == b".":
            return self._get_dir(parent)
        if name == b"..":
            return self._get_attr(self._get_dir(parent).parent)
        if parent == ROOT_INO and name == TRASH_NAME:
            return self._get_attr(TRASH_INO)
        _check_name(name)
        res = self._run("LOOKUP", [self._dk(parent)], [parent, name])
        if res[0] == _UNFILLED_MISS:
            raise UnfilledDir()
        return unpack_attr(int(res[1]), res[2])

    # -- the same calls for a non-blocking client (meta/aio.py) --------------------------
    def direct_address(self) -> DirectAddress | None:
        """Where a non-blocking client may send requests: plain standalone Redis only."""
        if not isinstance(self._r, redis.Redis):
            return None
        pool = self._r.connection_pool
        if pool.connection_class is not redis.Connection:
            return None  # TLS, unix sockets, Sentinel-managed: keep the blocking client
        kw = pool.connection_kwargs
        return DirectAddress(kw.get("host", "localhost"), int(kw.get("port", 6379)), int(kw.get("db", 0)),
                             kw.get("username"), kw.get("password"))

    @staticmethod
    def _status(res: list[Any]) -> list[Any]:
        if res[0] > 0:
            raise FsError(res[0])
        return res

    def lookup_request(self, parent: int, name: bytes) -> MetaRequest | None:
        if name in (b".", b".."):
            return None
        if parent == ROOT_INO and name == TRASH_NAME:
            return self.getattr_request(TRASH_INO)
        _check_name(name)

        def decode(res: list[Any]) -> Attr:
            res = self._status(res)
            if res[0] == _UNFILLED_MISS:
                raise UnfilledDir()
            return unpack_attr(int(res[1]), res[2])

        script = self._scripts["LOOKUP"]
        return MetaRequest(("EVALSHA", script.sha, 1, self._dk(parent), self._p, parent, name), decode)

    def getattr_request(self, ino: int) -> MetaRequest:
        def decode(raw: bytes | None) -> Attr:
            if raw is None:
                raise FsError(errno.ENOENT)
            return unpack_attr(ino, raw)

        return MetaRequest(("GET", self._ik(ino)), decode)

    @staticmethod
    def _attrs_of(inos: list[int], raws: list[bytes | None]) -> list[Attr | None]:
        return [None if raw is None else unpack_attr(ino, raw) for ino, raw in zip(inos, raws, strict=True)]

    def attrs_request(self, inos: list[int]) -> MetaRequest:
        return MetaRequest(("MGET", *(self._ik(ino) for ino in inos)), lambda raws: self._attrs_of(inos, raws))

    def current_attrs(self, inos: list[int]) -> list[Attr | None]:
        """The attributes of these inodes now; None where an inode is gone."""
        return self._attrs_of(inos, self._call(self._r.mget, [self._ik(ino) for ino in inos]))

    def tracked_prefixes(self) -> tuple[str, str]:
        """The key prefixes of inode attributes and of directory entries (their keys end in
        the inode number), for a client that asks Redis to tell it of changes."""
        return self._p + "i", self._p + "d"

    def read_request(self, ino: int, chunk_index: int) -> MetaRequest:
        return MetaRequest(("LRANGE", self._ck(ino, chunk_index), 0, -1),
                           lambda raws: [unpack_slice(raw) for raw in raws])

    def _script_request(self, script: str, keys: list[str], args: list[Any],
                        decode: Callable[[list[Any]], Any], fresh: Callable[[], Any] | None = None) -> MetaRequest:
        """A script call for the non-blocking client; `retry` repeats it on the blocking
        path with the same keys (so the same operation token) when its reply never came.
        `fresh`: the call to make instead when `decode` says the request must start afresh."""
        sha = self._scripts[script].sha

        def retry() -> Any:
            try:
                return decode(self._eval(script, keys, args))
            except FallBack:
                if fresh is None:
                    raise
                return fresh()

        return MetaRequest(("EVALSHA", sha, len(keys), *keys, self._p, *args), decode, retry)

    def create_file_request(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                            hold: bool = False) -> MetaRequest | None:
        """`mknod` of a regular file as one request (`hold`: also note this session holds it
        open, as a FUSE create does); None when it must take the blocking path (this
        client's batch of inode numbers is used up, or the open bookkeeping is busy)."""
        if stat.S_IFMT(mode) != stat.S_IFREG:
            return None
        _check_new_name(parent, name)
        ino = self._new_ino_nowait()
        if ino is None:
            return None
        sid = self._note_created(ino) if hold else "0"
        if sid is None:
            return None
        attr, args = self._create_args(ino, parent, name, mode, uid, gid, sid=sid)

        def decode(res: list[Any]) -> Attr | tuple[Attr, OwnChange]:
            if res[0] == _INODE_TAKEN:  # nothing happened: create afresh, with a new number
                self._drop_inode_batch()
                raise FallBack("inode number taken")
            self._status(res)
            if len(res) < 3:
                return attr
            return attr, OwnChange(unpack_attr(parent, res[1]), unpack_attr(parent, res[2]))

        return self._script_request("CREATE", [self._dk(parent), self._op_key()], args, decode,
                                    fresh=lambda: self.create_held(parent, name, mode, uid, gid))

    def unlink_request(self, parent: int, name: bytes) -> MetaRequest | None:
        """`unlink` as one request (None: take the blocking path)."""
        if name in (b".", b"..") or (parent == ROOT_INO and name == TRASH_NAME):
            return None
        _check_name(name)
        args = [parent, name, pack_time(time.time_ns()), self._trash_hour()]
        return self._script_request("UNLINK", [self._dk(parent), self._op_key()], args, self._kept_inode)

    def _kept_inode(self, res: list[Any]) -> int | None:
        """What an unlink-like script answered: the inode it kept for its openers (pass it
        to settle_unlinked), or None."""
        self._status(res)
        return int(res[1]) if res[1] and int(res[2]) == _KEPT else None

    def open_request(self, ino: int, hold: bool = True) -> MetaRequest | None:
        """Fresh attributes of `ino` and its first chunk's slices, as (Attr, slices), and
        (`hold`) the note that this session holds it open, as one request: `hold` once
        `open_nowait(ino)` said a note is needed, else for an open of a file held already."""
        sid = self._sid or 0

        def decode(res: list[Any]) -> tuple[Attr, list[Slice]]:
            self._status(res)
            return unpack_attr(ino, res[1]), [unpack_slice(raw) for raw in res[2]]

        return self._script_request("OPEN", [self._ik(ino), self._ck(ino, 0)], [ino, sid, int(hold)], decode)

    def _get_dir(self, ino: int) -> Attr:
        attr = self._get_attr(ino)
        if not attr.is_dir:
            raise FsError(errno.ENOTDIR)
        return attr

    def getattr(self, ino: int) -> Attr:
        return self._get_attr(ino)

    def setattr(self, ino: int, changes: SetAttr) -> Attr:
        now = time.time_ns()
        mask = 0
        mode = uid = gid = size = 0
        atime = mtime = b""
        if changes.mode is not None:
            mask |= 1
            mode = changes.mode & 0o7777
        if changes.uid is not None:
            mask |= 2
            uid = changes.uid
        if changes.gid is not None:
            mask |= 4
            gid = changes.gid
        if changes.atime_now or changes.atime_ns is not None:
            mask |= 8
            atime = pack_time(now if changes.atime_now else changes.atime_ns)  # type: ignore[arg-type]
        if changes.mtime_now or changes.mtime_ns is not None:
            mask |= 16
            mtime = pack_time(now if changes.mtime_now else changes.mtime_ns)  # type: ignore[arg-type]
        if changes.size is not None:
            if changes.size < 0:
                raise FsError(errno.EINVAL)
            if changes.size > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            mask |= 32
            size = changes.size
        res = self._run("SETATTR", [self._ik(ino)],
                        [ino, mask, mode, uid, gid, atime, mtime, pack_time(now), size], token=True)
        return unpack_attr(ino, res[1])

    def _create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                target: bytes = b"", hold: bool = False) -> Attr:
        _check_new_name(parent, name)
        for _attempt in range(3):
            ino = self._new_ino()
            sid = (self._note_created(ino, blocking=True) or "0") if hold else "0"
            attr, args = self._create_args(ino, parent, name, mode, uid, gid, rdev, target, sid=sid)
            res = self._run("CREATE", [self._dk(parent)], args, token=True)
            if res[0] != _INODE_TAKEN:
                return attr
            self._skip_taken_inodes()
        raise MetaError(f"cannot find a free inode number at {self._name}")

    @staticmethod
    def _create_args(ino: int, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                     target: bytes = b"", sid: str | int = "0") -> tuple[Attr, list[Any]]:
        """The new inode's attributes and the CREATE script's arguments after the prefix."""
        now = time.time_ns()
        is_dir = stat.S_ISDIR(mode)
        attr = Attr(ino, mode, uid, gid, nlink=2 if is_dir else 1,
                    size=DIR_SIZE if is_dir else len(target), rdev=rdev,
                    atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent)
        return attr, [parent, name, ino, pack_attr(attr), pack_entry(mode, ino), pack_time(now), target, sid]

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Attr:
        kind = stat.S_IFMT(mode)
        if kind == 0:
            mode |= stat.S_IFREG
        elif kind in (stat.S_IFDIR, stat.S_IFLNK):
            raise FsError(errno.EINVAL, "use mkdir/symlink")
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            rdev = 0
        return self._create(parent, name, mode, uid, gid, rdev)

    def create_held(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """`mknod` of a regular file that this session holds open from the start (a FUSE
        create): the open note is written with the file, saving the open's round trip."""
        return self._create(parent, name, stat.S_IFREG | (mode & 0o7777), uid, gid, hold=True)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        if len(target) > MAX_SYMLINK:
            raise FsError(errno.ENAMETOOLONG, "symlink target too long")
        return self._create(parent, name, stat.S_IFLNK | 0o777, uid, gid, target=target)

    def readlink(self, ino: int) -> bytes:
        target = self._call(self._r.get, f"{self._p}s{ino}")
        if target is None:
            self._get_attr(ino)  # ENOENT when the inode is gone
            raise FsError(errno.EINVAL, "not a symlink")
        return bytes(target)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _check_new_name(new_parent, new_name)
        res = self._run("LINK", [self._dk(new_parent)], [ino, new_parent, new_name, pack_time(time.time_ns())],
                        token=True)
        return unpack_attr(ino, res[1])

    def unlink(self, parent: int, name: bytes, trash: bool = True) -> None:
        """`trash=False` deletes for good even when the volume keeps a trash."""
        if name in (b".", b".."):
            raise FsError(errno.EISDIR)
        _check_name(name)
        _check_not_trash(parent, name)
        hour = self._trash_hour() if trash else ""
        res = self._run("UNLINK", [self._dk(parent)], [parent, name, pack_time(time.time_ns()), hour], token=True)
        if (kept := self._kept_inode(res)) is not None:
            self.settle_unlinked(kept)

    def settle_unlinked(self, ino: int) -> None:
        """After an unlink-like call kept `ino` for its openers: if the only note left may be
        this session's own, of a file it closed already (a lingering release), release it
        now, so that deleting a closed file frees it at once."""
        self.flush_releases(only=ino)

    def rmdir(self, parent: int, name: bytes) -> None:
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        _check_name(name)
        _check_not_trash(parent, name)
        self._run("RMDIR", [self._dk(parent)], [parent, name, pack_time(time.time_ns())], token=True)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "invalid rename flags")
        for n in (name, new_name):
            if n in (b".", b".."):
                raise FsError(errno.EINVAL)
            _check_name(n)
        _check_not_trash(parent, name)
        _check_not_trash(new_parent, new_name)
        usage: list[Any] = ["0", "", "", 0, 0, 0, 0]
        hour = self._trash_hour()
        for _attempt in range(50):
            res = self._run("RENAME", [self._dk(parent)],
                            [parent, name, new_parent, new_name, flags, pack_time(time.time_ns()), hour, *usage],
                            token=True)
            if res[0] == 0:
                if (kept := self._kept_inode(res)) is not None:
                    self.settle_unlinked(kept)
                return
            # Quotas are in place: measure what moves between quota trees, then retry.
            usage = self._rename_usage(parent, name, new_parent, new_name)
        raise MetaError("rename kept conflicting with concurrent changes")

    def _rename_usage(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> list[Any]:
        def build(pipe: Any) -> None:
            pipe.hget(self._dk(parent), name)
            pipe.hget(self._dk(new_parent), new_name)

        src, dst = self._pipe(build)
        out: list[Any] = ["1", "", "", 0, 0, 0, 0]
        for slot, entry, dir_ino in ((0, src, parent), (1, dst, new_parent)):
            if entry is None:
                continue
            ino = entry_ino(entry)
            out[1 + slot] = str(ino)
            try:
                attr = self._get_attr(ino)
            except FsError:
                continue
            if attr.is_dir:
                used_bytes, used_inodes = self._subtree_usage(ino)
                out[3 + 2 * slot], out[4 + 2 * slot] = used_bytes, used_inodes + 1
            elif attr.parent == dir_ino:
                out[3 + 2 * slot], out[4 + 2 * slot] = (attr.size if attr.is_file else 0), 1
        return out

    def _dir_entries(self, ino: int) -> dict[bytes, bytes]:
        """A directory's hash: name → packed entry (ENOENT, ENOTDIR as readdir)."""
        key = self._dk(ino)

        def first(pipe: Any) -> None:
            pipe.get(self._ik(ino))
            pipe.hscan(key, 0, count=10000)

        raw_attr, (cursor, entries) = self._pipe(first)
        if raw_attr is None:
            raise FsError(errno.ENOENT)
        if not unpack_attr(ino, raw_attr).is_dir:
            raise FsError(errno.ENOTDIR)
        while cursor:
            cursor, more = self._call(self._r.hscan, key, cursor, count=10000)
            entries.update(more)
        return entries  # type: ignore[no-any-return]

    def dir_names(self, ino: int) -> list[tuple[bytes, int]]:
        return [(bytes(n), entry_ino(raw)) for n, raw in self._dir_entries(ino).items()]

    def readdir(self, ino: int) -> list[DirEntry]:
        entries = self._dir_entries(ino)
        names = list(entries)
        inos = [entry_ino(entries[n]) for n in names]
        raws: list[bytes | None] = []
        for start in range(0, len(inos), MGET_BATCH):
            raws.extend(self._call(self._r.mget, [self._ik(i) for i in inos[start:start + MGET_BATCH]]))
        return [DirEntry(bytes(n), unpack_attr(i, raw))
                for n, i, raw in zip(names, inos, raws, strict=True) if raw is not None]

    # -- open files -----------------------------------------------------------------------
    def _note_created(self, ino: int, blocking: bool = False) -> str | None:
        """Before a create that notes `ino` open: count the note (lingering until the open
        that follows). The session id to pass, '0' without a session, None if busy."""
        if not self._cond.acquire(blocking=blocking):
            return None
        try:
            if self._sid is None:
                return "0"
            self._noted.add(ino)
            self._linger[ino] = time.monotonic()
            return str(self._sid)
        finally:
            self._cond.release()

    def _count_open(self, ino: int) -> bool:
        """Count a local open (the lock is held, no note of `ino` is in flight); True when
        Redis must note it first: the caller sends OPEN and reports with `_noted_open`."""
        self._held[ino] = self._held.get(ino, 0) + 1
        self._linger.pop(ino, None)
        if self._sid is None or ino in self._noted:
            return False
        self._noting.add(ino)
        return True

    def _noted_open(self, ino: int, ok: bool) -> None:
        """An OPEN sent after `_count_open` said so has ended. Only a success counts as a
        note: after an error (the note may or may not exist) the next open notes again, and
        a release is queued so that a note that does exist goes too."""
        with self._cond:
            self._noting.discard(ino)
            if ok:
                self._noted.add(ino)
            else:
                self._linger[ino] = time.monotonic()
            self._cond.notify_all()

    def _busy_note(self, ino: int) -> bool:
        return ino in self._unnoting or ino in self._noting

    def open_nowait(self, ino: int) -> bool | MetaRequest | None:
        """Count an open of `ino` without waiting: True (counted; fetch the attributes as
        usual), a request (counted; send it: it notes the open and returns the attributes;
        then call `opened(ino, ok)`, and `release` if it failed) or None (a note or release of
        `ino` is in flight, or the lock is busy: use the blocking `open`)."""
        if not self._cond.acquire(blocking=False):
            return None
        try:
            if self._busy_note(ino):
                return None
            if not self._count_open(ino):
                return True
        finally:
            self._cond.release()
        return self.open_request(ino)

    def opened(self, ino: int, ok: bool) -> None:
        """The request `open_nowait` returned has ended (see _noted_open)."""
        self._noted_open(ino, ok)

    def open(self, ino: int, known: Attr | None = None) -> Attr:
        with self._cond:
            while self._busy_note(ino):  # a concurrent open must not trust a note not yet made
                self._cond.wait()
            note = self._count_open(ino)
        try:
            if note:
                try:
                    attr = unpack_attr(ino, self._run("OPEN", [self._ik(ino)], [ino, self._sid or 0, 1])[1])
                except BaseException:
                    self._noted_open(ino, False)
                    raise
                self._noted_open(ino, True)
                return attr
            return known if known is not None else self._get_attr(ino)
        except BaseException:
            self.release(ino)
            raise

    def release_nowait(self, ino: int) -> bool:
        if not self._cond.acquire(blocking=False):
            return False
        try:
            self._count_close(ino)
            return True
        finally:
            self._cond.release()

    def _count_close(self, ino: int) -> None:
        count = self._held.get(ino, 0)
        if count > 1:
            self._held[ino] = count - 1
            return
        self._held.pop(ino, None)
        if ino in self._noted:
            self._linger[ino] = time.monotonic()

    def release(self, ino: int) -> None:
        with self._cond:
            self._count_close(ino)

    def flush_releases(self, min_age: float = 0.0, only: int | None = None) -> int:
        """Drop the open notes of inodes closed at least `min_age` seconds ago (one batch;
        `only`: just that inode, if closed); an unlinked one that no other live session
        holds is freed. Returns how many notes were dropped."""
        with self._cond:
            if self._sid is None:
                return 0
            sid = self._sid
            now = time.monotonic()
            if only is not None:
                batch = [only] if only in self._linger else []
            else:
                batch = [ino for ino, since in self._linger.items() if now - since >= min_age][:RELEASE_BATCH]
            for ino in batch:
                del self._linger[ino]
                self._noted.discard(ino)
                self._unnoting.add(ino)
        if not batch:
            return 0
        try:
            self._run("RELEASE", [f"{self._p}open{sid}"], [sid, *batch])
        except BaseException:
            # The notes may be gone or not: try again later, and let an open before that
            # note again (opens of these inodes waited for us: nobody changed them meanwhile).
            with self._cond:
                for ino in batch:
                    self._linger[ino] = now
            raise
        finally:
            with self._cond:
                self._unnoting.difference_update(batch)
                self._cond.notify_all()
        return len(batch)

    def open_files(self) -> int:
        """Inodes this session holds open or has not released its note of yet."""
        with self._cond:
            return len(self._noted | self._linger.keys())

    def try_lease(self, name: str, seconds: float) -> bool:
        """Whether this client may do the volume-wide chore `name` for the next `seconds`
        (one client at a time; a lease that is not renewed simply runs out)."""
        owner = f"{self._token_prefix}:{self._sid or 0}"
        return bool(self._call(self._r.set, f"{self._p}lease:{name}", owner, nx=True, px=int(seconds * 1000)))

    # -- file data ------------------------------------------------------------------------
    def read(self, ino: int, chunk_index: int) -> list[Slice]:
        raws = self._call(self._r.lrange, self._ck(ino, chunk_index), 0, -1)
        return [unpack_slice(raw) for raw in raws]

    def reserve_slice_ids(self, count: int) -> int:
        if count < 1:
            raise ValueError("count must be positive")
        end = int(self._call(self._r.hincrby, self._counters, "nextslice", count))
        return end - count + 1

    def write(self, ino: int, chunk_index: int, piece: Slice, mtime_ns: int) -> Attr:
        res = self._run("WRITE", [self._ck(ino, chunk_index)], self._write_args(ino, chunk_index, piece, mtime_ns))
        return unpack_attr(ino, res[1])

    def write_request(self, ino: int, chunk_index: int, piece: Slice, mtime_ns: int) -> MetaRequest:
        """`write` as one request for the non-blocking client. WRITE is safe to repeat (a
        slice already in the list, or already garbage, is not added again)."""
        args = self._write_args(ino, chunk_index, piece, mtime_ns)

        def decode(res: list[Any]) -> Attr | tuple[Attr, OwnChange]:
            after = unpack_attr(ino, self._status(res)[1])
            if len(res) < 4:  # an earlier attempt committed it: no "before" to tell
                return after
            return after, OwnChange(unpack_attr(ino, res[3]), after)

        return self._script_request("WRITE", [self._ck(ino, chunk_index)], args, decode)

    @staticmethod
    def _write_args(ino: int, chunk_index: int, piece: Slice, mtime_ns: int) -> list[Any]:
        if piece.end > CHUNK_SIZE or piece.pos < 0 or piece.length <= 0 or chunk_index < 0:
            raise FsError(errno.EINVAL, "slice outside its chunk")
        end = chunk_index * CHUNK_SIZE + piece.end
        return [ino, chunk_index, pack_slice(piece), pack_time(mtime_ns), end]

    def compact(self, ino: int, chunk_index: int, old: list[Slice], new: Slice) -> bool:
        if not old:
            return False
        res = self._run("COMPACT", [self._ck(ino, chunk_index)],
                        [len(old), pack_slice(new), *(pack_slice(s) for s in old)])
        return bool(res[1])

    # -- garbage --------------------------------------------------------------------------
    def take_garbage(self, limit: int) -> GarbageBatch:
        if limit <= 0:
            return GarbageBatch()
        res = self._run("TAKE_GARBAGE", [self._delayed],
                        [limit, GARBAGE_CHUNK_BUDGET, repr(self.garbage_delay), repr(self.garbage_lease)])
        return GarbageBatch([unpack_garbage(raw) for raw in res[1]], int(res[2]) if len(res) > 2 else 0)

    def ack_garbage(self, items: list[tuple[int, int]]) -> None:
        if items:
            self._run("ACK_GARBAGE", [self._delayed], [pack_garbage(i, s) for i, s in items])

    # -- extended attributes --------------------------------------------------------------
    def _xattr_pair(self, ino: int, op: Callable[[Any], Any]) -> Any:
        """Run `op` on a pipeline together with an existence check of the inode."""
        def build(pipe: Any) -> None:
            op(pipe)
            pipe.exists(self._ik(ino))

        value, exists = self._pipe(build)
        if not exists:
            raise FsError(errno.ENOENT)
        return value

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name or len(name) > MAX_XATTR_NAME:
            raise FsError(errno.ERANGE, "bad extended attribute name length")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        value = self._xattr_pair(ino, lambda p: p.hget(f"{self._p}x{ino}", name))
        if value is None:
            raise FsError(errno.ENODATA)
        return bytes(value)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._check_xattr_name(name)
        if flags not in (0, XATTR_CREATE, XATTR_REPLACE):
            raise FsError(errno.EINVAL, "invalid xattr flags")
        self._run("SETXATTR", [f"{self._p}x{ino}"], [ino, name, value, flags, pack_time(time.time_ns())],
                  token=True)

    def listxattr(self, ino: int) -> list[bytes]:
        names = self._xattr_pair(ino, lambda p: p.hkeys(f"{self._p}x{ino}"))
        return [bytes(n) for n in names]

    def removexattr(self, ino: int, name: bytes) -> None:
        self._check_xattr_name(name)
        self._run("REMOVEXATTR", [f"{self._p}x{ino}"], [ino, name, pack_time(time.time_ns())], token=True)

    # -- directory quotas -----------------------------------------------------------------
    def _subtree_usage(self, root: int) -> tuple[int, int]:
        """Bytes and inodes charged below directory `root` (a walk, level by level). Like
        the scripts, an inode counts under the directory its `parent` field names."""
        used_bytes = used_inodes = 0
        level = [root]
        while level:
            children: list[tuple[int, int]] = []  # (dir, child)
            for start in range(0, len(level), 100):
                batch = level[start:start + 100]

                def build(pipe: Any, batch: list[int] = batch) -> None:
                    for d in batch:
                        pipe.hvals(self._dk(d))

                for d, values in zip(batch, self._pipe(build), strict=True):
                    children.extend((d, entry_ino(v)) for v in values)
            raws: list[bytes | None] = []
            for start in range(0, len(children), MGET_BATCH):
                raws.extend(self._call(self._r.mget, [self._ik(c) for _, c in children[start:start + MGET_BATCH]]))
            level = []
            for (d, child), raw in zip(children, raws, strict=True):
                if raw is None:
                    continue
                attr = unpack_attr(child, raw)
                if attr.parent != d:
                    continue
                used_inodes += 1
                if attr.is_file:
                    used_bytes += attr.size
                elif attr.is_dir:
                    level.append(child)
        return used_bytes, used_inodes

    def set_quota(self, ino: int, max_bytes: int, max_inodes: int) -> None:
        if max_bytes < 0 or max_inodes < 0:
            raise FsError(errno.EINVAL, "quota limits must not be negative")
        self._get_dir(ino)
        used_bytes, used_inodes = self._subtree_usage(ino)
        self._run("SET_QUOTA", [self._quota],
                  [ino, _QUOTA.pack(max_bytes, max_inodes), used_bytes, used_inodes])

    def get_quota(self, ino: int) -> Quota | None:
        def build(pipe: Any) -> None:
            pipe.hget(self._quota, str(ino))
            pipe.hmget(self._qused, [f"{ino}b", f"{ino}i"])

        limits, (used_bytes, used_inodes) = self._pipe(build)
        if limits is None:
            return None
        max_bytes, max_inodes = _QUOTA.unpack(limits)
        return Quota(max_bytes, max_inodes, int(used_bytes or 0), int(used_inodes or 0))

    def del_quota(self, ino: int) -> None:
        # Not atomic on purpose: usage counters left by a crash are overwritten by the next
        # set_quota and read by nobody else.
        def build(pipe: Any) -> None:
            pipe.hdel(self._quota, str(ino))
            pipe.hdel(self._qused, f"{ino}b", f"{ino}i")

        self._pipe(build)
