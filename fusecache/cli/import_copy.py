"""`fusecache import --copy`: after the import, the data of the files under DEST_DIR is
written into the volume's own store (fusecache.importer.copy), with progress on stderr,
one line per file that failed, and a summary."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..errors import CliError, FsError, MetaError, ObjectStoreError
from ..importer import SourceError
from ..importer.copy import DEFAULT_PARALLEL, copy_tree
from ..units import format_size
from .common import connect_meta, load_volume, open_store, redis_engine
from .progress import ScanProgress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--copy", action="store_true",
                   help="also copy the data into the volume's own store, so the files no longer depend on "
                        "SOURCE (resumable: run it again to finish a copy cut short)")


def run_copy(args: argparse.Namespace) -> int:
    """Copy what is still imported under DEST_DIR; 1 if any file failed."""
    if not args.verbose:
        # Each failed file gets one line below; the readers' own log lines would repeat it.
        logging.getLogger("fusecache.chunk").setLevel(logging.CRITICAL)
    meta = redis_engine(connect_meta(args.meta_url), "import")
    started = time.monotonic()
    plan_progress = ScanProgress(enabled=not args.quiet)
    progress = ScanProgress(enabled=not args.quiet, show=format_size)
    store = chunks = None
    try:
        from ..chunk.external import volume_chunks

        settings = load_volume(meta)
        store = open_store(settings)
        chunks = volume_chunks(meta, store, settings)
        summary = copy_tree(meta, chunks, args.dest, args.parallel or DEFAULT_PARALLEL, progress, plan_progress)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    except FsError as exc:
        raise CliError(f"copy into {args.dest}: {exc.detail or exc}") from None
    except (MetaError, ObjectStoreError) as exc:
        raise CliError(f"copy into {args.dest}: {exc}; run the same command again to finish it") from None
    finally:
        plan_progress.done()
        progress.done()
        if chunks is not None:
            chunks.close(drain_stall=0)
            if chunks.external is not None:
                chunks.external.close()
        if store is not None:
            store.close()
        meta.shutdown()
    for path, why in sorted(summary.failed.items()):
        print(f"fusecache: import --copy: {path}: {why}", file=sys.stderr)
    print(f"copied {summary.files} files ({format_size(summary.bytes)}) into the volume's store under {args.dest}: "
          f"{summary.owned} already owned, {len(summary.failed)} failed ({time.monotonic() - started:.1f} s)")
    return 1 if summary.failed else 0
