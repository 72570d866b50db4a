"""`fusecache format META_URL NAME`: create a volume (settings in Redis, data in a bucket)."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
import uuid

from ..errors import CliError, FsError, MetaError, ObjectStoreError
from ..layout import CHUNK_SIZE
from ..types import VolumeSettings
from ..units import format_duration, format_size, parse_duration, parse_size
from .common import connect_meta, eviction_problem, refuse_destroyed

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("format", help="create a volume",
                       description="Create a volume: its settings go to Redis, its data to a bucket (or a "
                                   "local directory). The store is checked first by writing, reading back "
                                   "and deleting a test object.")
    p.add_argument("meta_url", metavar="META_URL",
                   help="redis://[:PASSWORD@]HOST:PORT/DB[?prefix=NAME] (password also from env META_PASSWORD; "
                        "a prefix lets several volumes share one database)")
    p.add_argument("name", metavar="NAME", help="volume name: 3-63 of a-z, 0-9 and '-'")
    p.add_argument("--storage", choices=("s3", "file"),
                   help="object store kind (default: s3 when --bucket is an http(s) URL, else file)")
    p.add_argument("--bucket", metavar="URL|DIR",
                   help="S3 endpoint URL with bucket (http://host:9000/bucket), or a local directory for 'file'")
    p.add_argument("--access-key", metavar="KEY", help="S3 access key (better: env ACCESS_KEY)")
    p.add_argument("--secret-key", metavar="KEY", help="S3 secret key (better: env SECRET_KEY, keeps it out of ps)")
    p.add_argument("--block-size", default="4M", metavar="SIZE", help="block (object) size, 64K..16M (default 4M)")
    p.add_argument("--capacity", default="0", metavar="SIZE",
                   help="volume capacity limit, e.g. 100G (default: unlimited)")
    p.add_argument("--inodes", type=int, default=0, metavar="N", help="inode limit (default: unlimited)")
    p.add_argument("--trash-days", type=int, default=1, metavar="N",
                   help="keep deleted and replaced files in /.trash for N days (default 1; 0: no trash)")
    p.add_argument("--garbage-delay", default="5m", metavar="DURATION",
                   help="how long the objects of dropped data are kept after compaction, overwrite "
                        "or truncation, for readers elsewhere that still use them (default 5m)")
    p.add_argument("--force", action="store_true",
                   help="replace the settings of an existing volume (data is kept); also format on a Redis "
                        "that may evict keys")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> VolumeSettings:
    if not NAME_RE.match(args.name):
        raise CliError(f"invalid volume name {args.name!r}: use 3-63 of a-z, 0-9 and '-'", 2)
    try:
        block_size = parse_size(args.block_size)
        capacity = parse_size(args.capacity)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if not (64 << 10) <= block_size <= (16 << 20) or CHUNK_SIZE % block_size:
        raise CliError(f"block size {args.block_size} must be a power of two between 64K and 16M", 2)
    if args.inodes < 0:
        raise CliError("--inodes must not be negative", 2)
    if args.trash_days < 0:
        raise CliError("--trash-days must be 0 (no trash) or a number of days", 2)
    try:
        garbage_delay = parse_duration(args.garbage_delay)
    except ValueError as exc:
        raise CliError(f"--garbage-delay: {exc}", 2) from None
    bucket = args.bucket
    storage = _storage_kind(args.storage, bucket)
    if not bucket:
        if storage == "s3":
            raise CliError("--storage s3 needs --bucket http(s)://HOST:PORT/BUCKET", 2)
        bucket = os.path.join(os.path.expanduser("~"), ".fusecache", "objects")
    access = args.access_key or os.environ.get("ACCESS_KEY", "")
    secret = args.secret_key or os.environ.get("SECRET_KEY", "")
    if storage == "s3" and not (access and secret):
        raise CliError("--storage s3 needs credentials: set env ACCESS_KEY and SECRET_KEY (or the flags)", 2)
    if storage == "file":
        bucket = os.path.abspath(os.path.expanduser(bucket))
    return VolumeSettings(
        name=args.name, uuid=str(uuid.uuid4()), storage=storage, bucket=bucket,
        access_key=access, secret_key=secret, block_size=block_size, capacity=capacity,
        inodes=args.inodes, created=time.time(), trash_days=args.trash_days, garbage_delay=garbage_delay,
    )


def _storage_kind(chosen: str | None, bucket: str | None) -> str:
    """The store kind: as given, or s3 for an http(s) bucket URL. A URL is never taken as a
    local directory: that would quietly put the data in `./http:/...`."""
    is_url = bool(bucket and URL_RE.match(bucket))
    if chosen == "file" and is_url:
        raise CliError("--storage file needs a local directory as --bucket, not a URL; "
                       "for an S3 bucket use --storage s3", 2)
    if chosen is None:
        return "s3" if is_url else "file"
    return chosen


def run(args: argparse.Namespace) -> int:
    from ..object import check_store

    settings = _settings(args)
    meta = connect_meta(args.meta_url)
    try:
        try:
            existing = meta.load()
        except MetaError:
            existing = None
        if existing is not None:
            refuse_destroyed(existing)  # even with --force: its objects may be partly gone
        if existing is not None and not args.force:
            raise CliError(
                f"a volume named {existing.name!r} already exists at this META_URL; "
                "use --force to replace its settings (its data is kept)"
            )
        problem = eviction_problem(meta)
        if problem is not None:
            if not args.force:
                raise CliError(f"{problem}, or format anyway with --force")
            print(f"fusecache: warning: {problem}", file=sys.stderr)
        if existing is not None:
            if existing.name != settings.name:
                raise CliError(f"--force cannot rename volume {existing.name!r} to {settings.name!r}", 2)
            # Data already stored keeps its layout: keep identity and block size.
            settings = VolumeSettings(**{**settings.__dict__, "uuid": existing.uuid,
                                         "block_size": existing.block_size, "created": existing.created})
        if settings.storage == "file":
            os.makedirs(settings.bucket, exist_ok=True)
        try:
            where = check_store(settings.storage, settings.bucket, settings.access_key, settings.secret_key)
        except (ObjectStoreError, ValueError) as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"cannot use {settings.bucket}: {exc.strerror}") from None
        try:
            meta.format(settings, force=args.force)
        except FsError as exc:
            if exc.errno == errno.EEXIST:
                raise CliError("a volume already exists at this META_URL; use --force") from None
            raise CliError(f"cannot format: {exc}") from None
        except MetaError as exc:
            raise CliError(str(exc)) from None
    finally:
        meta.shutdown()
    limit = format_size(settings.capacity) if settings.capacity else "unlimited"
    days = settings.trash_days
    trash = (f"trash {days} day" + ("s" if days > 1 else "")) if days else "no trash"
    print(f"volume {settings.name!r} formatted: storage {settings.storage} {where}, "
          f"block size {format_size(settings.block_size)}, capacity {limit}, {trash}, "
          f"garbage delay {format_duration(settings.garbage_delay)}")
    return 0
