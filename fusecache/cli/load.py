"""`fusecache load META_URL FILE`: restore a volume's metadata from a dump."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import IO

from ..errors import CliError, MetaError
from ..meta.dump import KeyDump
from ..meta.redis import RedisMeta
from ..types import VolumeSettings
from .common import connect_meta, eviction_problem, redis_engine
from .dumpfile import DumpReader, open_text
from .progress import ScanProgress

DESCRIPTION = """\
Restore a volume's metadata from a file written by 'fusecache dump' (- for stdin) into a
Redis database, or a ?prefix= of one, that holds no volume. The volume keeps its name,
UUID and bucket: its data is the objects already in that bucket.

Do not mount the old and the restored metadata both: they would share the bucket, and
their new files could overwrite each other's objects. Restore into an empty place, check
the result (fusecache fsck), and retire the other.

A dump made without --keep-secret-key has no S3 secret key: give it now in env
SECRET_KEY (also ACCESS_KEY to change the access key), or later to each mount. If a
load is interrupted, the volume cannot be mounted; run the same load again to finish it.
"""


PROGRESS_EVERY = 1000  # keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="restore a volume's metadata from a dump", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL", help="an empty redis://... database (or ?prefix=)")
    p.add_argument("file", metavar="FILE", help="a dump file, or - for stdin")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _settings(header: dict[str, object]) -> VolumeSettings:
    try:
        settings = VolumeSettings(**header["volume"])  # type: ignore[arg-type]
    except TypeError as exc:
        raise CliError(f"the dump's volume settings are not ones this version knows: {exc}") from None
    access = os.environ.get("ACCESS_KEY") or settings.access_key
    secret = os.environ.get("SECRET_KEY") or settings.secret_key
    return VolumeSettings(**{**settings.__dict__, "access_key": access, "secret_key": secret})


def _check_target(meta: RedisMeta, settings: VolumeSettings) -> bool:
    """Whether this load resumes an interrupted one; CliError if the place is taken."""
    from ..meta.dump import LOADING
    from ..meta.scan import volume_keys

    raw = meta._call(meta._r.get, meta._setting)
    if raw is not None:
        there = VolumeSettings.from_json(raw)
        if LOADING in there.extra and there.uuid == settings.uuid:
            return True
        raise CliError(f"META_URL already holds volume {there.name!r}: load needs a database (or a "
                       "?prefix=) without a volume")
    if next(volume_keys(meta), None) is not None:
        raise CliError("META_URL is not empty: it has keys under this prefix but no volume; load needs "
                       "a database (or a ?prefix=) without any")
    return False


def _marked(settings: VolumeSettings, marked: bool) -> str:
    from ..meta.dump import LOADING

    extra = {k: v for k, v in settings.extra.items() if k != LOADING}
    if marked:
        extra[LOADING] = "1"
    return VolumeSettings(**{**settings.__dict__, "extra": extra}).to_json()


def run(args: argparse.Namespace) -> int:
    from ..meta.dump import free_kept_open, write_keys

    meta = redis_engine(connect_meta(args.meta_url), "load")
    progress = ScanProgress(enabled=not args.quiet)
    src: IO[str] | None = None
    try:
        try:
            src = sys.stdin if args.file == "-" else open_text(args.file, "r")
            reader = DumpReader(src, "stdin" if args.file == "-" else args.file)
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CliError(f"{args.file} is not a fusecache dump: not text") from None
        settings = _settings(reader.header)
        resumed = _check_target(meta, settings)
        problem = eviction_problem(meta)
        if problem is not None:
            print(f"fusecache: warning: {problem}", file=sys.stderr)
        # Marked first and unmarked last: a volume whose load was cut short is never mounted.
        meta._call(meta._r.set, meta._setting, _marked(settings, True))

        def counted() -> Iterator[KeyDump]:
            for item in reader.entries():
                if item.name != "setting":
                    yield item
                if reader.count % PROGRESS_EVERY == 0:
                    progress("loading keys", reader.count)

        try:
            kept_open = write_keys(meta, counted())
        except UnicodeDecodeError:
            raise CliError(f"{args.file} is damaged: not text") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise CliError(f"{args.file} has a key entry this version cannot read ({exc})") from None
        free_kept_open(meta, kept_open)
        meta._call(meta._r.set, meta._setting, _marked(settings, False))
        progress.done()
    except MetaError as exc:
        raise CliError(str(exc)) from None
    finally:
        if src is not None and src is not sys.stdin:
            src.close()
        meta.shutdown()
    if not args.quiet:
        again = " (an interrupted load, finished)" if resumed else ""
        print(f"loaded volume {settings.name!r} ({settings.uuid}): {reader.count} keys{again}", file=sys.stderr)
        if not settings.secret_key and settings.storage == "s3":
            print("fusecache: note: the dump has no S3 secret key; mount with env SECRET_KEY set",
                  file=sys.stderr)
    return 0
