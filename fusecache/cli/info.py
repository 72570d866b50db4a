"""`fusecache info PATH...`: a file's inode, size, and its chunks, slices and objects."""

from __future__ import annotations

import argparse
import json

from .client_xattr import read_client_json

INFO_XATTR = "fusecache.info"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show how a file is stored",
                       description="Show how files in a fusecache mount are stored: inode, size, and "
                                   "each chunk's slices with the objects that hold them.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files inside a fusecache mount")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.set_defaults(run=run)


def _info(path: str) -> dict:
    return read_client_json(path, INFO_XATTR, "its layout", follow_symlinks=False)  # type: ignore[no-any-return]


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
