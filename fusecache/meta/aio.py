"""A non-blocking Redis path for the hottest metadata calls, on the trio loop.

Every FUSE lookup/getattr would otherwise pay a hand-off to a worker thread and back: on
a busy 2-core node those extra wake-ups cost more than the Redis round trip itself. The
engine describes such a call as a `MetaRequest` (a Redis command plus a decoder; the
engine keeps its key schema and codecs to itself), and `AsyncRedis` sends it over a
non-blocking socket that trio watches, and parses the reply with hiredis. Nothing here
blocks the loop.

Anything unusual (a script not loaded yet, a lost connection, TLS/Sentinel/Cluster
deployments) falls back to the engine's own blocking call in a worker thread, which has
the retries and error translation.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import trio

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
    decode: Callable[[Any], Any]  # raises FsError for namespace errors


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

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class AsyncRedis:
    def __init__(self, address: DirectAddress, max_connections: int = 8) -> None:
        self.address = address
        self._idle: list[_Connection] = []
        self._open = 0  # connections in use or idle
        self._max = max_connections
        self._waiters = trio.lowlevel.ParkingLot()

    async def _connect(self) -> _Connection:
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
        conn.close()
        self._open -= 1
        self._waiters.unpark()

    async def execute(self, *args: Any) -> Any:
        """One command's reply; FallBack on any error reply or connection trouble."""
        try:
            conn = await self._acquire()
        except (OSError, hiredis.ProtocolError) as exc:
            raise FallBack(str(exc)) from None
        try:
            reply = await conn.call(*args)
        except (OSError, hiredis.ProtocolError) as exc:
            self._discard(conn)
            raise FallBack(str(exc)) from None
        except BaseException:
            self._discard(conn)  # cancelled mid-call: the reply would confuse the next caller
            raise
        self._idle.append(conn)
        self._waiters.unpark()
        if isinstance(reply, hiredis.ReplyError):
            raise FallBack(str(reply))  # e.g. NOSCRIPT: the blocking path loads the script
        return reply

    async def aclose(self) -> None:
        for conn in self._idle:
            self._discard(conn)
        self._idle.clear()


class FastCalls:
    """The hottest metadata calls over `AsyncRedis` when the engine supports it, else in a
    thread: lookup, getattr and slice lists, and the creates and unlinks of regular files.

    `blocking(fn, *args)` is the caller's way to run an engine method in a worker thread
    (with its error translation).

    A mutation that falls back after its request was sent may have run: the blocking call
    then reports what it finds (EEXIST for a create that happened), as the blocking
    engine's own reconnect-and-retry does."""

    def __init__(self, meta: Any, blocking: Callable[..., Any], client: AsyncRedis | None) -> None:
        self.meta = meta
        self.blocking = blocking
        self.client = client
        self.direct = 0  # calls answered without a thread (for stats and tests)

    @classmethod
    def for_engine(cls, meta: Any, blocking: Callable[..., Any]) -> FastCalls:
        address = meta.direct_address() if hasattr(meta, "direct_address") else None
        return cls(meta, blocking, AsyncRedis(address) if address is not None else None)

    async def _send(self, request: MetaRequest) -> tuple[bool, Any]:
        """(True, decoded reply), or (False, None) when the call must go the blocking way."""
        assert self.client is not None
        try:
            reply = await self.client.execute(*request.command)
        except FallBack as exc:
            log.debug("metadata call falls back to a thread: %s", exc)
            return False, None
        self.direct += 1
        return True, request.decode(reply)

    async def _run(self, request: MetaRequest | None, fn: Callable[..., Any], *args: Any) -> Any:
        if request is not None:
            done, result = await self._send(request)
            if done:
                return result
        return await self.blocking(fn, *args)

    async def lookup(self, parent: int, name: bytes) -> Any:
        request = self.meta.lookup_request(parent, name) if self.client is not None else None
        return await self._run(request, self.meta.lookup, parent, name)

    async def getattr(self, ino: int) -> Any:
        request = self.meta.getattr_request(ino) if self.client is not None else None
        return await self._run(request, self.meta.getattr, ino)

    async def read(self, ino: int, chunk_index: int) -> Any:
        request = self.meta.read_request(ino, chunk_index) if self.client is not None else None
        return await self._run(request, self.meta.read, ino, chunk_index)

    async def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Any:
        request = None
        if self.client is not None and stat.S_ISREG(mode):
            request = self.meta.create_file_request(parent, name, mode, uid, gid)
        return await self._run(request, self.meta.mknod, parent, name, mode, uid, gid, rdev)

    async def unlink(self, parent: int, name: bytes) -> None:
        prepared = self.meta.unlink_request(parent, name) if self.client is not None else None
        if prepared is None:
            return await self.blocking(self.meta.unlink, parent, name)  # type: ignore[no-any-return]
        request, finish = prepared
        try:
            done, kept = await self._send(request)
        finally:
            finish()
        if not done:
            await self.blocking(self.meta.unlink, parent, name)
        elif kept is not None:
            await self.blocking(self.meta.settle_unlinked, kept)  # may free it: a script
