"""`fusecache import META_URL SOURCE DEST_DIR`: objects that already live in a bucket (or
files in a local directory) appear as files under DEST_DIR, without copying any data
(unless --copy asks for it).

Each object becomes a file whose chunks are external slices naming one version (ETag) of
the object; reads fetch ranges of it from the source and cache them like any block.
Prefixes become directories; sizes and mtimes come from the listing.
"""

from __future__ import annotations

import argparse
import os
import time

from ..errors import CliError, FsError, MetaError
from ..importer import LISTERS, SourceError, import_tree, parse_source
from ..units import format_size
from . import import_copy
from .common import connect_meta, load_volume, positive_int, redis_engine
from .progress import ScanProgress

DESCRIPTION = """\
Make the objects under SOURCE appear as files under DEST_DIR in the volume, in seconds and
without copying any data: reads fetch from SOURCE and are cached like any other data, and
warmup fills the cache ahead of a job. Prefixes become directories; sizes and mtimes come
from the listing. Files can be written, truncated, renamed and deleted like any other:
nothing is ever written to or deleted from SOURCE. If an object changes at SOURCE, its file
reads fail with EIO (never a mix of old and new bytes) until --update refreshes it.

--update lists SOURCE again and refreshes what changed there; --lazy lists each directory
only when a mount first looks into it; --copy also writes the data into the volume's own
store, so that the files no longer depend on SOURCE.

SOURCE is an S3 bucket URL with an optional prefix, http(s)://host:port/bucket/prefix, with
its credentials in env SOURCE_ACCESS_KEY and SOURCE_SECRET_KEY (kept in the volume's
metadata, masked everywhere), or a local directory. DEST_DIR is a directory of the volume,
from its root (made if missing).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="show a bucket's objects as files, copying nothing", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("source", metavar="SOURCE", help="http(s)://host:port/bucket[/prefix], or a local directory")
    p.add_argument("dest", metavar="DEST_DIR", help="directory in the volume, from its root, e.g. /train")
    p.add_argument("--update", action="store_true",
                   help="list SOURCE again: add new objects and give files the current version of "
                        "objects changed at SOURCE (files changed in the volume are kept)")
    p.add_argument("--delete", action="store_true",
                   help="with --update: also delete files whose object is gone from SOURCE "
                        "(files changed in the volume are kept)")
    p.add_argument("--lazy", action="store_true",
                   help="list nothing now: each directory is listed from SOURCE the first time a mount "
                        "looks into it, so a huge bucket is usable at once (a later --update fills in the rest)")
    p.add_argument("-p", "--parallel", type=positive_int, metavar="N",
                   help=f"prefixes listed at once (default {LISTERS}), and with --copy chunks copied at once "
                        f"(default {import_copy.DEFAULT_PARALLEL})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    import_copy.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.delete and not args.update:
        raise CliError("--delete works with --update only", 2)
    if args.lazy and args.update:
        raise CliError("--lazy lists nothing now, so it cannot --update; run --update without it", 2)
    if args.lazy and args.copy:
        raise CliError("--lazy lists nothing now, so there is nothing to --copy; run --copy without it", 2)
    try:
        spec = parse_source(args.source, os.environ.get("SOURCE_ACCESS_KEY", ""),
                            os.environ.get("SOURCE_SECRET_KEY", ""))
    except SourceError as exc:
        raise CliError(str(exc), 2) from None
    meta = redis_engine(connect_meta(args.meta_url), "import")
    progress = ScanProgress(enabled=not args.quiet)
    started = time.monotonic()
    try:
        summary = import_tree(meta, spec, args.dest, load_volume(meta), progress, update=args.update,
                              delete=args.delete, parallel=args.parallel or LISTERS, lazy=args.lazy)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    except FsError as exc:
        raise CliError(f"import into {args.dest}: {exc.detail or os.strerror(exc.errno)}") from None
    except MetaError as exc:
        raise CliError(str(exc)) from None
    finally:
        progress.done()
        meta.shutdown()
    if args.lazy:
        print(f"{args.dest} now shows {spec.shown}: each directory is listed from it the first time a mount "
              "looks into it; no data copied")
        return 0
    skipped = sum(summary.skipped.values())
    taken = "held by other files, kept" if args.update else "already there"
    print(f"imported {summary.files} objects ({format_size(summary.bytes)}) from {spec.shown} into {args.dest}: "
          f"{summary.directories} directories made, {summary.existing} {taken}, {skipped} skipped; "
          f"no data copied ({time.monotonic() - started:.1f} s)")
    if args.update:
        print(f"  update: {summary.refreshed} refreshed to a new version, {summary.unchanged} unchanged, "
              f"{summary.changed_kept} changed in the volume and kept")
    if args.delete:
        print(f"  delete: {summary.deleted} files whose object is gone deleted, "
              f"{summary.directories_deleted} emptied directories removed")
    for reason, count in sorted(summary.skipped.items()):
        print(f"  skipped {count}: {reason}")
    return import_copy.run_copy(args) if args.copy else 0
