"""`fusecache info PATH...`: a file's inode, size, and its chunks, slices and objects."""

from __future__ import annotations

import argparse
import errno
import json
import os

from ..errors import CliError
from .mountinfo import FSTYPE, owning_mount

INFO_XATTR = "fusecache.info"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show how a file is stored", description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.set_defaults(run=run)


def _info(path: str) -> dict:
    if not os.path.lexists(path):
        raise CliError(f"{path}: no such file or directory")
    entry = owning_mount(path)
    if entry is None or entry.fstype != FSTYPE:
        raise CliError(f"{path} is not inside a fusecache mount")
    try:
        raw = os.getxattr(path, INFO_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise CliError(f"{path}: the fusecache client of this mount is not running") from None
        raise CliError(f"{path}: {exc.strerror}") from None
    return json.loads(raw)


def run(args: argparse.Namespace) -> int:
    for path in args.paths:
        doc = _info(path)
        if args.json:
            print(json.dumps({"path": path, **doc}))
            continue
        print(f"{path}:\n  inode: {doc['inode']}\n  size: {doc['size']}")
        print(f"  mode: {doc['mode']}\n  links: {doc['nlink']}")
        if doc["chunks"]:
            print("  chunks:")
        for chunk in doc["chunks"]:
            print(f"    {chunk['index']}:")
            for s in chunk["slices"]:
                what = f"slice {s['id']}" if s["id"] else "hole"
                print(f"      {what} pos={s['pos']} len={s['len']} off={s['off']} size={s['size']}")
                for key in s["objects"]:
                    print(f"        {key}")
    return 0
