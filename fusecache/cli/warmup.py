"""`fusecache warmup PATH...`: load files (or whole trees) into the mount's block cache.

Small files (up to one chunk, 64 MiB) go in batches: N threads ask the client serving the
mount to warm the small files among 256 entries of a directory at a time, through the
virtual xattr `fusecache.warmup-dir:START:COUNT:MAX` of the directory (vfs/control.py).
Each bigger file is cut into pieces of one chunk (block-aligned), asked for through
`fusecache.warmup:OFFSET:LENGTH` of the file. The client fetches the blocks straight into
its cache, many at once: no file data crosses the kernel or this process. `--check` only
reports how much is cached; `--evict` drops the files' clean blocks from the cache instead.

A progress bar (files, bytes, rate, ETA) is drawn on stderr; the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..errors import CliError
from ..layout import CHUNK_SIZE
from ..mountinfo import FUSECACHE_FSTYPE, owning_mount
from ..units import format_size
from ..vfs.control import dir_command_name, parse_answer, parse_dir_answer

PIECE = CHUNK_SIZE  # bytes per request: a chunk boundary is always a block boundary
SMALL_MAX = PIECE  # files up to this size are warmed in directory batches
DIR_BATCH = 256  # directory entries per batch request
TO_THE_END = 1 << 40  # the count of a directory's last batch: entries added meanwhile too
REDRAW = 0.2  # seconds between progress bar updates on a terminal
LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


DESCRIPTION = """\
Load files, or whole directory trees, into the block cache of the client serving the
mount, so that later reads need not wait for the object store. The client fetches the
blocks itself, many at once; no file data passes through this command.

--check only reports how much is cached; --evict drops the files' blocks from the cache
instead. Progress (files, bytes, rate, time left) goes to stderr, the summary to stdout.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warmup", help="load files into the block cache", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories inside a fusecache mount")
    p.add_argument("-p", "--threads", type=int, default=8, metavar="N", help="concurrent requests (default 8)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="only report how much of it is cached")
    what.add_argument("--evict", action="store_true", help="drop these files' blocks from the cache")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class FileItem:
    path: str
    size: int


@dataclass(frozen=True)
class DirBatch:
    """The small files among entries [start, start+count) of a directory."""

    path: str
    start: int
    count: int


@dataclass
class Totals:
    """What the client reported, summed over all pieces (updated under `lock`)."""

    files: int = 0
    files_done: int = 0
    bytes: int = 0  # file bytes, for the progress bar
    bytes_done: int = 0
    blocks: int = 0  # blocks the files need
    block_bytes: int = 0
    done_blocks: int = 0  # fetched / cached / evicted, by mode
    done_bytes: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Plan:
    """What a walk found: big files one by one, small ones as directory batches."""

    files: list[FileItem] = field(default_factory=list)
    batches: list[DirBatch] = field(default_factory=list)
    small_files: int = 0
    small_bytes: int = 0


def plan_work(paths: list[str]) -> Plan:
    """Walk the given paths (symlinks inside trees are not followed). Entry sizes come
    from the directory listing the kernel already holds (readdirplus), so the walk costs
    the client one listing per directory."""
    plan = Plan()
    for top in paths:
        try:
            st = os.stat(top)
        except OSError as exc:
            raise CliError(f"{top}: {exc.strerror}") from None
        entry = owning_mount(top)
        if entry is None or entry.fstype != FUSECACHE_FSTYPE:
            raise CliError(f"{top} is not inside a fusecache mount")
        if stat.S_ISREG(st.st_mode):
            plan.files.append(FileItem(top, st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            _walk(top, plan)
    return plan


def _walk(top: str, plan: Plan) -> None:
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # removed or unreadable meanwhile
        small = 0
        for item in entries:
            try:
                if item.is_dir(follow_symlinks=False):
                    stack.append(item.path)
                    continue
                if not item.is_file(follow_symlinks=False):
                    continue
                size = item.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # removed meanwhile
            if size > SMALL_MAX:
                plan.files.append(FileItem(item.path, size))
            else:
                small += 1
                plan.small_bytes += size
        plan.small_files += small
        if small:
            for start in range(0, len(entries), DIR_BATCH):
                last = start + DIR_BATCH >= len(entries)
                plan.batches.append(DirBatch(directory, start, TO_THE_END if last else DIR_BATCH))


def _getxattr(path: str, name: str) -> bytes:
    try:
        return os.getxattr(path, name)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise CliError(f"{path}: the fusecache client of this mount is not running") from None
        raise


def _ask(path: str, op: str, offset: int, length: int) -> tuple[int, int, int, int]:
    return parse_answer(_getxattr(path, f"fusecache.{op}:{offset}:{length}"))


def _ask_dir(batch: DirBatch, op: str) -> tuple[int, int, int, int, int, int]:
    try:
        return parse_dir_answer(_getxattr(batch.path, dir_command_name(op, batch.start, batch.count, SMALL_MAX)))
    except OSError as exc:
        if exc.errno == errno.ENODATA:  # a client older than this command
            raise CliError(f"{batch.path}: the fusecache client of this mount is older than this "
                           "command; remount it with this version") from None
        raise


class Progress:
    """A one-line progress bar on stderr: files, bytes, rate and ETA."""

    def __init__(self, totals: Totals, verb: str, enabled: bool) -> None:
        self.totals = totals
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0

    def line(self) -> str:
        t = self.totals
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = t.bytes_done / elapsed
        # (entries added to a directory during the walk may make the done figures overshoot)
        share = min(1.0, t.bytes_done / t.bytes if t.bytes else (t.files_done / t.files if t.files else 1.0))
        eta = (t.bytes - t.bytes_done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        width = 24
        filled = int(width * share)
        bar = "#" * filled + "." * (width - filled)
        return (f"{self.verb} [{bar}] {100 * share:5.1f}%  files {t.files_done}/{t.files}  "
                f"{format_size(t.bytes_done)}/{format_size(t.bytes)}  {format_size(int(rate))}/s  ETA {eta_text}")

    def update(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < (REDRAW if self.tty else LOG_EVERY):
            return
        self._last = now
        if self.tty:
            sys.stderr.write("\r" + self.line() + ("\n" if final else ""))
        else:
            sys.stderr.write(self.line() + "\n")
        sys.stderr.flush()


def _pieces(item: FileItem) -> list[tuple[int, int]]:
    if item.size == 0:
        return [(0, 0)]
    return [(off, min(PIECE, item.size - off)) for off in range(0, item.size, PIECE)]


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise CliError("--threads must be at least 1", 2)
    op = "cached" if args.check else "evict" if args.evict else "warmup"
    verb = {"warmup": "warming up", "cached": "checking", "evict": "evicting"}[op]
    plan = plan_work(args.paths)
    files = plan.files
    totals = Totals(files=len(files) + plan.small_files, bytes=sum(f.size for f in files) + plan.small_bytes)
    progress = Progress(totals, verb, enabled=not args.quiet and not args.json)
    remaining = {f.path: len(_pieces(f)) for f in files}

    def add(blocks: int, nbytes: int, done_blocks: int, done_bytes: int) -> None:
        totals.blocks += blocks
        totals.block_bytes += nbytes
        totals.done_blocks += done_blocks
        totals.done_bytes += done_bytes

    def work_piece(item: FileItem, offset: int, length: int) -> None:
        try:
            answer = _ask(item.path, op, offset, length) if length else (0, 0, 0, 0)
        except OSError as exc:
            with totals.lock:
                if remaining.pop(item.path, None) is not None:
                    totals.failed.append(f"{item.path}: {exc.strerror}")
                    totals.files_done += 1
            return
        with totals.lock:
            add(*answer)
            totals.bytes_done += length
            if item.path in remaining:
                remaining[item.path] -= 1
                if remaining[item.path] == 0:
                    del remaining[item.path]
                    totals.files_done += 1

    def work_batch(batch: DirBatch) -> None:
        try:
            files_done, file_bytes, *answer = _ask_dir(batch, op)
        except OSError as exc:
            with totals.lock:
                totals.failed.append(f"{batch.path} (entries from {batch.start}): {exc.strerror}")
            return
        with totals.lock:
            add(*answer)
            totals.files_done += files_done
            totals.bytes_done += file_bytes

    def work(job: DirBatch | tuple[FileItem, int, int]) -> None:
        if isinstance(job, DirBatch):
            work_batch(job)
        else:
            work_piece(*job)

    started = time.monotonic()
    jobs: Iterator[DirBatch | tuple[FileItem, int, int]] = itertools.chain(
        plan.batches, ((item, off, n) for item in files for off, n in _pieces(item)))
    with ThreadPoolExecutor(args.threads) as pool:
        # Bounded submission: millions of files must not become millions of futures at once.
        running: set[Future[None]] = set()
        try:
            for job in jobs:
                running.add(pool.submit(work, job))
                if len(running) >= 4 * args.threads:
                    finished, running = wait(running, timeout=REDRAW, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()
                    progress.update()
            while running:
                finished, running = wait(running, timeout=REDRAW, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()
                progress.update()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    progress.update(final=True)
    elapsed = time.monotonic() - started
    _summary(args, op, totals, elapsed)
    for failure in totals.failed[:20]:
        print(f"fusecache: {failure}", file=sys.stderr)
    if len(totals.failed) > 20:
        print(f"fusecache: ... and {len(totals.failed) - 20} more files failed", file=sys.stderr)
    return 1 if totals.failed else 0


def _summary(args: argparse.Namespace, op: str, t: Totals, elapsed: float) -> None:
    share = 100 * t.done_bytes / t.block_bytes if t.block_bytes else 100.0
    if args.json:
        print(json.dumps({
            "op": op, "files": t.files, "failed": len(t.failed), "bytes": t.bytes, "blocks": t.blocks,
            "block_bytes": t.block_bytes, "done_blocks": t.done_blocks, "done_bytes": t.done_bytes,
            "seconds": round(elapsed, 3), "cached_percent": round(share, 2) if op == "cached" else None,
        }))
        return
    rate = f"{format_size(int(t.bytes / elapsed))}/s" if elapsed > 0 else "-"
    if op == "cached":
        print(f"{t.files} files, {format_size(t.block_bytes)} in {t.blocks} blocks: {share:.1f}% cached "
              f"({t.done_blocks} blocks, {format_size(t.done_bytes)})")
    elif op == "evict":
        print(f"{t.files} files: dropped {t.done_blocks} cached block copies ({t.blocks} blocks, "
              f"{format_size(t.block_bytes)}) in {elapsed:.1f}s")
    else:
        print(f"warmed up {t.files} files, {format_size(t.block_bytes)} in {t.blocks} blocks, in {elapsed:.1f}s "
              f"({rate}): {t.done_blocks} blocks ({format_size(t.done_bytes)}) fetched, "
              f"{t.blocks - t.done_blocks} already cached")
