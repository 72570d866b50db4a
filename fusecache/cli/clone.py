"""`fusecache clone SRC DST`: copy a file or a directory tree on a mount by metadata alone.

The copy shares every object with its source (no data is read or written) and is linked
under DST only when complete; the two then change independently. `--read-only` makes a
snapshot that no one can change through any mount, root included.
"""

from __future__ import annotations

import argparse
import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CliError, FsError, MetaError
from ..meta.redis import RedisMeta
from ..types import ROOT_INO, Attr
from ..units import format_size
from .common import connect_meta, load_volume, redis_engine
from .mounted import mount_target
from .progress import ScanProgress

DESCRIPTION = """\
Copy SRC (a file, a symlink or a directory tree on a fusecache mount) to DST on the same
volume without copying any data: the copy shares the source's objects, and a later write
to either side changes that side only. The copy appears under DST only when it is
complete; if the command is killed, running it again resumes it, and fusecache fsck
--repair removes an abandoned one. With --read-only the copy is a snapshot: nobody can
change it through a mount, root included (EROFS); fusecache snapshot --delete removes it.
"""

_ERRORS = {
    errno.EEXIST: "{dst} exists",
    errno.ENOENT: "{src} does not exist",
    errno.ENOTDIR: "a parent of {dst} is not a directory",
    errno.ENOSPC: "the volume has no room for the copy's files (its capacity or inode limit)",
    errno.EDQUOT: "the copy would exceed a directory quota above {dst}",
    errno.EROFS: "{dst} would be inside a read-only snapshot",
    errno.EPERM: "{dst} would be inside the trash",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clone", help="copy a file or tree instantly, sharing its data", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="file or directory on a fusecache mount")
    p.add_argument("dst", metavar="DST", help="new path on the same volume (must not exist)")
    p.add_argument("--read-only", action="store_true", help="make a read-only snapshot")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _where(path: str, role: str) -> tuple[str, str, bytes]:
    """(META_URL, volume path of the parent directory, name) of a path on a mount."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    if role == "SRC" and os.path.ismount(absolute):
        url, vpath = mount_target(absolute)  # a mount's root: the directory it shows
        head, tail = os.path.split(vpath)
        if not tail:
            return url, "", b""
        return url, head, tail.encode()
    if not name or name in (".", ".."):
        raise CliError(f"{role} {path!r} names no entry", 2)
    if not os.path.isdir(parent):
        raise CliError(f"{role} {path}: {parent} is not a directory")
    url, vpath = mount_target(os.path.realpath(parent))
    return url, vpath, os.fsencode(name)


def resolve(meta: RedisMeta, vpath: str, name: bytes) -> Attr:
    """The inode at `vpath`/`name` of the volume (the root for an empty name)."""
    from ..meta.config import resolve_dir

    parent = resolve_dir(meta, vpath) if vpath else ROOT_INO
    return meta.lookup(parent, name) if name else meta.getattr(ROOT_INO)


@contextmanager
def volume_of(url: str, command: str) -> Iterator[RedisMeta]:
    meta = redis_engine(connect_meta(url), command)
    try:
        load_volume(meta)
        yield meta
    except MetaError as exc:
        raise CliError(str(exc)) from None
    finally:
        meta.shutdown()


def run(args: argparse.Namespace) -> int:
    from ..meta.clone import clone
    from ..meta.config import resolve_dir

    src_url, src_dir, src_name = _where(args.src, "SRC")
    dst_url, dst_dir, dst_name = _where(args.dst, "DST")
    if not dst_name:
        raise CliError(f"DST {args.dst} is a mount's root, which exists", 2)
    if src_url != dst_url:
        raise CliError(f"SRC and DST are on different volumes ({src_url} and {dst_url}); a clone stays "
                       "within one volume", 2)
    progress = ScanProgress(enabled=not args.quiet)
    started = time.monotonic()
    with volume_of(src_url, "clone") as meta:
        try:
            src = resolve(meta, src_dir, src_name)
            parent = resolve_dir(meta, dst_dir)
            attr = clone(meta, src.ino, parent, dst_name, read_only=args.read_only, progress=progress)
        except FsError as exc:
            message = _ERRORS.get(exc.errno)
            if message is None or exc.detail:  # the detail names what is wrong more exactly
                raise CliError(f"clone {args.src} -> {args.dst}: {exc.detail or os.strerror(exc.errno)}") from None
            raise CliError(message.format(src=args.src, dst=args.dst)) from None
        finally:
            progress.done()
    kind = "snapshot" if args.read_only else "clone"
    size = format_size(attr.size) if not attr.is_dir else "a tree"
    print(f"{kind} of {args.src} at {args.dst}: {size}, no data copied ({time.monotonic() - started:.1f} s)")
    return 0
