"""The pyfuse3 adapter: the only module that speaks the kernel's FUSE protocol.

It converts between kernel and volume inode numbers (a `--subdir` mount shows a volume
directory as its root), `Attr` ↔ `EntryAttributes`, and `FsError` → `FUSEError`.
Everything else is delegated to `Vfs`.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ..errors import FsError
from ..latency import Histograms
from ..types import ROOT_INO, Attr, DirEntry, SetAttr
from ..vfs.vfs import Ctx, Vfs
from .kernel_cache import LONG_TIMEOUT, KernelCache

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

RENAME_EXCHANGE = 2  # linux/fs.h
BLKSIZE = 1 << 20  # st_blksize: tools like cp size their I/O by it; large I/O is cheap here
REPLIED_LISTINGS = 256  # directories whose built readdir replies are kept


def fs_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn FsError into FUSEError; anything unexpected is logged and becomes EIO."""

    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # One perf_counter pair per request: the op latency histograms (fusecache_fuse_op_*).
        t0 = perf_counter()
        try:
            return await fn(*args, **kwargs)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            args[0].op_latency.observe(op, perf_counter() - t0)  # type: ignore[attr-defined]

    return wrapper


def _ctx(ctx: pyfuse3.RequestContext) -> Ctx:
    return Ctx(ctx.uid, ctx.gid, ctx.pid)


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, vfs: Vfs, root: int = ROOT_INO, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 coherent_timeout: float = LONG_TIMEOUT):
        super().__init__()
        self.vfs = vfs
        self.root = root
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.initialized = False  # the kernel's INIT request arrived
        self._listing: dict[int, tuple[int | None, int]] = {}  # dir handle → (kernel-cache token, dir inode)
        # dir inode → (its listing, the replies built of it: short, long). The vfs hands out
        # the same listing while nothing in it changed, so a listing read again builds nothing.
        self._replies: dict[int, tuple[list[DirEntry], list[Any], list[Any]]] = {}
        self._left_over: dict[int, tuple[int, pyfuse3.EntryAttributes]] = {}  # dir handle → (index, reply)
        self.on_init: Callable[[], None] | None = None
        # Never shorter than what the user asked for without the feed.
        long = max(coherent_timeout, attr_timeout, entry_timeout) if coherent_timeout > 0 else 0.0
        self.kernel = KernelCache(vfs.fast.cache.notice_token, vfs.fast.current_attrs, self._entry_ino,
                                  self._kernel, long)
        vfs.fast.cache.listener = self.kernel.changed
        vfs.fast.on_own_change = self.kernel.own_change
        vfs.stat_sources["kernel_cache"] = self.kernel.snapshot
        self.op_latency = Histograms()  # FUSE request → seconds, by op (see fs_errors)
        vfs.stat_sources["fuse_ops"] = self.op_latency.snapshot

    def init(self) -> None:
        self.initialized = True
        if self.on_init is not None:
            self.on_init()

    async def _entry_ino(self, parent: int, name: bytes) -> int | None:
        """Where (parent, name) leads in the volume now; None if nowhere."""
        try:
            return (await self.vfs.fast.lookup(parent, name)).ino  # type: ignore[no-any-return]
        except FsError:
            return None

    # Kernel inode 1 is always the mount's root; with --subdir that is another volume inode.
    def _vol(self, ino: int) -> int:
        return self.root if ino == pyfuse3.ROOT_INODE else ino

    def _kernel(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == self.root else ino

    def _entry(self, attr: Attr, long: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = self._kernel(attr.ino)
        e.generation = 0
        if long:
            e.entry_timeout = e.attr_timeout = self.kernel.long
        else:
            e.entry_timeout = self.entry_timeout
            e.attr_timeout = self.attr_timeout
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLKSIZE
        e.st_blocks = (attr.size + 511) // 512
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _new_entry(self, token: int | None, parent: int, name: bytes, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel now holds (parent, name) → attr.ino."""
        return self._entry(attr, self.kernel.keep(token, attr, (parent, name)))

    @fs_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent, token = self._vol(parent_inode), self.kernel.begin()
        return self._new_entry(token, parent, name, await self.vfs.lookup(parent, name))

    async def forget(self, inode_list: Any) -> None:
        # Inodes live in the metadata engine; only the kernel cache's records follow the kernel.
        for ino, nlookup in inode_list:
            self.kernel.forget(self._vol(ino), nlookup)

    @fs_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        token = self.kernel.begin()
        attr = await self.vfs.getattr(self._vol(inode))
        return self._entry(attr, self.kernel.keep(token, attr))

    @fs_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes = SetAttr(
            mode=attr.st_mode & 0o7777 if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        token = self.kernel.begin()
        done = await self.vfs.setattr(self._vol(inode), changes)
        return self._entry(done, self.kernel.keep(token, done))

    @fs_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.vfs.readlink(self._vol(inode))

    @fs_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, token = self._vol(parent_inode), self.kernel.begin()
        return self._new_entry(token, parent, name, await self.vfs.mknod(parent, name, mode, rdev, _ctx(ctx)))

    @fs_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, token = self._vol(parent_inode), self.kernel.begin()
        return self._new_entry(token, parent, name, await self.vfs.mkdir(parent, name, mode, _ctx(ctx)))

    @fs_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.unlink(self._vol(parent_inode), name)
        self.kernel.name_gone(self._vol(parent_inode), name)

    @fs_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.rmdir(self._vol(parent_inode), name)
        self.kernel.name_gone(self._vol(parent_inode), name)

    @fs_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, token = self._vol(parent_inode), self.kernel.begin()
        return self._new_entry(token, parent, name, await self.vfs.symlink(parent, name, target, _ctx(ctx)))

    @fs_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = (self._vol(parent_inode_old), name_old), (self._vol(parent_inode_new), name_new)
        moved, other = self.kernel.holder(*old), self.kernel.holder(*new)
        await self.vfs.rename(*old, *new, flags)
        self.kernel.renamed(old, new, moved, other, bool(flags & RENAME_EXCHANGE))

    @fs_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, token = self._vol(new_parent_inode), self.kernel.begin()
        return self._new_entry(token, parent, new_name, await self.vfs.link(self._vol(inode), parent, new_name))

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        # keep_cache: the file is unchanged since the kernel last cached it, so its page
        # cache stays valid; without it the kernel drops the file's pages on this open.
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.vfs.keeps_cache(fh))

    @fs_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._file_info(await self.vfs.open(self._vol(inode), flags))

    @fs_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, token = self._vol(parent_inode), self.kernel.begin()
        fh, attr = await self.vfs.create(parent, name, mode, flags, _ctx(ctx))
        return self._file_info(fh), self._new_entry(token, parent, name, attr)

    @fs_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        return await self.vfs.read(fh, off, size)

    @fs_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.vfs.write(fh, off, buf)

    @fs_errors
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @fs_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    @fs_errors
    async def release(self, fh: int) -> None:
        await self.vfs.release(fh)

    @fs_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        ino, token = self._vol(inode), self.kernel.begin()
        fh = await self.vfs.opendir(ino)
        self._listing[fh] = (token, ino)
        return fh

    @fs_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # The kernel takes a listing a page (a few dozen entries) at a time: the listing is
        # read once at opendir, and the entry that did not fit is not built twice.
        # Each entry sent is a kernel name (readdirplus), except "." and "..".
        entries = self.vfs.dir_entries(fh)
        kept, ino = self._listing.get(fh, (None, 0))
        replies = self._replies.get(ino)
        if replies is None or replies[0] is not entries:
            if len(self._replies) >= REPLIED_LISTINGS:
                self._replies.clear()
            replies = self._replies[ino] = (entries, [None] * len(entries), [None] * len(entries))
        _, short, long = replies
        reply, make, keep = pyfuse3.readdir_reply, self._entry, self.kernel.keep
        left = self._left_over.pop(fh, None)  # the entry that did not fit last time: kept already
        for i in range(start_id, len(entries)):
            entry = entries[i]
            name = entry.name
            if left is not None and left[0] == i:
                attrs = left[1]
            else:
                held = i >= 2 and keep(kept, entry.attr, (ino, name))  # 0, 1: "." and ".."
                built = long if held else short
                attrs = built[i]
                if attrs is None:
                    attrs = built[i] = make(entry.attr, held)
            if not reply(token, name, attrs, i + 1):
                self._left_over[fh] = (i, attrs)
                break

    async def releasedir(self, fh: int) -> None:
        self._listing.pop(fh, None)
        self._left_over.pop(fh, None)
        self.vfs.releasedir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # metadata commits are synchronous: nothing is buffered for directories

    @fs_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = await self.vfs.statfs(self.root)
        out = pyfuse3.StatvfsData()
        out.f_bsize = 4096
        out.f_frsize = 4096
        out.f_blocks = st.total_bytes // 4096
        out.f_bfree = st.avail_bytes // 4096
        out.f_bavail = st.avail_bytes // 4096
        out.f_files = st.used_inodes + st.avail_inodes
        out.f_ffree = st.avail_inodes
        out.f_favail = st.avail_inodes
        out.f_namemax = 255
        return out

    @fs_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.vfs.getxattr(self._vol(inode), name)

    @fs_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        # pyfuse3 checks XATTR_CREATE/XATTR_REPLACE itself (via getxattr) before calling us.
        await self.vfs.setxattr(self._vol(inode), name, value)

    @fs_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.vfs.listxattr(self._vol(inode))

    @fs_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.removexattr(self._vol(inode), name)

