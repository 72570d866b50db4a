"""A non-blocking Redis path for the hottest metadata calls, on the trio loop.

Every FUSE lookup/getattr would otherwise pay a hand-off to a worker thread and back: on
a busy 2-core node those extra wake-ups cost more than the Redis round trip itself. The
engine describes such a call as a `MetaRequest` (a Redis command plus a decoder; the
engine keeps its key schema and codecs to itself), and `AsyncRedis` sends it over a
non-blocking socket that trio watches, and parses the reply with hiredis. Nothing here
blocks the loop.

Anything unusual (a script not loaded yet, a lost connection, a server that does not
answer within SOCKET_TIMEOUT, TLS/Sentinel/Cluster deployments) falls back to the engine's
own blocking call in a worker thread, which has the retries and error translation. A
request that may have reached the server is repeated there as it was (`MetaRequest.retry`:
same operation token, same inode number), so a change never happens twice.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NamedTuple

import hiredis
import trio

from ..latency import Histograms
from ..types import DirEntry
from .connect import SOCKET_TIMEOUT
from .tracking import MetaCache

BUILT_LISTINGS = 256  # directories whose built entry lists are kept (FastCalls.readdir)
ATTR_BATCH = 2000  # attributes one MGET of a listing asks for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectAddress:
    """Where a plain (TCP, no TLS) standalone Redis listens, and how to log in."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class MetaRequest:
    command: tuple[Any, ...]
    decode: Callable[[Any], Any]  # raises FsError for namespace errors, FallBack to go blocking
    # The same request on the blocking path (after a fallback that may have sent it);
    # None: just make the plain blocking call.
    retry: Callable[[], Any] | None = None


class FallBack(Exception):
    """The request must go the blocking way (and will succeed or fail properly there)."""


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return str(arg).encode()
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def pack_command(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection:
    """One Redis connection on a raw non-blocking socket.

    Trio's SocketStream yields to the scheduler on every send and the semaphore on every
    acquire; at thousands of lookups a second those extra scheduler passes cost more than
    the round trip. Here a call sends at once and waits only for the reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = hiredis.Reader()
        self.since = 0.0  # trio clock when the call in progress started (0: idle)

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def call(self, *args: Any) -> Any:
        self.since = trio.current_time()
        try:
            return await self._call(*args)
        except trio.ClosedResourceError:
            raise TimeoutError("no reply in time") from None  # AsyncRedis.watch gave up on it
        finally:
            self.since = 0.0

    async def _call(self, *args: Any) -> Any:
        data = memoryview(pack_command(*args))
        while data:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            await trio.lowlevel.wait_readable(self.sock)  # a reply is never there at once
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionResetError("Redis closed the connection")
            self.reader.feed(chunk)

    def expire(self) -> None:
        """Wake the call waiting on this connection with ClosedResourceError."""
        trio.lowlevel.notify_closing(self.sock)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class AsyncRedis:
    """A small pool of non-blocking connections.

    Every wait is bounded by `timeout` (a connect, a reply, a free connection), then the
    caller falls back to the blocking path. Replies are bounded by `watch()`, one task that
    looks at the calls in progress a few times a second: a deadline per call (a trio cancel
    scope) cost more than the rest of a lookup's client-side work."""

    def __init__(self, address: DirectAddress, max_connections: int = 8, timeout: float = SOCKET_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._busy: set[_Connection] = set()
        self._idle: list[_Connection] = []
        self._open = 0  # connections in use or idle
        self._max = max_connections
        self._waiters = trio.lowlevel.ParkingLot()

    async def watch(self) -> None:
        """Run for as long as the client is used: calls without a reply for `timeout`
        seconds fail (their connection is dropped)."""
        while True:
            await trio.sleep(self.timeout / 5)
            now = trio.current_time()
            for conn in list(self._busy):
                if conn.since and now - conn.since > self.timeout:
                    log.warning("Redis gave no reply in %.0f s; dropping the connection", self.timeout)
                    conn.expire()

    async def _connect(self) -> _Connection:
        with trio.fail_after(self.timeout):
            return await self._connect_now()

    async def _connect_now(self) -> _Connection:
        conn = await _Connection.open(self.address.host, self.address.port)
        try:
            if self.address.password is not None:
                auth = ("AUTH", self.address.username, self.address.password) if self.address.username \
                    else ("AUTH", self.address.password)
                if isinstance(await conn.call(*auth), hiredis.ReplyError):
                    raise FallBack("authentication refused")
            if self.address.db and isinstance(await conn.call("SELECT", self.address.db), hiredis.ReplyError):
                raise FallBack("SELECT refused")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _acquire(self) -> _Connection:
        if not self._idle and self._open >= self._max:
            with trio.fail_after(self.timeout):  # only when the pool is exhausted
                while not self._idle and self._open >= self._max:
                    await self._waiters.park()
        if self._idle:
            return self._idle.pop()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._waiters.unpark()
            raise

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()
        self._open -= 1
        self._waiters.unpark()

    async def execute(self, *args: Any) -> Any:
        """One command's reply; FallBack on any error reply, connection trouble or timeout."""
        try:
            conn = await self._acquire()
        except (OSError, hiredis.ProtocolError, trio.TooSlowError) as exc:
            raise FallBack(str(exc) or "no free connection in time") from None
        self._busy.add(conn)
        try:
            reply = await conn.call(*args)
        except (OSError, hiredis.ProtocolError) as exc:
            self._discard(conn)  # a reply may still come: this connection is done for
            raise FallBack(str(exc) or "no reply in time") from None
        except BaseException:
            self._discard(conn)  # cancelled mid-call: the reply would confuse the next caller
            raise
        self._busy.discard(conn)
        self._idle.append(conn)
        self._waiters.unpark()
        if isinstance(reply, hiredis.ReplyError):
            raise FallBack(str(reply))  # e.g. NOSCRIPT: the blocking path loads the script
        return reply

    async def aclose(self) -> None:
        for conn in self._idle:
            self._discard(conn)
        self._idle.clear()


class ChangeFeed:
    """Redis's notices of changed inode and directory keys, fed to a MetaCache.

    One connection asks for broadcast tracking of the two key prefixes, redirected to
    itself, and subscribes to the notices. The cache is live only while this connection is
    subscribed and answering; a lost, silent or refused connection makes it drop everything
    and stop caching until it is subscribed again."""

    QUIET = 5.0  # seconds without a message before a PING checks the connection
    BATCH_WAIT = 0.002  # seconds

    def __init__(self, client: AsyncRedis, inode_prefix: str, dir_prefix: str, cache: MetaCache) -> None:
        self.client = client
        self.cache = cache
        self._inode_prefix = inode_prefix.encode()
        self._dir_prefix = dir_prefix.encode()
        self.notices = 0

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await self.client._connect()
            except (OSError, hiredis.ProtocolError, FallBack, trio.TooSlowError) as exc:
                log.debug("change feed: cannot connect: %s", exc)
            else:
                try:
                    if not await self._follow(conn):
                        return
                    delay = 0.5
                except (OSError, hiredis.ProtocolError, trio.TooSlowError) as exc:
                    log.info("change feed lost (%s); metadata caching is off until it is back",
                             exc or type(exc).__name__)
                finally:
                    self.cache.set_live(False)
                    conn.close()
            await trio.sleep(delay)
            delay = min(2 * delay, 10.0)

    async def _follow(self, conn: _Connection) -> bool:
        """Subscribe and apply notices until the connection fails (raises) or the server
        cannot track keys (returns False: caching stays off)."""
        with trio.fail_after(self.client.timeout):
            cid = await conn.call("CLIENT", "ID")
            ok = cid if isinstance(cid, hiredis.ReplyError) else await conn.call(
                "CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST",
                "PREFIX", self._inode_prefix, "PREFIX", self._dir_prefix)
            if isinstance(ok, hiredis.ReplyError):  # Redis < 6, or an ACL without CLIENT
                log.warning("Redis does not track keys for clients (%s): metadata is not cached", ok)
                return False
            await conn.call("SUBSCRIBE", "__redis__:invalidate")
        self.cache.set_live(True)
        pinged = False
        while True:
            with trio.move_on_after(self.QUIET) as quiet:
                await trio.lowlevel.wait_readable(conn.sock)
            if quiet.cancelled_caught:
                if pinged:
                    raise TimeoutError("no answer to PING")
                conn.sock.send(pack_command("PING"))  # a few bytes: the socket buffer takes them
                pinged = True
                continue
            try:
                chunk = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionResetError("Redis closed the change feed")
            pinged = False
            conn.reader.feed(chunk)
            while (message := conn.reader.gets()) is not False:
                self._apply(message)
            self.cache.tell()
            # Let notices gather for a moment: one wake-up per batch, not per change, keeps
            # a busy writer's notices off the FUSE loop (at most BATCH_WAIT more staleness).
            await trio.sleep(self.BATCH_WAIT)

    def _apply(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
            return  # a PING's pong, or a subscription confirmation
        keys = message[2]
        self.notices += 1
        if keys is None:  # FLUSHDB/FLUSHALL: anything may have changed
            self.cache.changed_all()
            return
        for key in keys:
            if key.startswith(self._inode_prefix) and key[len(self._inode_prefix):].isdigit():
                self.cache.changed_inode(int(key[len(self._inode_prefix):]))
            elif key.startswith(self._dir_prefix) and key[len(self._dir_prefix):].isdigit():
                self.cache.changed_dir(int(key[len(self._dir_prefix):]))


class OwnChange(NamedTuple):
    """An inode's attributes just before and just after one change this client made in one
    script: a create in a directory (the directory's), a write commit (the file's)."""

    before: Any
    after: Any


class FastCalls:
    """The hottest metadata calls over `AsyncRedis` when the engine supports it, else in a
    thread: lookup, getattr, slice lists, open, the commit of a written slice, and the
    creates and unlinks of regular files.

    `blocking(fn, *args)` is the caller's way to run an engine method in a worker thread
    (with its error translation)."""

    def __init__(self, meta: Any, blocking: Callable[..., Any], client: AsyncRedis | None) -> None:
        self.meta = meta
        self.blocking = blocking
        self.client = client
        self.direct = 0  # calls answered without a thread (for stats and tests)
        # Told of a directory's attributes before and after a change this client made in it.
        self.on_own_change: Callable[[OwnChange], None] | None = None
        self.latency = Histograms()  # metadata call seconds: "direct" here, "thread" by the vfs
        self.cache = MetaCache()  # live only while `feed` runs (tracking.py)
        # dir → (kept listing, its entries' kept attrs, the entries built of them): a listing
        # asked for again with the same objects in the cache is answered with the same list,
        # which lets the layers above keep what they built of it too.
        self._built_listings: dict[int, tuple[list[tuple[bytes, int]], list[Any], list[DirEntry]]] = {}
        prefixes = meta.tracked_prefixes() if client is not None and hasattr(meta, "tracked_prefixes") else None
        self.feed = ChangeFeed(client, *prefixes, self.cache) if client is not None and prefixes else None

    def start(self, nursery: trio.Nursery) -> None:
        """Bound the replies of non-blocking calls (AsyncRedis.watch), and follow the
        change feed that keeps the metadata cache coherent."""
        if self.client is not None:
            nursery.start_soon(self.client.watch)
        if self.feed is not None:
            nursery.start_soon(self.feed.run)

    @classmethod
    def for_engine(cls, meta: Any, blocking: Callable[..., Any]) -> FastCalls:
        address = meta.direct_address() if hasattr(meta, "direct_address") else None
        return cls(meta, blocking, AsyncRedis(address) if address is not None else None)

    async def _run(self, request: MetaRequest | None, fn: Callable[..., Any], *args: Any) -> Any:
        if request is not None and self.client is not None:
            t0 = perf_counter()
            try:
                reply = await self.client.execute(*request.command)
            except FallBack as exc:
                log.debug("metadata call falls back to a thread: %s", exc)
                if request.retry is not None:
                    return await self.blocking(request.retry)
            else:
                try:
                    result = request.decode(reply)
                except FallBack as exc:  # the server refused it as it was: start afresh
                    log.debug("metadata call goes the blocking way: %s", exc)
                else:
                    self.latency.observe("direct", perf_counter() - t0)
                    self.direct += 1
                    return result
        return await self.blocking(fn, *args)

    def _request(self, make: Callable[..., MetaRequest | None], *args: Any) -> MetaRequest | None:
        return make(*args) if self.client is not None else None

    async def lookup(self, parent: int, name: bytes) -> Any:
        kept = self.cache.entry(parent, name)
        if kept is not None:
            return kept
        token = self.cache.begin()
        attr = await self._run(self._request(self.meta.lookup_request, parent, name), self.meta.lookup, parent, name)
        self.cache.fill_entry(token, parent, name, attr)
        return attr

    async def getattr(self, ino: int) -> Any:
        kept = self.cache.attr(ino)
        if kept is not None:
            return kept
        token = self.cache.begin()
        attr = await self._run(self._request(self.meta.getattr_request, ino), self.meta.getattr, ino)
        self.cache.fill_attr(token, attr)
        return attr

    async def current_attrs(self, inos: list[int]) -> list[Any]:
        """The attributes of these inodes now (None where an inode is gone), in one round trip."""
        return await self._run(self._request(self.meta.attrs_request, inos),  # type: ignore[no-any-return]
                               self.meta.current_attrs, inos)

    async def readdir(self, ino: int) -> list[DirEntry]:
        """A directory's entries with their attributes. A kept listing costs no round trip
        when its entries' attributes are kept too, else one MGET of those that are not."""
        pairs = self.cache.listing(ino)
        if pairs is None:
            token = self.cache.begin()
            if token is None:  # nothing is kept: names and attributes in one go
                entries: list[DirEntry] = await self.blocking(self.meta.readdir, ino)
                return entries
            # The names only: the attributes this client keeps (a `stat` of each entry, say)
            # need not cross the network again; those it lacks come in one MGET below.
            pairs = await self.blocking(self.meta.dir_names, ino)
            self.cache.fill_listing(token, ino, pairs)
        attrs = [self.cache.attr(child) for _, child in pairs]
        built = self._built_listings.get(ino)
        if built is not None and built[0] is pairs and all(map(operator.is_, built[1], attrs)):
            return built[2]  # nothing in it changed: the very list built last time
        missing = [child for (_, child), attr in zip(pairs, attrs, strict=True) if attr is None]
        if missing:
            token = self.cache.begin()
            fetched: dict[int, Any] = {}
            for start in range(0, len(missing), ATTR_BATCH):  # a big directory: bounded replies
                part = missing[start:start + ATTR_BATCH]
                fetched.update(zip(part, await self.current_attrs(part), strict=True))
            for attr in fetched.values():
                if attr is not None:
                    self.cache.fill_attr(token, attr)
            attrs = [attr if attr is not None else fetched[child]
                     for (_, child), attr in zip(pairs, attrs, strict=True)]
        entries = [DirEntry(name, attr) for (name, _), attr in zip(pairs, attrs, strict=True) if attr is not None]
        if not missing:
            if len(self._built_listings) >= BUILT_LISTINGS:
                self._built_listings.clear()
            self._built_listings[ino] = (pairs, attrs, entries)
        return entries

    async def read(self, ino: int, chunk_index: int) -> Any:
        return await self._run(self._request(self.meta.read_request, ino, chunk_index),
                               self.meta.read, ino, chunk_index)

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Any:
        """A regular file that this session holds open from the start (FUSE create)."""
        request = self._request(self.meta.create_file_request, parent, name, mode, uid, gid, True)
        try:
            result = await self._run(request, self.meta.create_held, parent, name, mode, uid, gid)
        finally:
            self.cache.reset()  # our own change: drop what it may outdate before its notice comes
        return self._told_own_change(result)  # the parent's change, on the non-blocking path

    def _told_own_change(self, result: Any) -> Any:
        """A script's result; the non-blocking path also says how it changed the inode
        (result, OwnChange), which goes to `on_own_change`."""
        if not isinstance(result, tuple):
            return result
        result, change = result
        if self.on_own_change is not None:
            self.on_own_change(change)
        return result

    async def write(self, ino: int, chunk_index: int, piece: Any, mtime_ns: int) -> Any:
        """Commit a written slice; the file's attributes after it."""
        request = self._request(self.meta.write_request, ino, chunk_index, piece, mtime_ns)
        try:
            result = await self._run(request, self.meta.write, ino, chunk_index, piece, mtime_ns)
        finally:
            self.cache.reset()  # our own change (see create)
        return self._told_own_change(result)  # the file's change, on the non-blocking path

    async def unlink(self, parent: int, name: bytes) -> None:
        try:
            kept = await self._run(self._request(self.meta.unlink_request, parent, name),
                                   self.meta.unlink, parent, name)
            if kept is not None:  # kept for its openers: perhaps only this session's closed note
                await self.blocking(self.meta.settle_unlinked, kept)
        finally:
            self.cache.reset()

    async def open(self, ino: int, known: Any = None) -> tuple[Any, list[Any] | None]:
        """Count an open (noting it in Redis if this session did not hold the file yet).
        Returns (fresh attributes, or `known` ones the caller just got; the slices of the
        file's first chunk when they came in the same round trip, else None)."""
        state = self.meta.open_nowait(ino)
        if state is None:
            return await self.blocking(self.meta.open, ino, known), None
        try:
            if state is True:
                if known is not None:
                    return known, None
                request = self._request(self.meta.open_request, ino, False)
                return await self._run(request, self._attr_only, ino)  # type: ignore[no-any-return]
            try:
                opened = await self._run(state, self._never, ino)
            except BaseException:
                self.meta.opened(ino, False)
                raise
            self.meta.opened(ino, True)
            return opened  # type: ignore[no-any-return]
        except BaseException:
            self.meta.release(ino)  # counted above; a note possibly written goes later
            raise

    def _attr_only(self, ino: int) -> tuple[Any, None]:
        return self.meta.getattr(ino), None

    @staticmethod
    def _never(ino: int) -> Any:
        raise AssertionError("an OPEN request always has its retry")
