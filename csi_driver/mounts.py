"""Bind mounts and unmounts through mount(2)/umount2(2) (no util-linux in the loop).

A bind mount takes per-mount flags only on a second "remount" call, so `bind` is two
syscalls; if the second fails the first is undone. Publish binds get nosuid and nodev
unless the volume capability asks for suid/dev: a shared filesystem should not hand a pod
set-uid binaries or device nodes written by another tenant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import time
from collections.abc import Iterable

from fusecache.mountinfo import Mount, mounts_at

log = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

_SET = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
        "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
        "strictatime": MS_STRICTATIME}
_CLEAR = {"rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC, "diratime": MS_NODIRATIME}
_ATIME = MS_NOATIME | MS_RELATIME | MS_STRICTATIME

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}", path)


def mount_flags(readonly: bool, flags: Iterable[str]) -> int:
    """MS_* bits for a bind remount: nosuid,nodev by default, then the requested flags."""
    bits = MS_NOSUID | MS_NODEV
    for flag in flags:
        if flag in _SET:
            if _SET[flag] & _ATIME:
                bits &= ~_ATIME
            bits |= _SET[flag]
        elif flag in _CLEAR:
            bits &= ~_CLEAR[flag]
    if readonly:
        bits |= MS_RDONLY
    return bits


def bind(source: str, target: str, readonly: bool = False, flags: Iterable[str] = ()) -> None:
    """Bind-mount directory `source` at `target` with the given per-mount flags."""
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), "bind mount onto", target)
    bits = mount_flags(readonly, flags)
    result = _libc.mount(None, target.encode(), None, MS_BIND | MS_REMOUNT | bits, None)
    if result != 0:
        err = ctypes.get_errno()
        _libc.umount2(target.encode(), MNT_DETACH)
        raise OSError(err, f"setting mount flags on {target}: {os.strerror(err)}", target)


def unmount(path: str, lazy: bool = False) -> None:
    _check(_libc.umount2(path.encode(), MNT_DETACH if lazy else 0), "unmount", path)


def unmount_stack(path: str, only: tuple[str, ...] = (), attempts: int = 20) -> int:
    """Unmount every mount stacked at `path` (only those whose fstype is in `only`, when
    given). A dead FUSE mount (ENOTCONN) is detached lazily; a busy one is retried for a
    short while, then reported. Returns how many mounts went away."""
    removed = 0
    for _ in range(attempts):
        stack = mounts_at(path)
        if not stack or (only and stack[-1].fstype not in only):
            return removed
        try:
            unmount(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ESTALE):
                unmount(path, lazy=True)
            elif exc.errno == errno.EBUSY:
                time.sleep(0.2)
                continue
            elif exc.errno == errno.EINVAL and not mounts_at(path):
                return removed  # raced with another unmount
            else:
                raise
        removed += 1
    raise OSError(errno.EBUSY, f"{path} stays busy: files are still open there", path)


def same_subtree(mount: Mount | None, dev: str, root: str) -> bool:
    """Is `mount` a view of superblock `dev` at subtree `root`?"""
    return mount is not None and mount.dev == dev and os.path.normpath(mount.root) == os.path.normpath(root)
