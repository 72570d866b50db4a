"""Worker-thread pools: the only way the trio side runs blocking code.

Metadata calls (redis-py) and object/disk I/O (boto3, files) get separate limiters, so a
slow object store can fill its own pool without starving namespace operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class Workers:
    def __init__(self, meta_threads: int = 16, io_threads: int = 32) -> None:
        self.meta_limiter = trio.CapacityLimiter(meta_threads)
        self.io_limiter = trio.CapacityLimiter(io_threads)

    async def meta(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter)

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.io_limiter)
