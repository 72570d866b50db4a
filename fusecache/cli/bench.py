"""`fusecache bench PATH`: a quick throughput check of a mount, in the manner of `juicefs bench`.

Stages: big-file write and read, small-file write, read and stat. Writes are fsync'ed so
the data reaches the client (and, without writeback, the store) inside the stage; reads go
through a fresh open after POSIX_FADV_DONTNEED so the kernel page cache does not answer
them. Every byte read back is checked against the hash of what was written. For each stage
the client's own figures (`fusecache.stats`, the xattr `fusecache stats` reads) are diffed
before and after: time spent answering FUSE requests, in metadata calls and in object
store requests. All files go into one fresh directory under PATH, removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CliError
from ..latency import total_count, total_seconds
from ..units import format_size, parse_size
from .stats import read_stats

MiB = 1 << 20
IO_SIZE = 1 << 20  # bytes per write/read call: the FUSE layer's st_blksize


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure a mount's read/write/stat throughput",
                       description="Write, read back (verified by hash) and stat big and small files in a "
                                   "fresh directory under PATH, then remove them. Prints per stage the "
                                   "throughput, the time per item and the time the client spent in FUSE "
                                   "requests, metadata calls and object store requests.")
    p.add_argument("path", metavar="PATH", help="a directory on a fusecache mount")
    p.add_argument("--big-file-size", default="256M", metavar="SIZE", help="size of each big file (default 256M)")
    p.add_argument("--big-file-count", type=int, default=1, metavar="N",
                   help="big files per thread (default 1; 0 skips the big-file stages)")
    p.add_argument("--small-file-size", default="128K", metavar="SIZE",
                   help="size of each small file (default 128K)")
    p.add_argument("--small-file-count", type=int, default=100, metavar="N",
                   help="small files per thread (default 100; 0 skips the small-file stages)")
    p.add_argument("-p", "--threads", type=int, default=1, metavar="N", help="parallel workers (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run)


@dataclass
class StageResult:
    stage: str
    items: int  # files (or stats)
    nbytes: int
    seconds: float
    throughput: float  # MiB/s for data stages, files/s for stat
    unit: str
    ms_per_item: float
    fuse_ops: int
    fuse_seconds: float
    meta_calls: int
    meta_seconds: float
    object_requests: int
    object_seconds: float


def _size(flag: str, text: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}", exit_code=2) from None
    if n <= 0:
        raise CliError(f"{flag}: must be more than 0 bytes", exit_code=2)
    return n


def _count(flag: str, n: int, least: int = 0) -> int:
    if n < least:
        raise CliError(f"{flag}: must be at least {least}, not {n}", exit_code=2)
    return n


def _payload(seed: str, size: int) -> bytes:
    """Incompressible-looking bytes, different per file (so a mixed-up read shows)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32  # 1 KiB per hash: cheap, yet no two files share their bytes
    return bytes(out[:size])


def _write(path: str, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        for off in range(0, len(data), IO_SIZE):
            os.write(fd, view[off:off + IO_SIZE])
        os.fsync(fd)  # the stage's time includes getting the data out of the page cache
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def _drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    fd = os.open(path, os.O_RDONLY)  # a fresh open after DONTNEED: the kernel asks the client
    try:
        while chunk := os.read(fd, IO_SIZE):
            h.update(chunk)
            n += len(chunk)
    finally:
        os.close(fd)
    return n, h.hexdigest()


def _client_time(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    def diff(section: str) -> tuple[int, float]:
        b, a = before.get(section, {}), after.get(section, {})
        return total_count(a) - total_count(b), total_seconds(a) - total_seconds(b)

    fuse_ops, fuse_s = diff("fuse_ops")
    meta_n, meta_s = diff("meta_requests")
    obj_n, obj_s = diff("store_requests")
    return {"fuse_ops": fuse_ops, "fuse_seconds": fuse_s, "meta_calls": meta_n, "meta_seconds": meta_s,
            "object_requests": obj_n, "object_seconds": obj_s}


class Bench:
    def __init__(self, root: str, threads: int) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.results: list[StageResult] = []

    def stage(self, name: str, paths: list[str], work: Callable[[int, str], int], *, data: bool) -> None:
        """Run `work(i, path)` (→ bytes moved) on every path in parallel; record the figures."""
        before = read_stats(self.root)
        t0 = time.perf_counter()
        nbytes = sum(self.pool.map(work, range(len(paths)), paths))
        seconds = max(time.perf_counter() - t0, 1e-9)
        extra = _client_time(before, read_stats(self.root))
        if data:
            throughput, unit = nbytes / MiB / seconds, "MiB/s"
        else:
            throughput, unit = len(paths) / seconds, "files/s"
        self.results.append(StageResult(name, len(paths), nbytes, seconds, throughput, unit,
                                        1000 * seconds / len(paths), **extra))  # type: ignore[arg-type]


def run_bench(path: str, big_size: int, big_count: int, small_size: int, small_count: int,
              threads: int) -> list[StageResult]:
    if not os.path.isdir(path):
        raise CliError(f"{path}: not a directory" if os.path.lexists(path) else f"{path}: no such directory")
    read_stats(path)  # CliError unless a running fusecache client serves PATH
    root = os.path.join(path, f"__fusecache_bench_{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(root)
    except OSError as exc:
        raise CliError(f"{path}: cannot create the bench directory: {exc.strerror}") from None
    bench = Bench(root, threads)
    try:
        for kind, size, count in (("big", big_size, big_count), ("small", small_size, small_count)):
            if count == 0:
                continue
            paths = [os.path.join(root, f"{kind}.{i}") for i in range(count * threads)]
            hashes: dict[int, str] = {}

            def write(i: int, p: str, size: int = size, hashes: dict[int, str] = hashes) -> int:
                hashes[i] = _write(p, _payload(p, size))
                return size

            def read(i: int, p: str, size: int = size, hashes: dict[int, str] = hashes) -> int:
                n, digest = _read(p)
                if n != size or digest != hashes[i]:
                    raise CliError(f"{p}: read back other data than was written ({n} of {size} bytes)")
                return n

            bench.stage(f"write {kind} files", paths, write, data=True)
            for p in paths:
                _drop_cache(p)
            bench.stage(f"read {kind} files", paths, read, data=True)
            if kind == "small":
                bench.stage("stat small files", paths, lambda i, p: os.stat(p).st_size * 0, data=False)
    except OSError as exc:
        raise CliError(f"bench failed: {exc.filename or path}: {exc.strerror}") from None
    finally:
        bench.pool.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return bench.results


def render(results: list[StageResult]) -> str:
    head = (f"{'stage':<18}{'items':>7}{'size':>10}{'throughput':>16}{'per item':>12}"
            f"{'fuse':>10}{'meta':>10}{'object':>10}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.stage:<18}{r.items:>7}{format_size(r.nbytes):>10}"
                     f"{r.throughput:>10.1f} {r.unit:<5}{r.ms_per_item:>9.2f} ms"
                     f"{r.fuse_seconds:>9.3f}s{r.meta_seconds:>9.3f}s{r.object_seconds:>9.3f}s")
    lines.append("fuse/meta/object: seconds the client spent answering FUSE requests, in metadata calls "
                 "and in object store requests during the stage (summed over concurrent requests)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.big_file_count == 0 and args.small_file_count == 0:
        raise CliError("nothing to do: --big-file-count and --small-file-count are both 0", exit_code=2)
    results = run_bench(
        os.path.abspath(args.path),
        _size("--big-file-size", args.big_file_size), _count("--big-file-count", args.big_file_count),
        _size("--small-file-size", args.small_file_size), _count("--small-file-count", args.small_file_count),
        _count("--threads", args.threads, 1),
    )
    if args.json:
        print(json.dumps({"stages": [asdict(r) for r in results]}, indent=2))
    else:
        print(render(results))
    return 0
