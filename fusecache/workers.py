"""Worker-thread pools: the only way the trio side runs blocking code.

Metadata calls (redis-py) and object/disk I/O (boto3, files) get separate pools, so a
slow object store can fill its own pool without starving namespace operations. Each pool
has a fixed number of threads, which is also its concurrency bound.

Why not `trio.to_thread.run_sync`: every FUSE request that touches metadata pays one
hand-off to a thread and back, and the generic path (limiter bookkeeping, thread cache,
context copying) costs about a third more per hand-off than a plain queue to long-lived
threads. Cancellation behaves like to_thread's default: a call that has started runs to
completion and the caller waits for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

log = logging.getLogger(__name__)
T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], Any, trio.lowlevel.TrioToken]


class ThreadPool:
    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.size = threads
        self.busy = 0  # jobs queued or running (read for stats; updated on the trio thread)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, task, token = job
            result = outcome.capture(fn, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                log.debug("%s: result of %r arrived after the event loop ended", self.name, fn)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.busy += 1
        try:
            self._jobs.put((fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()))
            # Resumes with the call's result, or raises its exception.
            return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
                lambda _: trio.lowlevel.Abort.FAILED  # a started blocking call cannot be abandoned
            )
        finally:
            self.busy -= 1

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class Workers:
    def __init__(self, meta_threads: int = 16, io_threads: int = 32) -> None:
        self.meta_pool = ThreadPool("meta", meta_threads)
        self.io_pool = ThreadPool("io", io_threads)

    async def meta(self, fn: Callable[..., T], *args: object) -> T:
        return await self.meta_pool.run(fn, *args)

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        return await self.io_pool.run(fn, *args)

    def close(self) -> None:
        self.meta_pool.close()
        self.io_pool.close()
