"""Metadata engine micro-benchmark: operations per second straight on the engine, no FUSE.

    .venv/bin/python -m benchmarks.meta_ops [--url redis://...] [--files 5000] [--threads 1,4,16]

Without --url it starts its own redis-server (tests/servers.py) and formats a throwaway
volume. With --url the database must be empty or hold a volume you do not mind losing.
Figures, not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusecache.meta import Meta, open_meta  # noqa: E402
from fusecache.types import ROOT_INO, Slice, VolumeSettings  # noqa: E402
from tests.servers import start_redis  # noqa: E402


def run_parallel(threads: int, items: list[int], op: Callable[[int], object]) -> float:
    """Spread `items` over `threads` workers; returns operations per second."""
    parts = [items[i::threads] for i in range(threads)]
    start = time.perf_counter()

    def work(part: list[int]) -> None:
        for item in part:
            op(item)

    workers = [threading.Thread(target=work, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(items) / (time.perf_counter() - start)


def bench(m: Meta, files: int, threads: int) -> dict[str, float]:
    dir_name = f"bench-{threads}-{time.monotonic_ns()}".encode()
    d = m.mkdir(ROOT_INO, dir_name, 0o755, 0, 0).ino
    names = [f"file-{i:07d}".encode() for i in range(files)]
    inos: dict[int, int] = {}
    results: dict[str, float] = {}

    def create(i: int) -> None:
        inos[i] = m.mknod(d, names[i], stat.S_IFREG | 0o644, 0, 0).ino

    items = list(range(files))
    results["create"] = run_parallel(threads, items, create)
    results["lookup"] = run_parallel(threads, items, lambda i: m.lookup(d, names[i]))
    results["getattr"] = run_parallel(threads, items, lambda i: m.getattr(inos[i]))
    first_slice = m.reserve_slice_ids(files)
    results["write"] = run_parallel(
        threads, items, lambda i: m.write(inos[i], 0, Slice(0, first_slice + i, 4096, 0, 4096), time.time_ns()))
    results["read"] = run_parallel(threads, items, lambda i: m.read(inos[i], 0))
    start = time.perf_counter()
    entries = m.readdir(d)
    results["readdir entries"] = len(entries) / (time.perf_counter() - start)
    results["open+release"] = run_parallel(threads, items, lambda i: (m.open(inos[i]), m.release(inos[i])))
    results["unlink"] = run_parallel(threads, items, lambda i: m.unlink(d, names[i]))
    m.rmdir(ROOT_INO, dir_name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="META_URL of an empty database (default: start a redis-server)")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--threads", default="1,4,16", help="comma-separated thread counts")
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        server = start_redis()
        url = server.url(1)
    try:
        m = open_meta(url)
        m.format(VolumeSettings(name="bench", uuid="bench", storage="file", bucket="/tmp"), force=True)
        m.new_session("bench", 0, "/bench", "bench")
        for threads in (int(t) for t in args.threads.split(",")):
            results = bench(m, args.files, threads)
            print(f"threads={threads:<3} " + "  ".join(f"{k}={v:,.0f}/s" for k, v in results.items()))
        m.shutdown()
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
