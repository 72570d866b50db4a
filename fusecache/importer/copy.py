"""Copy mode of an import (`fusecache import --copy`): the data of imported files is
written into the volume's own store, so that they no longer depend on their source.

A chunk that still names an external slice is rewritten by the compaction machinery
(chunk/compact.py rewrite_chunk): its visible bytes are read (from the source, checked
against the imported version, and from the volume for anything written since), stored as
one new owned slice straight to the object store whatever the write mode, and swapped in by
compare-and-set only if the chunk's list is still the one read. Writes made meanwhile stay
on top; a chunk truncated or compacted meanwhile is read again. Nothing at the source is
ever deleted (external ids are never released).

A file whose object changes at its source while it is copied fails whole: the chunks
copied get their imported slice back, so it reads EIO throughout and `import --update` (which
refreshes only untouched files) can still give it the current version.

Resumable and idempotent: each chunk is done or not, so a rerun copies only what is still
external. A run cut short leaves at most the objects of the chunks in flight, unreferenced,
for `fusecache gc`; a swap whose reply was lost keeps its objects (it may have happened).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..chunk.compact import rewrite_chunk
from ..chunk.external import SourceChanged
from ..chunk.reader import BlockLoader
from ..chunk.slices import visible
from ..chunk.store import ChunkStore
from ..chunk.writer import SliceIds
from ..errors import FsError, MetaError, ObjectStoreError
from ..layout import CHUNK_SIZE, is_external
from ..meta.clone import owned_session
from ..meta.redis import RedisMeta
from ..types import Slice
from ..workers import Workers
from .source import SourceError

log = logging.getLogger(__name__)

DEFAULT_PARALLEL = 16
ATTEMPTS = 5  # swaps refused because the chunk changed, before the file is given up

Progress = Callable[[str, int, int | None], None]


@dataclass
class CopySummary:
    files: int = 0  # files whose data this run copied
    bytes: int = 0
    owned: int = 0  # files with no imported data left before this run (copied earlier, or written over)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why


@dataclass
class _File:
    path: str
    ino: int
    chunks: list[int]  # indexes of the chunks that name an external slice
    failed: str = ""
    changed: bool = False  # failed because its object changed at its source
    # chunks this run copied that held just the imported slice: (that slice, the copy)
    copied: dict[int, tuple[Slice, Slice]] = field(default_factory=dict)


def _quiet(_phase: str, _done: int, _total: int | None = None) -> None:
    return None


def find_dir(meta: RedisMeta, path: str) -> int:
    """The inode of an existing directory of the volume, from its root."""
    from ..types import ROOT_INO

    ino = ROOT_INO
    for part in (p for p in path.split("/") if p):
        try:
            attr = meta.lookup(ino, part.encode("utf-8", "surrogateescape"))
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                raise SourceError(f"DEST_DIR {path} does not exist") from None
            raise
        if not attr.is_dir:
            raise SourceError(f"DEST_DIR {path} is not a directory")
        ino = attr.ino
    return ino


def plan(meta: RedisMeta, dest: str, progress: Progress = _quiet) -> tuple[list[_File], int, int]:
    """The files under `dest` with imported data left: (files, bytes to copy, files
    already owned). Hard links are counted once."""
    top = find_dir(meta, dest)
    files: list[_File] = []
    seen: set[int] = set()
    total = owned = 0
    stack = [(top, dest.rstrip("/") or "/")]
    while stack:
        ino, path = stack.pop()
        for entry in meta.readdir(ino):
            if entry.name in (b".", b".."):
                continue
            child = f"{path.rstrip('/')}/{entry.name.decode('utf-8', 'surrogateescape')}"
            attr = entry.attr
            if attr.is_dir:
                stack.append((attr.ino, child))
                continue
            if not attr.is_file or attr.ino in seen:
                continue
            seen.add(attr.ino)
            indexes = []
            for index in range((attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
                slices = meta.read(attr.ino, index)
                if any(is_external(s.id) for s in slices):
                    indexes.append(index)
                    pieces = [p for p in visible(slices) if p.id != 0]
                    total += pieces[-1].end - pieces[0].pos if pieces else 0
            if indexes:
                files.append(_File(child, attr.ino, indexes))
            else:
                owned += 1
            progress("finding imported data", len(seen), None)
    return files, total, owned


def copy_tree(meta: RedisMeta, chunks: ChunkStore, dest: str, parallel: int = DEFAULT_PARALLEL,
              progress: Progress = _quiet, plan_progress: Progress = _quiet) -> CopySummary:
    """Copy into the volume's store the data that files under `dest` (a directory path
    from the volume's root) still read from import sources, `parallel` chunks at a time.
    A file that fails (its object changed at its source, a store error) is named in
    `failed`; the others go on. Raises SourceError, FsError and MetaError (no copy made)."""
    summary = CopySummary()
    with owned_session(meta, "import --copy"):  # gc spares the slices this session stores
        files, total, summary.owned = plan(meta, dest, plan_progress)
        if files:
            trio.run(_copy_all, meta, chunks, files, total, max(1, parallel), progress, summary)
    for f in files:
        if f.failed:
            summary.failed[f.path] = f.failed
        else:
            summary.files += 1
    return summary


async def _copy_all(meta: RedisMeta, chunks: ChunkStore, files: list[_File], total: int, parallel: int,
                    progress: Progress, summary: CopySummary) -> None:
    workers = Workers(meta_threads=min(16, parallel), io_threads=parallel)
    loader = BlockLoader(chunks, workers, recent_bytes=0, slots=parallel)
    ids = SliceIds(lambda n: workers.meta(meta.reserve_slice_ids, n), batch=64)
    jobs = iter([(f, index) for f in files for index in f.chunks])
    progress("copying imported data", 0, total)

    def counted(n: int) -> None:
        summary.bytes += n
        progress("copying imported data", summary.bytes, max(total, summary.bytes))

    async def worker() -> None:
        for f, index in jobs:  # one shared iterator: each chunk goes to one worker
            if not f.failed:
                await _copy_chunk(meta, chunks, loader, workers, ids, f, index, counted, summary)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(parallel):
                nursery.start_soon(worker)
        for f in files:
            if f.changed and f.copied:
                await _restore(meta, workers, f)
    finally:
        workers.close()
    progress("copying imported data", summary.bytes, max(total, summary.bytes))


async def _copy_chunk(meta: RedisMeta, chunks: ChunkStore, loader: BlockLoader, workers: Workers, ids: SliceIds,
                      f: _File, index: int, counted: Callable[[int], None], summary: CopySummary) -> None:
    for _ in range(ATTEMPTS):
        done = 0
        new_id = 0

        def on_block(n: int) -> None:
            nonlocal done
            done += n
            counted(n)

        try:
            slices = await workers.meta(meta.read, f.ino, index)
            if not any(is_external(s.id) for s in slices):
                return  # written over, or copied by someone else, meanwhile
            new_id = await ids.next()
            try:
                new = await rewrite_chunk(meta, chunks, loader, workers, f.ino, index, slices, new_id, on_block)
            finally:
                ids.settle(new_id)
            if new is not None:
                if len(slices) == 1:
                    f.copied[index] = (slices[0], new)
                return
        except SourceChanged as exc:
            f.failed, f.changed = _changed(exc), True
        except FsError as exc:
            f.failed = f"copying chunk {index} failed: {exc.detail or exc}; run the copy again"
        except MetaError as exc:
            # Unknown outcome: the swap may have happened, so its objects stay (gc frees them
            # if not). Look once whether it did.
            if new_id and await _landed(meta, workers, f.ino, index, new_id):
                return
            f.failed = f"metadata did not answer ({exc}); run the copy again"
        except ObjectStoreError as exc:
            f.failed = f"the volume's object store failed ({exc}); run the copy again"
        summary.bytes -= done  # bytes of an attempt that did not land are copied again
        if f.failed:
            log.info("copy of %s failed: %s", f.path, f.failed)
            return
        log.info("%s chunk %d changed while it was copied; copying it again", f.path, index)
    f.failed = "it kept changing while it was copied; run the copy again"


async def _landed(meta: RedisMeta, workers: Workers, ino: int, index: int, new_id: int) -> bool:
    """Whether the chunk names slice `new_id` (a swap whose reply was lost did happen)."""
    await trio.sleep(0.5)
    try:
        return any(s.id == new_id for s in await workers.meta(meta.read, ino, index))
    except MetaError:
        return False


def _changed(exc: FsError) -> str:
    return (f"{exc.detail} since the import (its file reads EIO); 'fusecache import --update --copy' "
            "gives it the current version")


async def _restore(meta: RedisMeta, workers: Workers, f: _File) -> None:
    """A file whose object changed at its source while its chunks were being copied gets
    its copied chunks' imported slices back: it then reads EIO throughout, as it did
    before, and `--update` (which refreshes only untouched files) can give it the current
    version. The copies go to the delayed-garbage queue like any replaced slice."""
    for index, (original, new) in sorted(f.copied.items()):
        try:
            if not await workers.meta(meta.compact, f.ino, index, [new], original):
                log.info("%s chunk %d changed meanwhile; its copy stays", f.path, index)
        except MetaError as exc:
            log.warning("%s chunk %d: cannot give back its imported slice (%s); its copy stays", f.path, index, exc)
