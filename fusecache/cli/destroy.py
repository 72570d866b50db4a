"""`fusecache destroy META_URL UUID`: delete every object and every metadata key of a volume.

The order is what makes it safe to interrupt and run again (docs/data-safety.md):
1. the UUID must be the volume's (`fusecache status` shows it), else nothing happens;
2. the store must answer (checked fast, before anything changes);
3. the volume is marked as being destroyed: from then on no mount, fsck or gc opens it;
4. sessions that may still read make it refuse, and take the mark back, unless --force:
   live ones (a heartbeat within the last minute), and those that stopped reporting less
   than the garbage delay before that. A client judged dead keeps what it had open for one
   garbage delay more (its files go through the delayed queue), and destroy keeps that
   promise. A mount that started just before the mark sees it after registering its
   session and ends, so no client is missed;
5. the objects under `<name>/` go (listed page by page, deleted in parallel, bounded);
6. the Redis keys under the volume's `{prefix}` go, the settings last.
The trash and the delayed-garbage queue go with the rest without waiting: both only
protect data for users and readers of this volume, and step 4 made sure there are none.
An interruption after 3 leaves a marked volume whose objects may be partly gone: no client
can open it, and the same command finishes the job. Objects go before keys, so nothing is
ever left in the store that no metadata names (a leak nobody could find).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CliError, MetaError, ObjectStoreError
from ..object.base import ObjectStore
from ..units import format_duration, format_size
from .common import connect_meta, open_store, redis_engine
from .progress import ScanProgress

if TYPE_CHECKING:
    from ..meta.destroy import Session

DESCRIPTION = """\
Delete a volume for good: every object of it in the bucket and every key of it in Redis.
Other volumes in the same bucket (another name) or the same Redis database (another
?prefix=) are not touched.

The UUID, which 'fusecache status META_URL' shows, confirms which volume you mean.
While clients have the volume mounted, destroy refuses and lists them; --force destroys
it under them (their reads and writes then fail). Progress goes to stderr. If destroy is
interrupted, the volume can no longer be mounted: run the same command again to finish.
Cached blocks on the clients (the cache directories' <uuid>/ folders) are not removed.
"""

LIVE_AFTER = 60.0  # a session with a heartbeat this recent is a mounted client (= gc, fsck)
DELETE_THREADS = 16
PAGE = 1000
SHOWN_SESSIONS = 5


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("destroy", help="delete a volume and all its data", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("uuid", metavar="UUID", help="the volume's UUID, as confirmation")
    p.add_argument("--force", action="store_true", help="destroy even while clients have the volume mounted")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..meta import destroy as plan
    from ..object import check_store

    progress = ScanProgress(enabled=not args.quiet)
    meta = redis_engine(connect_meta(args.meta_url), "destroy")
    store: ObjectStore | None = None
    try:
        try:
            settings = meta.load()
        except MetaError as exc:
            raise CliError(str(exc).replace("run 'fusecache format' first", "nothing to destroy")) from None
        if args.uuid.strip().lower() != settings.uuid.lower():
            raise CliError(f"{args.uuid!r} is not the UUID of volume {settings.name!r} at this META_URL; "
                           "nothing was deleted ('fusecache status META_URL' shows the UUID)", 2)
        try:
            check_store(settings.storage, settings.bucket, settings.access_key, settings.secret_key, write=False)
        except (ObjectStoreError, ValueError) as exc:
            raise CliError(f"{exc}; nothing was deleted") from None
        _, marked_now = plan.mark(meta)
        found = plan.sessions(meta)
        live = [s for s in found if s.age <= LIVE_AFTER]
        silent = [s for s in found if LIVE_AFTER < s.age <= LIVE_AFTER + settings.garbage_delay]
        if (live or silent) and not args.force:
            if marked_now:
                plan.unmark(meta)
            if live:
                raise CliError(f"volume {settings.name!r} is mounted by {_clients(live)}; unmount "
                               "it there first, or destroy it anyway with --force; nothing was deleted")
            wait = LIVE_AFTER + settings.garbage_delay - max(s.age for s in silent)
            raise CliError(f"volume {settings.name!r} was mounted by {_clients(silent)}, which stopped "
                           "reporting but may come back and read; wait "
                           f"{format_duration(max(1, round(wait)))} (the garbage delay) or use --force; "
                           "nothing was deleted")
        if live or silent:
            print(f"fusecache: warning: destroying volume {settings.name!r} while it is mounted by "
                  f"{_clients(live + silent)}", file=sys.stderr)
        store = open_store(settings)
        objects, size = delete_objects(store, f"{settings.name}/", progress)
        if settings.storage == "file":
            _remove_empty_dirs(Path(settings.bucket) / settings.name)
        keys = plan.delete_keys(meta, progress)
    except (MetaError, ObjectStoreError) as exc:
        raise CliError(f"destroy stopped: {exc}; the volume stays marked as being destroyed, "
                       "run the same command again to finish") from None
    except KeyboardInterrupt:
        raise CliError("destroy interrupted; the volume stays marked as being destroyed, "
                       "run the same command again to finish", 130) from None
    finally:
        progress.done()
        if store is not None:
            store.close()
        meta.shutdown()
    print(f"volume {settings.name!r} ({settings.uuid}) destroyed: {objects} objects ({format_size(size)}) "
          f"and {keys} metadata keys deleted")
    return 0


def _clients(live: list[Session]) -> str:
    shown = [f"{s.info.host}:{s.info.mountpoint} (pid {s.info.pid}, heartbeat {s.age:.0f} s ago)"
             for s in live[:SHOWN_SESSIONS]]
    more = f" and {len(live) - SHOWN_SESSIONS} more" if len(live) > SHOWN_SESSIONS else ""
    noun = "client" if len(live) == 1 else "clients"
    return f"{len(live)} {noun}: " + ", ".join(shown) + more


def delete_objects(store: ObjectStore, prefix: str, progress: ScanProgress) -> tuple[int, int]:
    """Delete every object under `prefix`: pages are listed one after another and each
    page's deletes run on DELETE_THREADS threads, at most two pages in flight (memory stays
    bounded on any volume). Counted first, so the progress line has a total."""
    total = 0
    for total, _ in enumerate(store.list_all(prefix), 1):
        progress("counting objects", total, None)
    deleted = size = 0
    inflight: deque[list[Future[None]]] = deque()
    marker = ""
    with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="destroy") as pool:
        try:
            while True:
                page = store.list(prefix, marker, PAGE)
                inflight.append([pool.submit(store.delete, o.key) for o in page])
                size += sum(o.size for o in page)
                while inflight and (len(inflight) > 1 or len(page) < PAGE):
                    for future in inflight.popleft():
                        future.result()  # a failed delete stops destroy (after the store's retries)
                        deleted += 1
                        progress("deleting objects", deleted, max(total, deleted))
                if len(page) < PAGE:
                    return deleted, size
                marker = page[-1].key
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _remove_empty_dirs(top: Path) -> None:
    """A local store keeps its directories (local.py); with the volume gone, drop its
    empty ones. Best effort: a directory something else put a file into stays."""
    if not top.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
