"""Block GETs on the trio event loop: HTTP/1.1 with keep-alive, signed by LeanS3.

Part of the lean data path (`mount --s3-data-client lean`). A GET through a worker thread
costs two thread hand-offs plus the GIL traffic of every socket call in between; with
dozens of small-file GETs in flight, the switching costs more CPU than the requests
themselves. Here a GET is a few non-blocking socket calls on the loop that serves FUSE:
about a tenth of the CPU of the threaded lean client and a twentieth of botocore's.

Only what a block GET needs: one request, a Content-Length or chunked body, idle
connections reused, every step under a deadline. Failures are raised as the botocore
exceptions LeanS3 raises (ClientError with the S3 code, EndpointConnectionError,
ConnectTimeoutError, ReadTimeoutError, HTTPClientError), so S3Store's retry policy and
error messages apply unchanged. Static credentials only: refreshing an instance role's
credentials is a blocking call, so S3Store keeps GETs on threads in that case.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import trio
from botocore import exceptions as bexc

from .s3_lean import LeanS3, error_of

HEAD_LIMIT = 64 << 10  # bytes of status line and headers a response may have
RECEIVE = 256 << 10  # bytes asked of the socket at once


class _Closed(Exception):
    """The server closed an idle kept-alive connection before answering: try a new one."""


class AsyncS3:
    def __init__(self, lean: LeanS3, endpoint: str, *, max_connections: int, connect_timeout: float,
                 read_timeout: float) -> None:
        parts = urlsplit(endpoint)
        self._lean = lean
        self._tls = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or (443 if self._tls else 80))
        self._endpoint = endpoint
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl.create_default_context() if self._tls else None
        self._idle: list[trio.abc.Stream] = []
        self._max = max(1, max_connections)
        # Connections and the semaphore belong to one event loop (tests run several).
        self._loop: object = None
        self._slots = trio.Semaphore(self._max)
        self.connections_opened = 0

    async def get(self, key: str, byte_range: str | None = None) -> tuple[bytes, bool]:
        """The object's bytes, and whether the server honoured `byte_range`."""
        path = self._lean.path_of(key)
        loop = trio.lowlevel.current_trio_token()
        if loop is not self._loop:
            self._loop, self._idle, self._slots = loop, [], trio.Semaphore(self._max)
        async with self._slots:
            for reuse in (True, False):
                headers = self._lean.sign("GET", path)
                if byte_range:
                    headers["Range"] = byte_range
                stream = self._idle.pop() if reuse and self._idle else await self._connect()
                try:
                    status, answer, body, keep = await self._exchange(stream, path, headers)
                except _Closed:
                    await trio.aclose_forcefully(stream)
                    continue  # a stale idle connection: once more on a fresh one
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                if keep and len(self._idle) < self._max:
                    self._idle.append(stream)
                else:
                    await trio.aclose_forcefully(stream)
                if status >= 300:
                    raise error_of("GET", status, body, "GetObject")
                return body, status == 206 or "content-range" in answer
        raise bexc.HTTPClientError(error=ConnectionError("the S3 server closed a new connection at once"))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream in idle:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> trio.abc.Stream:
        host, port = self._address
        self.connections_opened += 1
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                if self._ssl is not None:
                    tls = trio.SSLStream(stream, self._ssl, server_hostname=host)
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise bexc.ConnectTimeoutError(endpoint_url=self._endpoint, error="connect timed out") from None
        except OSError as exc:
            raise bexc.EndpointConnectionError(endpoint_url=self._endpoint, error=exc) from None
        return stream

    async def _exchange(self, stream: trio.abc.Stream, path: str,
                        headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        lines = [f"GET {path} HTTP/1.1", f"Host: {self._lean.host}",
                 *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        fresh = True  # nothing received yet: a close now means a stale connection
        try:
            with trio.fail_after(self._read_timeout):
                try:
                    await stream.send_all("\r\n".join(lines).encode())
                except (trio.BrokenResourceError, OSError):
                    raise _Closed() from None
                buf = bytearray()
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    if len(buf) > HEAD_LIMIT:
                        raise bexc.HTTPClientError(error=ValueError("response headers too long"))
                    chunk = await stream.receive_some(RECEIVE)
                    if not chunk:
                        if fresh:
                            raise _Closed()
                        raise bexc.HTTPClientError(error=ConnectionError("connection closed in the headers"))
                    fresh = False
                    buf += chunk
                status, answer = _parse_head(bytes(buf[:end]))
                rest = buf[end + 4 :]
                keep = answer.get("connection", "").lower() != "close"
                if "content-length" in answer:
                    body = await _read_exactly(stream, rest, int(answer["content-length"]))
                elif "chunked" in answer.get("transfer-encoding", "").lower():
                    body = await _read_chunked(stream, rest)
                else:  # the body ends when the connection does
                    body = await _read_to_close(stream, rest)
                    keep = False
                return status, answer, body, keep
        except trio.TooSlowError:
            raise bexc.ReadTimeoutError(endpoint_url=self._endpoint, error="read timed out") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise bexc.HTTPClientError(error=exc) from None


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise bexc.HTTPClientError(error=ValueError(f"not an HTTP response: {status_line[:80]!r}"))
    answer: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            answer[name.strip().lower()] = value.strip()
    return int(parts[1]), answer


async def _read_exactly(stream: trio.abc.Stream, have: bytearray, length: int) -> bytes:
    if length < 0:
        raise bexc.HTTPClientError(error=ValueError("negative Content-Length"))
    while len(have) < length:
        chunk = await stream.receive_some(min(max(RECEIVE, length - len(have)), 1 << 20))
        if not chunk:
            raise bexc.HTTPClientError(error=ConnectionError(
                f"body cut short: {len(have)} of {length} bytes"))
        have += chunk
    if len(have) > length:
        raise bexc.HTTPClientError(error=ValueError("more bytes than Content-Length"))
    return bytes(have)


async def _read_chunked(stream: trio.abc.Stream, have: bytearray) -> bytes:
    body = bytearray()
    while True:
        while (eol := have.find(b"\r\n")) < 0:
            have += await _more(stream)
        size = int(bytes(have[:eol]).split(b";")[0], 16)
        del have[: eol + 2]
        while len(have) < size + 2:
            have += await _more(stream)
        if size == 0:
            return bytes(body)  # (trailers are not used by S3 GETs)
        body += have[:size]
        del have[: size + 2]


async def _read_to_close(stream: trio.abc.Stream, have: bytearray) -> bytes:
    while chunk := await stream.receive_some(RECEIVE):
        have += chunk
    return bytes(have)


async def _more(stream: trio.abc.Stream) -> bytes:
    chunk = await stream.receive_some(RECEIVE)
    if not chunk:
        raise bexc.HTTPClientError(error=ConnectionError("connection closed in a chunked body"))
    return chunk
