"""A TCP proxy that adds a fixed latency to every request, to make a loopback object store
behave like a remote one (where a GET waits tens of milliseconds for its first byte).

The delay is applied once per request, not per chunk: a chunk from the client is delayed
when the server has answered something since the client's previous chunk (so it starts a
new request), and forwarded at once otherwise (the rest of a request body). Responses flow
back undelayed. Good enough for HTTP/1.1 keep-alive traffic such as S3's.

`rate` (bytes per second) also limits the bandwidth, as one shared link in each direction:
all connections together never move more than `rate` bytes per second each way.
"""

from __future__ import annotations

import socket
import threading
import time

BUFFER = 1 << 18


class _Link:
    """One direction of a rate-limited link: senders queue for its bandwidth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = 0.0

    def send(self, nbytes: int) -> None:
        """Sleep until `nbytes` more have crossed the link."""
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + nbytes / self.rate
            done = self._free_at
        time.sleep(max(0.0, done - time.monotonic()))


class LatencyProxy:
    def __init__(self, target_port: int, delay: float, target_host: str = "127.0.0.1", rate: float = 0) -> None:
        self.delay = delay
        self._links = {True: _Link(rate), False: _Link(rate)}  # upstream, downstream
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="latency-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"answered": True}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], upstream: bool) -> None:
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                if upstream:
                    if state["answered"] and self.delay:
                        time.sleep(self.delay)  # a new request: one round trip to a far store
                    state["answered"] = False
                else:
                    state["answered"] = True
                self._links[upstream].send(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
