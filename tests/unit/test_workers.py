"""The worker pools: results and exceptions come back, concurrency stays bounded."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from fusecache.workers import ThreadPool


def test_results_exceptions_and_bound() -> None:
    pool = ThreadPool("test", 3)
    running = 0
    peak = 0
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i * 2

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> list[int]:
        out: list[int] = []

        async def one(i: int) -> None:
            out.append(await pool.run(job, i))

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, i)
        with pytest.raises(ValueError, match="boom"):
            await pool.run(boom)
        assert threading.current_thread() is threading.main_thread()
        return out

    try:
        assert sorted(trio.run(main)) == [i * 2 for i in range(12)]
        assert peak == 3
    finally:
        pool.close()


def test_blocking_call_runs_off_the_event_loop() -> None:
    pool = ThreadPool("test", 1)
    loop_thread = threading.get_ident()

    async def main() -> int:
        return await pool.run(threading.get_ident)

    try:
        assert trio.run(main) != loop_thread
    finally:
        pool.close()
