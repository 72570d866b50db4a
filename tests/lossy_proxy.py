"""A TCP proxy that loses replies on purpose.

It forwards bytes between clients and a server (Redis here). Armed with a byte pattern, it
lets the next request containing that pattern reach the server, waits until the server
has had time to run it, and then closes the client's connection before the reply gets
through: the request ran, but the client cannot know. That is the "unknown outcome" a
storage client must survive (docs/data-safety.md).

`hold()` makes it stop forwarding new data in both directions (like a server that stopped
answering but keeps its sockets open), `release()` resumes.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from types import TracebackType


class LossyProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: list[bytes] = []  # patterns whose next request loses its reply
        self.lost = 0  # replies lost so far
        self._running = True
        self._held = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.close()

    def lose_reply_to(self, pattern: bytes) -> None:
        """The next request that contains `pattern` runs, and its reply is lost."""
        with self._lock:
            self._armed.append(pattern)

    def armed(self) -> int:
        with self._lock:
            return len(self._armed)

    def hold(self) -> None:
        self._held.set()

    def release(self) -> None:
        self._held.clear()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _take(self, data: bytes) -> bool:
        with self._lock:
            for i, pattern in enumerate(self._armed):
                if pattern in data:
                    del self._armed[i]
                    return True
        return False

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while self._running:
                if self._held.is_set():
                    time.sleep(0.01)
                    continue
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client:
                        server.sendall(data)
                        if self._take(data):
                            time.sleep(0.2)  # the server runs it; its reply stays here
                            with self._lock:
                                self.lost += 1
                            return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._running = False
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            for s in pair:
                try:
                    s.close()
                except OSError:
                    pass
