"""`fusecache gc META_URL`: find objects that no metadata references (leaks) and delete them.

Lists the volume's objects and reports those unreferenced and older than --min-age as a
count and bytes; --delete removes them. Never touched: objects any slice list or the
delayed-garbage queue names, blocks a live client may still be writing (its slices being
written, writeback uploads), anything younger than --min-age.
"""

from __future__ import annotations

import argparse
import json

from ..check.gc import delete_leaks, find_leaks
from ..errors import CliError
from ..units import format_size, parse_duration
from .common import whole_volume
from .progress import ScanProgress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", help="find and delete leaked objects",
                       description="Find objects of the volume that no file uses any more (left by clients "
                                   "that died while writing) and report their count and size; --delete "
                                   "removes them. Never touched: data any file, the trash or the delayed "
                                   "deletion queue still refers to, blocks a mounted client may still be "
                                   "writing, and anything younger than --min-age.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--min-age", default="1h", metavar="DURATION",
                   help="only objects older than this (default 1h; 0 is allowed)")
    p.add_argument("--delete", action="store_true", help="delete the leaked objects")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        min_age = parse_duration(args.min_age)
    except ValueError as exc:
        raise CliError(f"--min-age: {exc}", 2) from None
    progress = ScanProgress(enabled=not args.quiet and not args.json)
    try:
        with whole_volume(args.meta_url, "gc") as (meta, settings, store):
            assert store is not None
            report = find_leaks(meta, store, settings.name, min_age, progress)
            if args.delete:
                delete_leaks(store, report, progress)
    finally:
        progress.done()
    if args.json:
        print(json.dumps({"leaked_objects": len(report.leaked), "leaked_bytes": report.leaked_bytes,
                          "deleted": report.deleted, "referenced": report.referenced, "young": report.young,
                          "in_use": report.in_use, "foreign": report.foreign,
                          "leaked": [o.key for o in report.leaked]}, indent=2))
        return 0
    verb = "deleted" if args.delete else "found"
    print(f"gc: {settings.name}: {verb} {len(report.leaked)} leaked objects ({format_size(report.leaked_bytes)}); "
          f"kept {report.referenced} referenced, {report.young} younger than {args.min_age}, "
          f"{report.in_use} possibly being written")
    for key in report.foreign:
        print(f"gc: not a block of this volume, left alone: {key}")
    return 0
