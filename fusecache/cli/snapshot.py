"""`fusecache snapshot SRC DST`: a read-only clone; `fusecache snapshot --delete PATH`
removes one (or any tree) at once, which `rm -r` cannot do to a read-only snapshot."""

from __future__ import annotations

import argparse
import errno
import time

from ..errors import CliError, FsError
from .clone import _where, resolve, volume_of
from .clone import run as run_clone
from .progress import ScanProgress

DESCRIPTION = """\
Make a read-only snapshot of SRC (a file or a directory tree on a fusecache mount) at DST:
an instant copy that shares all data with SRC and that nobody can change through a mount,
root included (EROFS). fusecache snapshot --delete PATH removes a snapshot (or any
tree, without the trash) and frees the data only it still holds.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="make or delete a read-only snapshot", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="file or directory to snapshot; with --delete: the snapshot")
    p.add_argument("dst", metavar="DST", nargs="?", help="new path of the snapshot on the same volume")
    p.add_argument("--delete", action="store_true", help="delete the snapshot (or tree) at SRC")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.delete:
        if args.dst is None:
            raise CliError("snapshot SRC DST needs DST (or --delete PATH)", 2)
        args.read_only = True
        return run_clone(args)
    if args.dst is not None:
        raise CliError("snapshot --delete takes one PATH", 2)
    from ..meta.clone import remove_tree
    from ..meta.config import resolve_dir

    url, vdir, name = _where(args.src, "PATH")
    if not name:
        raise CliError(f"{args.src} is a mount's root; delete what is in it instead", 2)
    progress = ScanProgress(enabled=not args.quiet)
    started = time.monotonic()
    with volume_of(url, "snapshot") as meta:
        try:
            resolve(meta, vdir, name)
            removed = remove_tree(meta, resolve_dir(meta, vdir), name, progress)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                raise CliError(f"{args.src} does not exist") from None
            raise CliError(f"snapshot --delete {args.src}: {exc.detail or exc}") from None
        finally:
            progress.done()
    print(f"deleted {args.src}: {removed} entries ({time.monotonic() - started:.1f} s)")
    return 0
