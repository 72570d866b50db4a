"""Background upload of staged blocks (writeback mode, and recovery after a crash).

In writeback mode a block is first written durably to an SSD cache tier (`TieredCache.stage`),
the slice is committed to metadata, and the block is uploaded here afterwards. The staged file
is the only copy until the upload succeeds, so the rules are:

1. A staged block is never dropped by this module: a failed upload is retried with backoff,
   for as long as the process lives. Staged blocks still pending at exit stay on disk and are
   submitted again by the next mount of the volume (`ChunkStore.resume_uploads`).
2. Only after the store confirmed the PUT is the block marked `uploaded` (it becomes an
   ordinary clean cache block, evictable).
3. A block whose slice was deleted meanwhile (`cancel`) is not uploaded; if it was being
   uploaded at that moment, the object is deleted again once the PUT returns, so a late
   upload does not leave an object nobody references.

Worker threads start on the first submission and run until `close()`; they never run on
the trio loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

RETRY_MIN = 0.5  # seconds before the first retry of a failed upload
RETRY_MAX = 30.0


class StagingCache(Protocol):
    def read_staged(self, key: str) -> bytes | None: ...

    def is_staged(self, key: str) -> bool: ...

    def uploaded(self, key: str) -> None: ...


@dataclass(slots=True)
class _Job:
    size: int
    uploading: bool = False
    cancelled: bool = False
    failures: int = 0


class Uploader:
    def __init__(self, put: Callable[[str, bytes], None], delete: Callable[[str], None],
                 cache: StagingCache, threads: int = 8) -> None:
        self._put = put  # raises on failure (after the store's own retries)
        self._delete = delete
        self._cache = cache
        self._nthreads = max(1, threads)
        self._cond = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._ready: deque[str] = deque()
        self._delayed: list[tuple[float, int, str]] = []  # (retry time, tiebreak, key) heap
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._last_progress = time.monotonic()
        self.uploaded_blocks = 0
        self.uploaded_bytes = 0
        self.failed_attempts = 0

    # ----------------------------------------------------------------- producers

    def submit(self, key: str, size: int) -> None:
        """Upload a staged block in the background (a key already pending is ignored)."""
        with self._cond:
            if self._closed or key in self._jobs:
                return
            self._jobs[key] = _Job(size)
            self._ready.append(key)
            self._last_progress = time.monotonic()
            if len(self._threads) < self._nthreads:
                thread = threading.Thread(target=self._run, name=f"upload-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def cancel(self, key: str) -> None:
        """The block's slice is gone: do not upload it (or delete it again if in flight)."""
        with self._cond:
            job = self._jobs.get(key)
            if job is None:
                return
            if job.uploading:
                job.cancelled = True
            else:
                del self._jobs[key]  # its queue entry is skipped when popped
                self._cond.notify_all()

    # ----------------------------------------------------------------- observers

    def pending(self) -> tuple[int, int]:
        """(blocks, bytes) staged and not yet uploaded."""
        with self._cond:
            return len(self._jobs), sum(j.size for j in self._jobs.values())

    def drain(self, stall: float = 60.0) -> int:
        """Wait until every submitted block is uploaded, or until no upload succeeded for
        `stall` seconds (the store is down: the rest waits for the next mount). Returns the
        number of blocks still pending."""
        with self._cond:
            while self._jobs and time.monotonic() - self._last_progress < stall:
                self._cond.wait(timeout=1.0)
            return len(self._jobs)

    def close(self) -> None:
        """Stop the workers after their current upload; pending blocks stay staged on disk."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=30)

    # ----------------------------------------------------------------- workers

    def _next_locked(self) -> str | None:
        """The next key to upload, waiting for one; None once closed."""
        while not self._closed:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self._ready.append(heapq.heappop(self._delayed)[2])
            while self._ready:
                key = self._ready.popleft()
                job = self._jobs.get(key)
                if job is not None and not job.uploading:
                    job.uploading = True
                    return key
            timeout = self._delayed[0][0] - now if self._delayed else None
            self._cond.wait(timeout=timeout)
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                key = self._next_locked()
                if key is None:
                    return
                job = self._jobs[key]
            try:
                self._upload(key, job)
            except Exception:  # a bug: keep the block staged and retry later
                log.exception("upload of staged block %s failed unexpectedly", key)
                self._retry_later(key, job)

    def _upload(self, key: str, job: _Job) -> None:
        data = self._cache.read_staged(key)
        if data is None:
            if self._cache.is_staged(key):
                self._retry_later(key, job)  # the staged file could not be read just now
            else:
                self._finish(key)  # removed (slice deleted) or already uploaded
            return
        try:
            self._put(key, data)
        except Exception as exc:
            with self._cond:
                self.failed_attempts += 1
                first = job.failures == 0
            (log.warning if first else log.debug)("upload of staged block %s failed (%s); retrying", key, exc)
            self._retry_later(key, job)
            return
        # Everything happens before the job ends, so that a drain() that returned finds the
        # block clean (or its object deleted). uploaded() of a removed block does nothing.
        self._cache.uploaded(key)
        with self._cond:
            cancelled = job.cancelled
        if cancelled:
            # The slice was deleted while we uploaded it. (A cancel after this check comes
            # from a remove_slice whose own delete follows it, after our PUT: also gone.)
            try:
                self._delete(key)
            except Exception as exc:
                log.warning("cannot delete object %s of a deleted slice: %s", key, exc)
        self._finish(key, uploaded=len(data))

    def _finish(self, key: str, uploaded: int = -1) -> None:
        """Forget a job (done, or its block is gone)."""
        with self._cond:
            self._jobs.pop(key, None)
            if uploaded >= 0:
                self.uploaded_blocks += 1
                self.uploaded_bytes += uploaded
            self._last_progress = time.monotonic()
            self._cond.notify_all()

    def _retry_later(self, key: str, job: _Job) -> None:
        with self._cond:
            job.uploading = False
            if job.cancelled:
                self._jobs.pop(key, None)
                self._cond.notify_all()
                return
            job.failures += 1
            delay = min(RETRY_MAX, RETRY_MIN * 2 ** (job.failures - 1))
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._cond.notify()
