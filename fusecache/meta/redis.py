"""The Redis metadata engine.

Key schema. Every key of a volume starts with the hash tag `{P}` (P = the URL's `prefix`,
default "fc"), so all of them live in one Redis Cluster slot and a Lua script may touch
any of them. Numbers in key names are decimal.

    {P}setting          string  VolumeSettings as JSON (written by `format`)
    {P}counters         hash    nextinode, nextslice, nextsession (allocation counters),
                                usedspace (sum of file lengths), usedinodes (excluding
                                the root), capacity and maxinodes (limits, 0 = none)
    {P}i<ino>           string  attributes, packed by codec.ATTR (60 bytes)
    {P}d<ino>           hash    directory entries: name -> type byte + decimal inode
    {P}s<ino>           string  symlink target
    {P}x<ino>           hash    extended attributes: name -> value
    {P}c<ino>_<index>   list    slices of one chunk in commit order, packed by codec.SLICE
    {P}k<ino>           set     indexes of the chunks of <ino> that have a slice list
    {P}delfiles         set     freed file inodes whose chunks still await take_garbage
    {P}garbage          set     slice objects to delete: codec.GARBAGE (id, size), 12 bytes
    {P}sessions         zset    session id scored by its last heartbeat (server clock)
    {P}sessinfo         hash    session id -> "<started> <JSON host/pid/mountpoint/version>"
    {P}sustained<sid>   set     inodes unlinked while session <sid> held them open
    {P}quota            hash    directory inode -> packed (max_bytes, max_inodes)
    {P}qused            hash    "<ino>b" / "<ino>i" -> bytes / inodes used under a quota

Invariants kept by the Lua scripts (lua.py), each of which runs atomically:
- an entry in {P}d<dir> names an inode whose {P}i key exists (rmdir/unlink/rename remove
  the entry and release the inode in the same script);
- a directory's nlink is 2 + its subdirectories; its `parent` field is its parent; a
  file's `parent` is the directory its usage is charged to (0 after it lost that link);
- a chunk exists only below the file length's chunk count (truncate drops the rest);
- a slice id leaves the metadata only by entering {P}garbage (directly, or through
  {P}delfiles and a later take_garbage), so no object leaks and none is freed early.

Failure model: a script either ran entirely or not at all, so a client dying at any point
leaves the namespace consistent. A lost connection is retried (connect.py); if the reply
of a script that did run is what got lost, the retry reports what it finds (EEXIST for a
create that happened). Quota usage of a directory moved between quota trees, and the usage
counted by set_quota, are measured by a walk outside the script, so concurrent writes
inside the moving subtree can leave them slightly off; set_quota recounts.
"""

from __future__ import annotations

import errno
import json
import logging
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from ..errors import FsError, MetaError
from ..layout import CHUNK_SIZE, MAX_FILE_SIZE
from ..types import (
    ROOT_INO,
    Attr,
    DirEntry,
    Quota,
    SessionInfo,
    SetAttr,
    Slice,
    StatFs,
    VolumeSettings,
)
from . import lua
from .aio import DirectAddress, MetaRequest
from .base import MAX_NAME, MAX_XATTR_NAME, RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, Meta
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

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster

INODE_BATCH = 64  # inode numbers reserved per round trip; a crash only leaves a gap
MGET_BATCH = 2000
DIR_SIZE = 4096
MAX_SYMLINK = 4096
UNLIMITED_BYTES = 1 << 50  # what statfs reports as total when the volume has no capacity
UNLIMITED_INODES = 1 << 30
GARBAGE_CHUNK_BUDGET = 256  # deleted-file chunks expanded per take_garbage call
_QUOTA = struct.Struct("<QQ")
_SUSTAINED = 1  # fate of an inode kept by the session when its last link went (lua.drop_link)
MAX_HELD_LISTED = 128  # more open files than this: unlink keeps every inode, settled after


def _check_name(name: bytes) -> None:
    if len(name) > MAX_NAME:
        raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, "invalid file name")


def _check_new_name(name: bytes) -> None:
    _check_name(name)
    if name in (b".", b".."):
        raise FsError(errno.EEXIST)


class RedisMeta(Meta):
    """Metadata in one Redis database (standalone, Sentinel-managed or Cluster).

    Thread-safe: redis-py's pool hands each call its own connection; the engine's own
    state (inode batch, open-file counts of this session) is guarded by locks.
    """

    def __init__(self, client: Client, prefix: str = "fc", name: str = "redis") -> None:
        self._r = client
        self._p = "{" + prefix + "}"
        self._name = name  # the redacted URL, for messages
        self._counters = self._p + "counters"
        self._garbage = self._p + "garbage"
        self._sessions = self._p + "sessions"
        self._setting = self._p + "setting"
        self._quota = self._p + "quota"
        self._qused = self._p + "qused"
        self._scripts: dict[str, Script] = {}
        for attr_name in ("LOOKUP", "CREATE", "UNLINK", "RMDIR", "LINK", "RENAME", "SETATTR",
                          "WRITE", "COMPACT", "TAKE_GARBAGE", "SETXATTR", "REMOVEXATTR",
                          "NEW_SESSION", "HEARTBEAT", "STALE_SESSIONS", "CLOSE_SESSION",
                          "RELEASE_SUSTAINED", "STATFS", "SET_QUOTA", "FORMAT"):
            self._scripts[attr_name] = client.register_script(lua.script(getattr(lua, attr_name)))
        self._ino_lock = threading.Lock()
        self._ino_next = 0
        self._ino_end = 0
        # Open files of this session. Unlink-like scripts get the open inodes and keep
        # those losing their last link under the session (nlink 0); the last release frees
        # them. `open` waits for unlinks in flight that did not see its inode and for inodes
        # being freed, so it never returns an inode that is about to vanish.
        self._sid: int | None = None
        self._cond = threading.Condition()
        self._opened: dict[int, int] = {}  # ino -> open count
        self._sustained: set[int] = set()  # unlinked, kept while open
        self._freeing: set[int] = set()  # last release in progress
        self._unlink_seq = 0
        self._unlinks: set[int] = set()  # tickets of unlink-like calls in flight

    # -- plumbing -------------------------------------------------------------------------
    def _ik(self, ino: int | str) -> str:
        return f"{self._p}i{ino}"

    def _dk(self, ino: int | str) -> str:
        return f"{self._p}d{ino}"

    def _ck(self, ino: int, index: int) -> str:
        return f"{self._p}c{ino}_{index}"

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

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """Run a Lua script; a positive status becomes FsError, -1 is returned."""
        with self._errors():
            res = self._scripts[script](keys=keys, args=[self._p, *args])
        if res[0] > 0:
            raise FsError(res[0])
        return res

    def _new_ino(self) -> int:
        with self._ino_lock:
            if self._ino_next >= self._ino_end:
                with self._errors():
                    end = int(self._r.hincrby(self._counters, "nextinode", INODE_BATCH))
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

    def _get_attr(self, ino: int) -> Attr:
        with self._errors():
            raw = self._r.get(self._ik(ino))
        if raw is None:
            raise FsError(errno.ENOENT)
        return unpack_attr(ino, raw)

    # -- volume ---------------------------------------------------------------------------
    def format(self, settings: VolumeSettings, force: bool = False) -> None:
        now = time.time_ns()
        root = Attr(ROOT_INO, stat.S_IFDIR | 0o777, nlink=2, size=DIR_SIZE,
                    atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO)
        self._run("FORMAT", [self._setting], [settings.to_json(), settings.capacity, settings.inodes,
                                              pack_attr(root), "1" if force else "0"])

    def load(self) -> VolumeSettings:
        with self._errors():
            raw = self._r.get(self._setting)
        if raw is None:
            raise MetaError(f"volume not formatted at {self._name}: run 'fusecache format' first")
        try:
            return VolumeSettings.from_json(raw)
        except (ValueError, TypeError) as exc:
            raise MetaError(f"corrupt volume settings at {self._name}: {exc}") from None

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

    def shutdown(self) -> None:
        with self._errors():
            self._r.close()
            if isinstance(self._r, redis.Redis):
                # A pool handed to the client is not closed by client.close().
                self._r.connection_pool.disconnect()

    # -- sessions -------------------------------------------------------------------------
    def new_session(self, host: str, pid: int, mountpoint: str, version: str) -> int:
        info = json.dumps({"host": host, "pid": pid, "mountpoint": mountpoint, "version": version})
        res = self._run("NEW_SESSION", [self._sessions], [info])
        self._sid = int(res[1])
        log.info("session %d started on %s", self._sid, self._name)
        return self._sid

    def heartbeat(self, sid: int) -> None:
        res = self._run("HEARTBEAT", [self._sessions], [sid])
        if not res[1]:
            log.warning("session %d is no longer registered (cleaned as stale?)", sid)

    def close_session(self, sid: int) -> None:
        res = self._run("CLOSE_SESSION", [self._sessions], [sid])
        if sid == self._sid:
            with self._cond:
                self._sid = None
                self._sustained.clear()
        log.info("session %d closed, %d unlinked open files freed", sid, res[1])

    def list_sessions(self) -> list[SessionInfo]:
        with self._errors():
            beats = self._r.zrange(self._sessions, 0, -1, withscores=True)
            infos = self._r.hmget(self._p + "sessinfo", [sid for sid, _ in beats]) if beats else []
        out = []
        for (sid, beat), raw in zip(beats, infos, strict=True):
            if raw is None:
                continue
            started, _, text = raw.partition(b" ")
            info = json.loads(text)
            out.append(SessionInfo(int(sid), info["host"], int(info["pid"]), info["mountpoint"],
                                   info["version"], float(started), float(beat)))
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
        _check_name(name)
        res = self._run("LOOKUP", [self._dk(parent)], [parent, name])
        return unpack_attr(int(res[1]), res[2])

    # -- the same reads for a non-blocking client (meta/aio.py) --------------------------
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

    def lookup_request(self, parent: int, name: bytes) -> MetaRequest | None:
        if name in (b".", b".."):
            return None
        _check_name(name)

        def decode(res: list[Any]) -> Attr:
            if res[0] > 0:
                raise FsError(res[0])
            return unpack_attr(int(res[1]), res[2])

        script = self._scripts["LOOKUP"]
        return MetaRequest(("EVALSHA", script.sha, 1, self._dk(parent), self._p, parent, name), decode)

    def getattr_request(self, ino: int) -> MetaRequest:
        def decode(raw: bytes | None) -> Attr:
            if raw is None:
                raise FsError(errno.ENOENT)
            return unpack_attr(ino, raw)

        return MetaRequest(("GET", self._ik(ino)), decode)

    def read_request(self, ino: int, chunk_index: int) -> MetaRequest:
        return MetaRequest(("LRANGE", self._ck(ino, chunk_index), 0, -1),
                           lambda raws: [unpack_slice(raw) for raw in raws])

    def create_file_request(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> MetaRequest | None:
        """`mknod` of a regular file as one request; None when it must take the blocking
        path (this client's batch of inode numbers is used up)."""
        if stat.S_IFMT(mode) != stat.S_IFREG:
            return None
        _check_new_name(name)
        ino = self._new_ino_nowait()
        if ino is None:
            return None
        attr, args = self._create_args(ino, parent, name, mode, uid, gid)

        def decode(res: list[Any]) -> Attr:
            if res[0] > 0:
                raise FsError(res[0])
            return attr

        script = self._scripts["CREATE"]
        return MetaRequest(("EVALSHA", script.sha, 1, self._dk(parent), self._p, *args), decode)

    def unlink_request(self, parent: int, name: bytes) -> tuple[MetaRequest, Callable[[], None]] | None:
        """`unlink` as one request, and the call that must follow it however it ends (it
        ends the registration `open` waits for). The request decodes to the inode this
        session kept (it was open: pass it to `settle_unlinked`), or None. None instead of
        a request when the session's bookkeeping is busy: take the blocking path."""
        if name in (b".", b".."):
            return None
        _check_name(name)
        started = self._unlink_begin(blocking=False)
        if started is None:
            return None
        keep, ticket = started

        def decode(res: list[Any]) -> int | None:
            if res[0] > 0:
                raise FsError(res[0])
            return int(res[1]) if int(res[2]) == _SUSTAINED else None

        script = self._scripts["UNLINK"]
        request = MetaRequest(("EVALSHA", script.sha, 1, self._dk(parent), self._p, parent, name,
                               pack_time(time.time_ns()), keep), decode)
        return request, lambda: self._unlink_end(ticket)

    def settle_unlinked(self, ino: int) -> None:
        """After `unlink_request` kept `ino`: keep it while open, else free it."""
        self._settle(ino, _SUSTAINED)

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
                        [ino, mask, mode, uid, gid, atime, mtime, pack_time(now), size])
        return unpack_attr(ino, res[1])

    def _create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                target: bytes = b"") -> Attr:
        _check_new_name(name)
        attr, args = self._create_args(self._new_ino(), parent, name, mode, uid, gid, rdev, target)
        self._run("CREATE", [self._dk(parent)], args)
        return attr

    @staticmethod
    def _create_args(ino: int, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                     target: bytes = b"") -> tuple[Attr, list[Any]]:
        """The new inode's attributes and the CREATE script's arguments after the prefix."""
        now = time.time_ns()
        is_dir = stat.S_ISDIR(mode)
        attr = Attr(ino, mode, uid, gid, nlink=2 if is_dir else 1,
                    size=DIR_SIZE if is_dir else len(target), rdev=rdev,
                    atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent)
        return attr, [parent, name, ino, pack_attr(attr), pack_entry(mode, ino), pack_time(now), target]

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Attr:
        kind = stat.S_IFMT(mode)
        if kind == 0:
            mode |= stat.S_IFREG
        elif kind in (stat.S_IFDIR, stat.S_IFLNK):
            raise FsError(errno.EINVAL, "use mkdir/symlink")
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            rdev = 0
        return self._create(parent, name, mode, uid, gid, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        if len(target) > MAX_SYMLINK:
            raise FsError(errno.ENAMETOOLONG, "symlink target too long")
        return self._create(parent, name, stat.S_IFLNK | 0o777, uid, gid, target=target)

    def readlink(self, ino: int) -> bytes:
        with self._errors():
            target = self._r.get(f"{self._p}s{ino}")
        if target is None:
            self._get_attr(ino)  # ENOENT when the inode is gone
            raise FsError(errno.EINVAL, "not a symlink")
        return bytes(target)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _check_new_name(new_name)
        res = self._run("LINK", [self._dk(new_parent)], [ino, new_parent, new_name, pack_time(time.time_ns())])
        return unpack_attr(ino, res[1])

    def unlink(self, parent: int, name: bytes) -> None:
        if name in (b".", b".."):
            raise FsError(errno.EISDIR)
        _check_name(name)
        with self._unlinking() as keep:
            res = self._run("UNLINK", [self._dk(parent)], [parent, name, pack_time(time.time_ns()), keep])
        self._settle(int(res[1]), res[2])

    def rmdir(self, parent: int, name: bytes) -> None:
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        _check_name(name)
        self._run("RMDIR", [self._dk(parent)], [parent, name, pack_time(time.time_ns())])

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "invalid rename flags")
        for n in (name, new_name):
            if n in (b".", b".."):
                raise FsError(errno.EINVAL)
            _check_name(n)
        usage: list[Any] = ["0", "", "", 0, 0, 0, 0]
        with self._unlinking() as keep:
            for _attempt in range(50):
                res = self._run("RENAME", [self._dk(parent)],
                                [parent, name, new_parent, new_name, flags, pack_time(time.time_ns()),
                                 keep, *usage])
                if res[0] == 0:
                    break
                # Quotas are in place: measure what moves between quota trees, then retry.
                usage = self._rename_usage(parent, name, new_parent, new_name)
            else:
                raise MetaError("rename kept conflicting with concurrent changes")
        if res[1]:
            self._settle(int(res[1]), res[2])

    def _rename_usage(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> list[Any]:
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.hget(self._dk(parent), name)
            pipe.hget(self._dk(new_parent), new_name)
            src, dst = pipe.execute()
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

    def readdir(self, ino: int) -> list[DirEntry]:
        key = self._dk(ino)
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.get(self._ik(ino))
            pipe.hscan(key, 0, count=10000)
            raw_attr, (cursor, entries) = pipe.execute()
            if raw_attr is None:
                raise FsError(errno.ENOENT)
            if not unpack_attr(ino, raw_attr).is_dir:
                raise FsError(errno.ENOTDIR)
            while cursor:
                cursor, more = self._r.hscan(key, cursor, count=10000)
                entries.update(more)
            names = list(entries)
            inos = [entry_ino(entries[n]) for n in names]
            raws: list[bytes | None] = []
            for start in range(0, len(inos), MGET_BATCH):
                raws.extend(self._r.mget([self._ik(i) for i in inos[start:start + MGET_BATCH]]))
        return [DirEntry(bytes(n), unpack_attr(i, raw))
                for n, i, raw in zip(names, inos, raws, strict=True) if raw is not None]

    # -- open files -----------------------------------------------------------------------
    @contextmanager
    def _unlinking(self) -> Iterator[str]:
        """The `keep` argument of an unlink-like script: which inodes this session keeps
        when their last link goes (lua.keeper). The call stays registered until it is done,
        so that `open` can wait for calls whose snapshot missed its inode."""
        started = self._unlink_begin(blocking=True)
        assert started is not None
        keep, ticket = started
        try:
            yield keep
        finally:
            self._unlink_end(ticket)

    def _unlink_begin(self, blocking: bool) -> tuple[str, int] | None:
        """Register an unlink-like call: its `keep` argument and its ticket."""
        if not self._cond.acquire(blocking=blocking):
            return None
        try:
            if self._sid is None or not self._opened:
                keep = "0"
            elif len(self._opened) > MAX_HELD_LISTED:
                keep = f"{self._sid}:*"
            else:
                keep = f"{self._sid}:,{','.join(map(str, self._opened))},"
            self._unlink_seq += 1
            ticket = self._unlink_seq
            self._unlinks.add(ticket)
            return keep, ticket
        finally:
            self._cond.release()

    def _unlink_end(self, ticket: int) -> None:
        with self._cond:
            self._unlinks.discard(ticket)
            self._cond.notify_all()

    def _settle(self, ino: int, fate: int) -> None:
        """After a script kept `ino` for this session: keep it while open, else free it
        (it was closed meanwhile, or the script kept every inode)."""
        if fate != _SUSTAINED:
            return
        with self._cond:
            if self._opened.get(ino):
                self._sustained.add(ino)
                return
            self._freeing.add(ino)
        self._free_sustained(ino)

    def _free_sustained(self, ino: int) -> None:
        try:
            self._run("RELEASE_SUSTAINED", [f"{self._p}sustained{self._sid}"], [ino])
        finally:
            with self._cond:
                self._freeing.discard(ino)
                self._cond.notify_all()

    def open_nowait(self, ino: int) -> bool:
        if not self._cond.acquire(blocking=False):
            return False
        try:
            if ino in self._freeing or self._unlinks:
                return False  # `open` would wait for these
            self._opened[ino] = self._opened.get(ino, 0) + 1
            return True
        finally:
            self._cond.release()

    def release_nowait(self, ino: int) -> bool:
        if not self._cond.acquire(blocking=False):
            return False
        try:
            count = self._opened.get(ino, 0)
            if count > 1:
                self._opened[ino] = count - 1
                return True
            if ino in self._sustained:
                return False  # the last close of an unlinked file frees it: a server call
            self._opened.pop(ino, None)
            return True
        finally:
            self._cond.release()

    def open(self, ino: int, known: Attr | None = None) -> Attr:
        with self._cond:
            self._opened[ino] = self._opened.get(ino, 0) + 1
            seen = self._unlink_seq
            while ino in self._freeing or any(t <= seen for t in self._unlinks):
                self._cond.wait()
        if known is not None:
            return known
        try:
            return self._get_attr(ino)
        except BaseException:
            self._drop_open(ino)
            raise

    def _drop_open(self, ino: int) -> bool:
        """Count one close; True when it was the last one of a kept (unlinked) inode."""
        with self._cond:
            count = self._opened.get(ino, 0)
            if count > 1:
                self._opened[ino] = count - 1
                return False
            self._opened.pop(ino, None)
            if ino not in self._sustained:
                return False
            self._sustained.discard(ino)
            self._freeing.add(ino)
            return True

    def release(self, ino: int) -> None:
        if self._drop_open(ino):
            self._free_sustained(ino)

    # -- file data ------------------------------------------------------------------------
    def read(self, ino: int, chunk_index: int) -> list[Slice]:
        with self._errors():
            raws = self._r.lrange(self._ck(ino, chunk_index), 0, -1)
        return [unpack_slice(raw) for raw in raws]

    def reserve_slice_ids(self, count: int) -> int:
        if count < 1:
            raise ValueError("count must be positive")
        with self._errors():
            end = int(self._r.hincrby(self._counters, "nextslice", count))
        return end - count + 1

    def write(self, ino: int, chunk_index: int, piece: Slice, mtime_ns: int) -> Attr:
        if piece.end > CHUNK_SIZE or piece.pos < 0 or piece.length <= 0 or chunk_index < 0:
            raise FsError(errno.EINVAL, "slice outside its chunk")
        end = chunk_index * CHUNK_SIZE + piece.end
        res = self._run("WRITE", [self._ck(ino, chunk_index)],
                        [ino, chunk_index, pack_slice(piece), pack_time(mtime_ns), end])
        return unpack_attr(ino, res[1])

    def compact(self, ino: int, chunk_index: int, old: list[Slice], new: Slice) -> bool:
        if not old:
            return False
        res = self._run("COMPACT", [self._ck(ino, chunk_index)],
                        [len(old), pack_slice(new), *(pack_slice(s) for s in old)])
        return bool(res[1])

    # -- garbage --------------------------------------------------------------------------
    def take_garbage(self, limit: int) -> list[tuple[int, int]]:
        if limit <= 0:
            return []
        res = self._run("TAKE_GARBAGE", [self._garbage], [limit, GARBAGE_CHUNK_BUDGET])
        return [unpack_garbage(raw) for raw in res[1]]

    def ack_garbage(self, items: list[tuple[int, int]]) -> None:
        if not items:
            return
        with self._errors():
            self._r.srem(self._garbage, *(pack_garbage(i, s) for i, s in items))

    # -- extended attributes --------------------------------------------------------------
    def _xattr_pair(self, ino: int, op: Callable[[Any], Any]) -> Any:
        """Run `op` on a pipeline together with an existence check of the inode."""
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            op(pipe)
            pipe.exists(self._ik(ino))
            value, exists = pipe.execute()
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
        self._run("SETXATTR", [f"{self._p}x{ino}"], [ino, name, value, flags, pack_time(time.time_ns())])

    def listxattr(self, ino: int) -> list[bytes]:
        names = self._xattr_pair(ino, lambda p: p.hkeys(f"{self._p}x{ino}"))
        return [bytes(n) for n in names]

    def removexattr(self, ino: int, name: bytes) -> None:
        self._check_xattr_name(name)
        self._run("REMOVEXATTR", [f"{self._p}x{ino}"], [ino, name, pack_time(time.time_ns())])

    # -- directory quotas -----------------------------------------------------------------
    def _subtree_usage(self, root: int) -> tuple[int, int]:
        """Bytes and inodes charged below directory `root` (a walk, level by level). Like
        the scripts, an inode counts under the directory its `parent` field names."""
        used_bytes = used_inodes = 0
        level = [root]
        while level:
            children: list[tuple[int, int]] = []  # (dir, child)
            with self._errors():
                for start in range(0, len(level), 100):
                    pipe = self._r.pipeline(transaction=False)
                    batch = level[start:start + 100]
                    for d in batch:
                        pipe.hvals(self._dk(d))
                    for d, values in zip(batch, pipe.execute(), strict=True):
                        children.extend((d, entry_ino(v)) for v in values)
                raws: list[bytes | None] = []
                for start in range(0, len(children), MGET_BATCH):
                    raws.extend(self._r.mget([self._ik(c) for _, c in children[start:start + MGET_BATCH]]))
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
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.hget(self._quota, str(ino))
            pipe.hmget(self._qused, [f"{ino}b", f"{ino}i"])
            limits, (used_bytes, used_inodes) = pipe.execute()
        if limits is None:
            return None
        max_bytes, max_inodes = _QUOTA.unpack(limits)
        return Quota(max_bytes, max_inodes, int(used_bytes or 0), int(used_inodes or 0))

    def del_quota(self, ino: int) -> None:
        with self._errors():
            # Not atomic on purpose: usage counters left by a crash are overwritten by
            # the next set_quota and read by nobody else.
            pipe = self._r.pipeline(transaction=False)
            pipe.hdel(self._quota, str(ino))
            pipe.hdel(self._qused, f"{ino}b", f"{ino}i")
            pipe.execute()
