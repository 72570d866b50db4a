"""Demotion of blocks evicted from MEM to disk, off the caller's thread.

A MEM eviction burst (from the high down to the low watermark) can be a large fraction of
the MEM quota; writing it to disk inside `put` would stall the read that caused it. The
evicted blocks go into a queue instead, and one short-lived thread writes them out. Until
a block is written, `get` still serves it from here, so it is never "in neither tier".

Memory is bounded: a caller submitting while more than `limit` bytes wait blocks until the
writer catches up (backpressure), so MEM holds at most its quota plus `limit` plus one
burst. The writer thread exits when the queue is empty and is started again on demand,
so an idle cache holds no thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class Demoter:
    def __init__(self, write: Callable[[str, bytes], None], undo: Callable[[str], None],
                 limit: int) -> None:
        self._write = write  # puts one block into the disk tiers; must not raise
        self._undo = undo  # removes it again, when it was discarded during the write
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._waiting: dict[str, bytes] = {}  # queued or being written: served to readers
        self._queued_bytes = 0
        self._running = False

    def submit(self, blocks: list[tuple[str, bytes]]) -> None:
        if not blocks:
            return
        with self._cond:
            while self._queued_bytes > self._limit:
                self._cond.wait()
            for key, data in blocks:
                self._queue.append((key, data))
                self._waiting[key] = data
                self._queued_bytes += len(data)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="cache-demote", daemon=True).start()

    def get(self, key: str) -> bytes | None:
        with self._cond:
            return self._waiting.get(key)

    def discard(self, key: str) -> None:
        """Forget a block that was removed: it is skipped if not written yet."""
        with self._cond:
            self._waiting.pop(key, None)

    def wait(self) -> None:
        """Block until every submitted block has been written (or skipped)."""
        with self._cond:
            while self._running:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._running = False
                    self._cond.notify_all()
                    return
                key, data = self._queue.popleft()
                current = self._waiting.get(key) is data
            try:
                if current:
                    self._write(key, data)
            except Exception:  # a bug, not a disk error (those never raise): keep demoting
                log.exception("demoting cache block %s failed", key)
            with self._cond:
                discarded = self._waiting.get(key) is not data
                if not discarded:
                    del self._waiting[key]
            if current and discarded:
                self._undo(key)  # removed while we wrote it: no stale copy stays on disk
            with self._cond:
                self._queued_bytes -= len(data)
                self._cond.notify_all()
