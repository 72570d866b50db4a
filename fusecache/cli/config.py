"""`fusecache config META_URL [changes]`: show or change a volume's settings after format."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from ..errors import CliError, MetaError, ObjectStoreError
from ..types import VolumeSettings
from ..units import format_duration, format_size, parse_duration, parse_size
from .common import connect_meta, redis_engine, refuse_destroyed

DESCRIPTION = """\
Without changes, print the volume's settings (secrets masked). Each change is checked,
then printed as "old -> new". Capacity and the inode limit apply to every client at once;
trash days and the garbage delay reach mounted clients within 10 seconds; credentials
and the bucket apply at each client's next mount. The block size and the name cannot
change: the stored data depends on them.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show or change a volume's settings", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--capacity", metavar="SIZE", help="volume capacity limit (0: unlimited)")
    p.add_argument("--inodes", type=int, metavar="N", help="inode limit (0: unlimited)")
    p.add_argument("--trash-days", type=int, metavar="N", help="days deleted files stay in /.trash (0: no trash)")
    p.add_argument("--garbage-delay", metavar="DURATION", help="how long dropped data's objects are kept, e.g. 5m")
    p.add_argument("--bucket", metavar="URL|DIR", help="where the volume's objects are (the same data, moved "
                                                       "or renamed endpoint); checked before it is saved")
    p.add_argument("--credentials-from-env", action="store_true",
                   help="store the S3 keys in env ACCESS_KEY and SECRET_KEY (flags would show them in ps)")
    p.add_argument("--force", action="store_true", help="set a capacity or inode limit below current usage")
    p.set_defaults(run=run)


def _changed(args: argparse.Namespace, old: VolumeSettings, used_bytes: int, used_inodes: int) -> VolumeSettings:
    new = old
    if args.capacity is not None:
        try:
            capacity = parse_size(args.capacity)
        except ValueError as exc:
            raise CliError(f"--capacity: {exc}", 2) from None
        if capacity and capacity < used_bytes and not args.force:
            raise CliError(f"--capacity {format_size(capacity)} is below the {format_size(used_bytes)} in use; "
                           "writes would fail until files are deleted (use --force to set it anyway)")
        new = replace(new, capacity=capacity)
    if args.inodes is not None:
        if args.inodes < 0:
            raise CliError("--inodes must not be negative", 2)
        if args.inodes and args.inodes < used_inodes and not args.force:
            raise CliError(f"--inodes {args.inodes} is below the {used_inodes} inodes in use "
                           "(use --force to set it anyway)")
        new = replace(new, inodes=args.inodes)
    if args.trash_days is not None:
        if args.trash_days < 0:
            raise CliError("--trash-days must be 0 (no trash) or a number of days", 2)
        new = replace(new, trash_days=args.trash_days)
    if args.garbage_delay is not None:
        try:
            new = replace(new, garbage_delay=parse_duration(args.garbage_delay))
        except ValueError as exc:
            raise CliError(f"--garbage-delay: {exc}", 2) from None
    if args.credentials_from_env:
        access, secret = os.environ.get("ACCESS_KEY", ""), os.environ.get("SECRET_KEY", "")
        if not (access and secret):
            raise CliError("--credentials-from-env needs env ACCESS_KEY and SECRET_KEY", 2)
        new = replace(new, access_key=access, secret_key=secret)
    if args.bucket is not None:
        bucket = args.bucket if new.storage == "s3" else os.path.abspath(os.path.expanduser(args.bucket))
        new = replace(new, bucket=bucket)
    return new


def _show(settings: VolumeSettings) -> None:
    for name, value in settings.masked().items():
        print(f"{name}: {_value(name, value)}")


def _value(name: str, value: object) -> str:
    if name == "capacity":
        return format_size(int(value)) if value else "unlimited"  # type: ignore[call-overload]
    if name == "inodes":
        return str(value) if value else "unlimited"
    if name == "garbage_delay":
        return format_duration(float(value))  # type: ignore[arg-type]
    if name == "block_size":
        return format_size(int(value))  # type: ignore[call-overload]
    return str(value)


def run(args: argparse.Namespace) -> int:
    from ..meta.config import changes, raw_settings, update_settings, used
    from ..object import check_store

    meta = redis_engine(connect_meta(args.meta_url), "config")
    try:
        raw = raw_settings(meta)
        old = VolumeSettings.from_json(raw)
        refuse_destroyed(old)
        used_bytes, used_inodes = used(meta)
        new = _changed(args, old, used_bytes, used_inodes)
        diff = changes(old, new)
        if not diff:
            _show(old)
            return 0
        if new.bucket != old.bucket or new.access_key != old.access_key or new.secret_key != old.secret_key:
            try:  # the data must be reachable with what is saved, before it is saved
                check_store(new.storage, new.bucket, new.access_key, new.secret_key)
            except (ObjectStoreError, ValueError) as exc:
                raise CliError(f"not saved: {exc}") from None
        update_settings(meta, raw, new)
    except MetaError as exc:
        raise CliError(str(exc)) from None
    finally:
        meta.shutdown()
    for name, before, after in diff:
        print(f"{name}: {_value(name, before)} -> {_value(name, after)}")
    if any(name in ("bucket", "access_key", "secret_key") for name, _, _ in diff):
        print("fusecache: note: mounted clients use the new store settings after they mount again", file=sys.stderr)
    return 0
