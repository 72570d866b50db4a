"""`fusecache dump META_URL [FILE]`: a volume's whole metadata as one JSON document."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from typing import IO

from ..errors import CliError, MetaError
from ..meta.dump import KeyDump
from ..meta.redis import RedisMeta
from ..types import VolumeSettings
from .common import connect_meta, redis_engine, refuse_destroyed
from .dumpfile import DumpWriter, open_text
from .progress import ScanProgress

DESCRIPTION = """\
Write a volume's whole metadata to FILE (default: stdout) as one JSON document: the tree,
attributes, extended attributes, symlinks, slices, quotas, settings, counters, trash and
pending garbage. Objects in the bucket are not part of it: a dump restores a volume whose
metadata was lost, over the same bucket. The S3 secret key is left out unless
--keep-secret-key is given. A FILE ending in .gz is compressed.

The dump is a consistent snapshot: Redis reports every change made while it runs, and a
dump that saw one starts over (a few times), then gives up and says so. A mounted but
idle volume dumps fine; one that is being written to may need its writers paused.
Progress goes to stderr.
"""

ATTEMPTS = 3
PROGRESS_EVERY = 1000  # keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dump", help="back up a volume's metadata to a JSON file", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL", help="the volume's redis://... URL")
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="where to write (default: stdout)")
    p.add_argument("--keep-secret-key", action="store_true",
                   help="include the S3 secret key (the file then grants access to the bucket)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _volume_doc(settings: VolumeSettings, keep_secret: bool) -> dict[str, object]:
    doc = asdict(settings)
    if not keep_secret:
        doc["secret_key"] = ""
    return doc


def _without_source_secrets(item: KeyDump) -> KeyDump:
    """Import sources' secret keys left out, like the volume's (a load takes them from
    env SOURCE_SECRET_KEY on the next import of that source)."""
    pairs = []
    for field, value in item.value:  # type: ignore[union-attr, misc]
        rec = json.loads(value)
        rec["secret_key"] = ""
        pairs.append([field, json.dumps(rec)])
    return KeyDump(item.name, item.kind, pairs)


def _dump_once(meta: RedisMeta, out: IO[str], volume: dict[str, object],
               progress: ScanProgress) -> tuple[set[str], int]:
    """Write the document; the keys that changed meanwhile (none: a consistent dump), and
    how many keys were written."""
    from ..meta.dump import ChangeWatch, is_runtime, read_keys
    from ..meta.scan import volume_keys

    watch = ChangeWatch(meta)
    try:
        writer = DumpWriter(out, meta._p[1:-1], volume)
        wanted = (k for k in volume_keys(meta)
                  if k != meta._setting and not is_runtime(k[len(meta._p):]))
        for item in read_keys(meta, wanted):
            if item.name == "extsrc" and not volume.get("secret_key"):
                item = _without_source_secrets(item)
            writer.key(item)
            if writer.count % PROGRESS_EVERY == 0:
                progress("dumping keys", writer.count)
        changed = watch.collect()
        if watch.everything:
            changed = {"*"}
        if not changed:
            writer.finish()
        return changed, writer.count
    finally:
        watch.close()


def run(args: argparse.Namespace) -> int:
    from ..meta.dump import LOADING

    meta = redis_engine(connect_meta(args.meta_url), "dump")
    progress = ScanProgress(enabled=not args.quiet)
    to_stdout = args.file == "-"
    target_dir = os.path.dirname(os.path.abspath(args.file)) if not to_stdout else None
    try:
        try:
            settings = meta.load()
        except MetaError as exc:
            raise CliError(str(exc)) from None
        refuse_destroyed(settings)
        if LOADING in settings.extra:
            raise CliError(f"volume {settings.name!r} is being loaded and is not complete: "
                           "finish the load first")
        volume = _volume_doc(settings, args.keep_secret_key)
        if target_dir is not None and not os.path.isdir(target_dir):
            raise CliError(f"cannot write {args.file}: no directory {target_dir}")
        for attempt in range(1, ATTEMPTS + 1):
            # Written beside its destination and renamed at the end: FILE is whole or untouched.
            fd, temp = tempfile.mkstemp(prefix=".fusecache-dump-", suffix=".gz" if args.file.endswith(".gz") else "",
                                        dir=target_dir)
            os.close(fd)
            try:
                with open_text(temp, "w") as out:
                    changed, count = _dump_once(meta, out, volume, progress)
                if not changed:
                    progress.done()
                    _deliver(temp, None if to_stdout else args.file)
                    if not args.quiet:
                        print(f"dumped volume {settings.name!r}: {count} keys"
                              + ("" if to_stdout else f" to {args.file}"), file=sys.stderr)
                    break
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)
            progress.done()
            shown = ", ".join(sorted(changed)[:3]) + (" ..." if len(changed) > 3 else "")
            if attempt < ATTEMPTS:
                print(f"fusecache: the volume changed during the dump ({len(changed)} keys: {shown}); "
                      "starting over", file=sys.stderr)
        else:
            raise CliError(f"cannot make a consistent dump: the volume kept changing while it was read "
                           f"({ATTEMPTS} attempts); pause the clients that write to it and run dump again")
    except MetaError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    finally:
        meta.shutdown()
    return 0


def _deliver(temp: str, path: str | None) -> None:
    if path is None:
        with open(temp, "rb") as src:
            shutil.copyfileobj(src, sys.stdout.buffer)
        sys.stdout.flush()
        return
    os.chmod(temp, 0o600)  # metadata names every file; secrets perhaps too
    os.replace(temp, path)
