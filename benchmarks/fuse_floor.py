"""The FUSE floor: a pyfuse3 + trio filesystem that keeps its namespace in a dict.

    .venv/bin/python -m benchmarks.fuse_floor MOUNTPOINT     # serves until unmounted

It answers create/lookup/getattr/unlink/open/flush/release from memory, with the mount
options and cache timeouts fusecache uses, so `create`/`stat`/`unlink` measured on it are
what the Python FUSE stack itself (kernel ↔ libfuse ↔ pyfuse3 ↔ trio) allows on this
machine, with no metadata engine behind it. bench_core prints them beside fusecache and
juicefs: a metadata row of fusecache close to its floor row is bound by the FUSE binding,
not by fusecache's own work. Small files keep their bytes in memory (up to KEEP_FILE each,
KEEP_TOTAL in all), so a reader of a tree of small files checks them by hash, and its rate
is what the FUSE stack allows for that pattern; bigger files keep only their size and read
as zeros.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from typing import Any

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
TIMEOUT = 1.0  # fusecache's default attr/entry timeouts


ZEROS = memoryview(bytes(1 << 20))
KEEP_FILE = 1 << 20  # bytes a file may have and still keep them
KEEP_TOTAL = 1 << 30  # bytes kept over all files


class FloorFs(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self) -> None:
        super().__init__()
        now = time.time_ns()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {ROOT: self._attr(ROOT, stat.S_IFDIR | 0o755, now)}
        self.children: dict[int, dict[bytes, int]] = {ROOT: {}}
        self.next_ino = ROOT + 1
        self.data: dict[int, bytearray] = {}  # the bytes of small files (see KEEP_FILE)
        self.kept = 0

    @staticmethod
    def _attr(ino: int, mode: int, now: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = ino, mode, 2 if stat.S_ISDIR(mode) else 1
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        e.entry_timeout = e.attr_timeout = TIMEOUT
        return e

    def _new(self, parent: int, name: bytes, mode: int) -> pyfuse3.EntryAttributes:
        entries = self.children.get(parent)
        if entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        attr = self.attrs[ino] = self._attr(ino, mode, time.time_ns())
        entries[name] = ino
        if stat.S_ISDIR(mode):
            self.children[ino] = {}
        return attr

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        ino = self.children.get(parent_inode, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        attr = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=attr.st_ino), attr

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        attr = self.attrs[fh]
        end = off + len(buf)
        kept = self.data.get(fh)
        if kept is None and attr.st_size == 0:  # a new file: keep its bytes while it is small
            kept = self.data[fh] = bytearray()
        if kept is not None:
            grow = max(0, end - len(kept))
            if end > KEEP_FILE or self.kept + grow > KEEP_TOTAL:
                self.kept -= len(self.data.pop(fh))  # too big to keep: its bytes read as zeros
            else:
                kept.extend(bytes(grow))
                self.kept += grow
                kept[off:end] = buf
        attr.st_size = max(attr.st_size, end)
        return len(buf)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        """A small file's bytes, else zeros from one shared buffer: a read that costs nothing
        but the FUSE round trip."""
        end = min(off + size, self.attrs[fh].st_size)
        kept = self.data.get(fh)
        if kept is not None:
            return memoryview(kept)[off:end]
        return ZEROS[: max(0, end - off)]

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ino = self.children.get(parent_inode, {}).pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.attrs.pop(ino, None)
        self.kept -= len(self.data.pop(ino, b""))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ino = self.children.get(parent_inode, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.children.get(ino):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del self.children[parent_inode][name]
        self.children.pop(ino, None)
        self.attrs.pop(ino, None)

    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode not in self.children:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = list(self.children[fh].items())  # a listing as it stands: names are kept in order
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], i + 1):
                break

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.fuse_floor MOUNTPOINT")
    sys.setswitchinterval(0.005)  # as fusecache's mount does
    pyfuse3.init(FloorFs(), sys.argv[1], {"fsname=fusefloor", "subtype=fusefloor", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
