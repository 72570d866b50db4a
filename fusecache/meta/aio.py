"""A non-blocking Redis path for the hottest metadata reads, on the trio loop.

Every FUSE lookup/getattr would otherwise pay a hand-off to a worker thread and back: on
a busy 2-core node those extra wake-ups cost more than the Redis round trip itself. The
engine describes such a read as a `MetaRequest` (a Redis command plus a decoder; the
engine keeps its key schema and codecs to itself), and `AsyncRedis` sends it over a trio
socket and parses the reply with hiredis. Nothing here blocks the loop.

Anything unusual (a script not loaded yet, a lost connection, TLS/Sentinel/Cluster
deployments) falls back to the engine's own blocking call in a worker thread, which has
the retries and error translation.
"""

from __future__ import annotations

import logging
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
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    async def call(self, *args: Any) -> Any:
        await self.stream.send_all(pack_command(*args))
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("Redis closed the connection")
            self.reader.feed(data)


class AsyncRedis:
    def __init__(self, address: DirectAddress, max_connections: int = 8) -> None:
        self.address = address
        self._idle: list[_Connection] = []
        self._slots = trio.Semaphore(max_connections)

    async def _connect(self) -> _Connection:
        stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        conn = _Connection(stream)
        if self.address.password is not None:
            auth = ("AUTH", self.address.username, self.address.password) if self.address.username \
                else ("AUTH", self.address.password)
            if isinstance(await conn.call(*auth), hiredis.ReplyError):
                await stream.aclose()
                raise FallBack("authentication refused")
        if self.address.db and isinstance(await conn.call("SELECT", self.address.db), hiredis.ReplyError):
            await stream.aclose()
            raise FallBack("SELECT refused")
        return conn

    async def execute(self, *args: Any) -> Any:
        """One command's reply; FallBack on any error reply or connection trouble."""
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await self._connect()
                reply = await conn.call(*args)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, hiredis.ProtocolError) as exc:
                if conn is not None:
                    await conn.stream.aclose()
                raise FallBack(str(exc)) from None
            self._idle.append(conn)
        if isinstance(reply, hiredis.ReplyError):
            raise FallBack(str(reply))  # e.g. NOSCRIPT: the blocking path loads the script
        return reply

    async def aclose(self) -> None:
        for conn in self._idle:
            await conn.stream.aclose()
        self._idle.clear()


class FastReads:
    """lookup/getattr/read over `AsyncRedis` when the engine supports it, else in a thread.

    `blocking(fn, *args)` is the caller's way to run an engine method in a worker thread
    (with its error translation)."""

    def __init__(self, meta: Any, blocking: Callable[..., Any], client: AsyncRedis | None) -> None:
        self.meta = meta
        self.blocking = blocking
        self.client = client
        self.fast = 0  # requests answered without a thread (for stats and tests)

    @classmethod
    def for_engine(cls, meta: Any, blocking: Callable[..., Any]) -> FastReads:
        address = meta.direct_address() if hasattr(meta, "direct_address") else None
        return cls(meta, blocking, AsyncRedis(address) if address is not None else None)

    async def _run(self, request: MetaRequest | None, fn: Callable[..., Any], *args: Any) -> Any:
        if self.client is not None and request is not None:
            try:
                reply = await self.client.execute(*request.command)
            except FallBack as exc:
                log.debug("metadata read falls back to a thread: %s", exc)
            else:
                self.fast += 1
                return request.decode(reply)
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
