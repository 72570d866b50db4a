"""`fusecache quota set|get|list|delete`: directory quotas (bytes and inodes), the ones the
CSI driver gives each volume, on a mounted path or on META_URL + --path."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CliError, FsError, MetaError
from ..meta.redis import RedisMeta
from ..units import format_size, parse_size
from .common import connect_meta, redis_engine
from .mounted import mount_target

DESCRIPTION = """\
Directory quotas limit the bytes and the number of files and directories under a
directory. Writes and creates beyond them fail with EDQUOT ("Disk quota exceeded"), on
every client at once. TARGET is a directory on a fusecache mount, or a META_URL with
--path naming the directory from the volume's root. A limit of 0 means none.
"""

SUBCOMMANDS = ("set", "get", "list", "delete")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quota", help="set, show, list or delete directory quotas", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=SUBCOMMANDS, metavar="set|get|list|delete")
    p.add_argument("target", metavar="TARGET", help="a directory on a mount, or META_URL (then --path)")
    p.add_argument("--path", metavar="DIR", help="with META_URL: the directory, from the volume's root")
    p.add_argument("--capacity", metavar="SIZE", help="set: byte limit, e.g. 10G (0: none)")
    p.add_argument("--inodes", metavar="N", help="set: limit on files and directories (0: none)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _is_url(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", target))


@contextmanager
def _volume(args: argparse.Namespace) -> Iterator[tuple[RedisMeta, str | None]]:
    if _is_url(args.target):
        url, path = args.target, args.path
        if path is None and args.action != "list":
            raise CliError(f"quota {args.action} META_URL needs --path DIR (the directory from the volume's root)", 2)
    else:
        if args.path is not None:
            raise CliError("--path goes with META_URL; with a mounted directory, give the directory itself", 2)
        if not os.path.isdir(args.target) and os.path.lexists(args.target):
            raise CliError(f"{args.target} is not a directory")
        url, path = mount_target(args.target)
    meta = redis_engine(connect_meta(url), "quota")
    try:
        meta.load()
        yield meta, path
    except (MetaError, FsError) as exc:
        raise CliError(exc.args[1] if isinstance(exc, FsError) else str(exc)) from None
    finally:
        meta.shutdown()


def _limits(args: argparse.Namespace) -> tuple[int | None, int | None]:
    capacity = inodes = None
    try:
        if args.capacity is not None:
            capacity = parse_size(args.capacity)
    except ValueError as exc:
        raise CliError(f"--capacity: {exc}", 2) from None
    if args.inodes is not None:
        if not re.fullmatch(r"\d+", args.inodes):
            raise CliError(f"--inodes must be a whole number, not {args.inodes!r}", 2)
        inodes = int(args.inodes)
    if args.action == "set" and capacity is None and inodes is None:
        raise CliError("quota set needs --capacity SIZE and/or --inodes N", 2)
    if args.action != "set" and (capacity is not None or inodes is not None):
        raise CliError(f"--capacity and --inodes go with quota set, not quota {args.action}", 2)
    return capacity, inodes


def _row(path: str, q: object) -> dict[str, object]:
    return {"path": path, "max_bytes": q.max_bytes, "used_bytes": q.used_bytes,  # type: ignore[attr-defined]
            "max_inodes": q.max_inodes, "used_inodes": q.used_inodes}  # type: ignore[attr-defined]


def _show(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows if len(rows) != 1 else rows[0], indent=2))
        return
    if not rows:
        print("no quotas")
        return
    def of(used: int, limit: int, size: bool) -> str:
        text = format_size(used) if size else str(used)
        if not limit:
            return f"{text} (no limit)"
        cap = format_size(limit) if size else str(limit)
        return f"{text} of {cap} ({100 * used / limit:.0f}%)"

    width = max(len(str(r["path"])) for r in rows)
    print(f"{'PATH':<{width}}  {'BYTES':<28}  INODES")
    for r in rows:
        print(f"{r['path']!s:<{width}}  {of(r['used_bytes'], r['max_bytes'], True):<28}  "  # type: ignore[arg-type]
              f"{of(r['used_inodes'], r['max_inodes'], False)}")  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from ..meta.config import path_of, resolve_dir

    capacity, inodes = _limits(args)
    with _volume(args) as (meta, path):
        if args.action == "list":
            quotas = sorted(meta._call(meta._r.hkeys, meta._quota), key=int)
            rows = []
            for raw in quotas:
                q = meta.get_quota(int(raw))
                if q is not None:
                    rows.append(_row(path_of(meta, int(raw)), q))
            _show(rows, args.json)
            return 0
        assert path is not None
        ino = resolve_dir(meta, path)
        current = meta.get_quota(ino)
        if args.action == "set":
            max_bytes = capacity if capacity is not None else (current.max_bytes if current else 0)
            max_inodes = inodes if inodes is not None else (current.max_inodes if current else 0)
            meta.set_quota(ino, max_bytes, max_inodes)
            current = meta.get_quota(ino)
        elif current is None:
            raise CliError(f"{path} has no quota")
        elif args.action == "delete":
            meta.del_quota(ino)
            print(f"quota of {path} deleted")
            return 0
        assert current is not None
        _show([_row(path, current)], args.json)
    return 0
