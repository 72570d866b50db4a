"""Filesystem semantics on top of the metadata engine and the chunk layer.

No pyfuse3 here: `fuse/ops.py` adapts these methods to the kernel protocol. Inode numbers
are the volume's own; a mount of a subdirectory maps its root in `fuse/ops.py`.

Consistency model (close-to-open): `open` fetches fresh attributes and drops this
client's cached slice lists of the file, and `flush` (every close) commits all buffered
writes, so a reader that opens after a writer closed sees the writer's data.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from ..chunk.compact import COMPACT_AT, compact_chunk
from ..chunk.reader import BlockLoader, blocks_in_range, read_file_range
from ..chunk.store import ChunkStore
from ..chunk.writer import FileWriter, SliceIds
from ..errors import FsError, MetaError
from ..meta.base import MAX_NAME, MAX_XATTR_NAME, MAX_XATTR_VALUE, Meta
from ..types import Attr, DirEntry, SetAttr, Slice, StatFs, VolumeSettings
from ..workers import Workers
from .handles import DirHandle, FileHandle, OpenInode

log = logging.getLogger(__name__)
T = TypeVar("T")

INFO_XATTR = b"fusecache.info"  # virtual, read-only: a file's chunks/slices/objects as JSON
CAPABILITY_XATTR = b"security.capability"


@dataclass(frozen=True)
class Ctx:
    uid: int
    gid: int
    pid: int = 0


@dataclass(frozen=True)
class VfsOptions:
    read_only: bool = False
    readahead_blocks: int = 4  # blocks prefetched ahead of a sequential reader (0 = off)
    upload_slots: int = 32  # blocks being uploaded at once (bounds buffered memory)
    idle_flush: float = 5.0  # seconds after which an idle open slice is committed


class Vfs:
    def __init__(
        self,
        meta: Meta,
        chunks: ChunkStore,
        settings: VolumeSettings,
        workers: Workers,
        options: VfsOptions | None = None,
    ) -> None:
        self.meta = meta
        self.chunks = chunks
        self.settings = settings
        self.workers = workers
        self.options = options or VfsOptions()
        self.loader = BlockLoader(chunks, workers)
        self.ids = SliceIds(lambda n: self._meta(meta.reserve_slice_ids, n))
        self.files: dict[int, OpenInode] = {}
        self.handles: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._upload_slots = trio.CapacityLimiter(self.options.upload_slots)
        self._readahead_slots = trio.CapacityLimiter(max(1, self.options.readahead_blocks))
        self._commits: dict[tuple[int, int], int] = {}  # commits per chunk since its last compaction check
        self._compacting: set[tuple[int, int]] = set()
        self._compact_slots = trio.CapacityLimiter(2)  # a compaction holds up to a chunk in memory

    def start(self, nursery: trio.Nursery) -> None:
        """Attach the nursery that runs background uploads, commits and prefetches."""
        self._nursery = nursery

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Vfs.start() was not called"
        return self._nursery

    async def _meta(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self.workers.meta(fn, *args)
        except FsError:
            raise
        except MetaError as exc:
            log.error("metadata engine failed: %s", exc)
            raise FsError(errno.EIO, str(exc)) from None
        except Exception as exc:  # e.g. redis connection errors after the engine's retries
            log.error("metadata call %s failed: %s: %s", getattr(fn, "__name__", fn), type(exc).__name__, exc)
            raise FsError(errno.EIO, "metadata engine error") from None

    def _writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL)

    def _merge(self, attr: Attr) -> Attr:
        """Attributes as this client sees them: buffered writes may make the file longer."""
        state = self.files.get(attr.ino)
        if state is not None:
            state.attr = attr
            if state.writer is not None and state.writer.end > attr.size:
                return attr.with_(size=state.writer.end)
        return attr

    # -- namespace ------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        return self._merge(await self._meta(self.meta.lookup, parent, name))

    async def getattr(self, ino: int) -> Attr:
        return self._merge(await self._meta(self.meta.getattr, ino))

    async def setattr(self, ino: int, changes: SetAttr) -> Attr:
        self._writable()
        state = self.files.get(ino)
        if changes.size is not None and state is not None:
            if state.writer is not None:
                await state.writer.flush()
            state.slices.clear()
        attr = await self._meta(self.meta.setattr, ino, changes)
        if changes.size is not None and state is not None:
            if state.writer is not None:
                state.writer.end = 0  # committed; the metadata length is the truth now
            state.slices.clear()
        return self._merge(attr)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise FsError(errno.EINVAL)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        return await self._meta(self.meta.mknod, parent, name, mode, ctx.uid, ctx.gid, rdev)

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        return await self._meta(self.meta.mkdir, parent, name, mode & 0o7777, ctx.uid, ctx.gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        if not target or len(target) > 4096:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return await self._meta(self.meta.symlink, parent, name, target, ctx.uid, ctx.gid)

    async def readlink(self, ino: int) -> bytes:
        return await self._meta(self.meta.readlink, ino)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        self._writable()
        self._check_name(new_name)
        return self._merge(await self._meta(self.meta.link, ino, new_parent, new_name))

    async def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        await self._meta(self.meta.unlink, parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        await self._meta(self.meta.rmdir, parent, name)

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        self._writable()
        self._check_name(new_name)
        await self._meta(self.meta.rename, parent, name, new_parent, new_name, flags)

    async def statfs(self, ino: int) -> StatFs:
        return await self._meta(self.meta.statfs, ino)

    # -- directories ----------------------------------------------------------------------
    async def opendir(self, ino: int) -> int:
        attr = await self._meta(self.meta.getattr, ino)
        if not attr.is_dir:
            raise FsError(errno.ENOTDIR)
        entries = await self._meta(self.meta.readdir, ino)
        parent = await self._meta(self.meta.getattr, attr.parent or ino) if attr.parent != ino else attr
        listing = [DirEntry(b".", attr), DirEntry(b"..", parent), *entries]
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(fh, ino, listing)
        return fh

    def readdir(self, fh: int, start: int) -> list[DirEntry]:
        handle = self.dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle.entries[start:]

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------------------
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[int, Attr]:
        self._writable()
        self._check_name(name)
        try:
            attr = await self._meta(self.meta.mknod, parent, name, stat.S_IFREG | (mode & 0o7777), ctx.uid, ctx.gid, 0)
        except FsError as exc:
            # Another client created it since the kernel's lookup: O_CREAT without O_EXCL
            # opens the existing file, as POSIX says.
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            attr = await self._meta(self.meta.lookup, parent, name)
            if attr.is_dir:
                raise FsError(errno.EISDIR) from None
            if flags & os.O_TRUNC and attr.size:
                attr = await self.setattr(attr.ino, SetAttr(size=0))
        return await self.open(attr.ino, flags, attr), attr

    async def open(self, ino: int, flags: int, known: Attr | None = None) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        attr = await self._meta(self.meta.open, ino, known)
        state = self.files.get(ino)
        if state is None:
            state = self.files[ino] = OpenInode(ino, attr)
        elif (attr.mtime_ns, attr.size) != (state.attr.mtime_ns, state.attr.size):
            state.slices.clear()  # changed elsewhere since we last looked
        if not state.opens:
            state.slices.clear()
        state.attr = attr
        state.opens += 1
        fh = next(self._fh)
        self.handles[fh] = FileHandle(fh, ino, flags)
        return fh

    def _handle(self, fh: int) -> tuple[FileHandle, OpenInode]:
        handle = self.handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle, self.files[handle.ino]

    async def _slices(self, state: OpenInode, index: int) -> list[Slice]:
        cached = state.slices.get(index)
        if cached is None:
            cached = state.slices[index] = await self._meta(self.meta.read, state.ino, index)
            if len(cached) >= COMPACT_AT:
                self._schedule_compaction(state.ino, index)
        return cached

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle, state = self._handle(fh)
        if state.writer is not None and state.writer.dirty:
            await state.writer.flush()  # read what was written, from committed slices
        end = min(offset + size, state.size)
        if end <= offset:
            return b""

        async def slices_of(index: int) -> list[Slice]:
            return await self._slices(state, index)

        if offset == handle.next_offset:
            handle.sequential += 1
        else:
            handle.sequential = 0
            handle.readahead_to = 0
        handle.next_offset = end
        if handle.sequential >= 1 and self.options.readahead_blocks:
            self._readahead(handle, state, end)
        return await read_file_range(self.loader, slices_of, offset, end - offset)

    def _readahead(self, handle: FileHandle, state: OpenInode, end: int) -> None:
        """Prefetch the blocks after a sequential reader's position, once each."""
        window = self.options.readahead_blocks * self.chunks.block_size
        start = max(end, handle.readahead_to)
        stop = min(end + window, state.size)
        if stop - start < self.chunks.block_size // 2 and stop < state.size:
            return  # wait until a worthwhile stretch is due
        if stop <= start:
            return
        handle.readahead_to = stop
        self.nursery.start_soon(self._prefetch, state, start, stop - start)

    async def _prefetch(self, state: OpenInode, offset: int, size: int) -> None:
        async def slices_of(index: int) -> list[Slice]:
            return await self._slices(state, index)

        try:
            blocks = await blocks_in_range(slices_of, self.chunks.block_size, offset, size)
            async with trio.open_nursery() as nursery:
                for block in blocks:
                    if not self.loader.is_loading(block):
                        nursery.start_soon(self._prefetch_block, block)
        except FsError as exc:
            log.debug("readahead of inode %d stopped: %s", state.ino, exc)

    async def _prefetch_block(self, block: tuple[int, int, int]) -> None:
        async with self._readahead_slots:
            try:
                await self.loader.load(block)
            except FsError:
                pass  # the reader will hit (and report) the same error if it gets there

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        _, state = self._handle(fh)
        if state.writer is None:
            state.writer = FileWriter(
                state.ino, self.chunks, self.workers, self.ids,
                lambda index, piece, ino=state.ino: self._commit(ino, index, piece),
                self.nursery, self._upload_slots,
            )
        await state.writer.write(offset, data)
        return len(data)

    async def _commit(self, ino: int, index: int, piece: Slice) -> None:
        attr = await self._meta(self.meta.write, ino, index, piece, time.time_ns())
        state = self.files.get(ino)
        if state is not None:
            state.slices.pop(index, None)
            state.attr = attr
        key = (ino, index)
        self._commits[key] = self._commits.get(key, 0) + 1
        if self._commits[key] >= COMPACT_AT:
            self._commits.pop(key)
            self._schedule_compaction(ino, index)

    def _schedule_compaction(self, ino: int, index: int) -> None:
        if self.options.read_only or (ino, index) in self._compacting:
            return
        self._compacting.add((ino, index))
        self.nursery.start_soon(self._compact, ino, index)

    async def _compact(self, ino: int, index: int) -> None:
        try:
            async with self._compact_slots:
                new_id = await self.ids.next()
                if await compact_chunk(self.meta, self.chunks, self.loader, self.workers, ino, index, new_id):
                    state = self.files.get(ino)
                    if state is not None:
                        state.slices.pop(index, None)
        except FsError as exc:
            log.warning("compaction of inode %d chunk %d failed: %s", ino, index, exc)
        except Exception:
            log.exception("compaction of inode %d chunk %d failed", ino, index)
        finally:
            self._compacting.discard((ino, index))

    async def flush(self, fh: int) -> None:
        _, state = self._handle(fh)
        if state.writer is not None:
            await state.writer.flush()

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        state = self.files[handle.ino]
        state.opens -= 1
        try:
            if state.opens == 0 and state.writer is not None:
                try:
                    await state.writer.flush()
                except FsError as exc:
                    log.error("data of inode %d written before close was lost: %s", handle.ino, exc)
        finally:
            if state.opens == 0:
                del self.files[handle.ino]
            await self._meta(self.meta.release, handle.ino)

    async def flush_idle(self) -> None:
        for state in list(self.files.values()):
            if state.writer is not None:
                await state.writer.finish_idle(self.options.idle_flush)

    async def flush_all(self) -> None:
        for state in list(self.files.values()):
            if state.writer is not None:
                try:
                    await state.writer.flush()
                except FsError as exc:
                    log.error("unmount: data of inode %d could not be written: %s", state.ino, exc)

    # -- extended attributes --------------------------------------------------------------
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name:
            raise FsError(errno.EINVAL)
        if len(name) > MAX_XATTR_NAME:
            raise FsError(errno.ERANGE)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        if name == INFO_XATTR:
            return await self._info(ino)
        state = self.files.get(ino) if name == CAPABILITY_XATTR else None
        if state is None:
            return await self._meta(self.meta.getxattr, ino, name)
        if not state.capability_known:
            try:
                state.capability = await self._meta(self.meta.getxattr, ino, name)
            except FsError as exc:
                if exc.errno != errno.ENODATA:
                    raise
                state.capability = None
            state.capability_known = True
        if state.capability is None:
            raise FsError(errno.ENODATA)
        return state.capability

    def _forget_xattr(self, ino: int, name: bytes) -> None:
        state = self.files.get(ino)
        if state is not None and name == CAPABILITY_XATTR:
            state.capability_known = False

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        self._check_xattr_name(name)
        if name == INFO_XATTR:
            raise FsError(errno.EPERM)
        if len(value) > MAX_XATTR_VALUE:
            raise FsError(errno.E2BIG)
        self._forget_xattr(ino, name)
        await self._meta(self.meta.setxattr, ino, name, value, flags)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self._meta(self.meta.listxattr, ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        self._forget_xattr(ino, name)
        await self._meta(self.meta.removexattr, ino, name)

    async def _info(self, ino: int) -> bytes:
        """What `fusecache info` shows: inode, size, and every chunk's slices and objects."""
        import json

        from ..layout import CHUNK_SIZE, slice_keys

        attr = await self._meta(self.meta.getattr, ino)
        chunks = []
        if attr.is_file:
            for index in range((attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
                slices = await self._meta(self.meta.read, ino, index)
                if not slices:
                    continue
                chunks.append({
                    "index": index,
                    "slices": [
                        {
                            "id": s.id, "pos": s.pos, "size": s.size, "off": s.off, "len": s.length,
                            "objects": slice_keys(self.chunks.volume, s.id, s.size, self.chunks.block_size)
                            if s.id else [],
                        }
                        for s in slices
                    ],
                })
        doc = {"inode": ino, "size": attr.size, "mode": oct(attr.mode), "nlink": attr.nlink, "chunks": chunks}
        return json.dumps(doc).encode()

    # -- background duties ----------------------------------------------------------------
    async def collect_garbage(self, batch: int = 100) -> int:
        """Delete objects no slice references any more. Returns how many slices went."""
        items = await self._meta(self.meta.take_garbage, batch)
        if not items:
            return 0

        async def remove(slice_id: int, size: int) -> None:
            await self.workers.io(self.chunks.remove_slice, slice_id, size)

        async with trio.open_nursery() as nursery:
            for slice_id, size in items:
                nursery.start_soon(remove, slice_id, size)
        await self._meta(self.meta.ack_garbage, items)
        return len(items)
