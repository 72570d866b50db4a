"""`fusecache status META_URL`: volume settings (secrets masked), usage and live sessions."""

from __future__ import annotations

import argparse
import json
import time

from ..errors import CliError, MetaError
from .common import connect_meta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a volume's settings and clients", description=__doc__)
    p.add_argument("meta_url", metavar="META_URL")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    meta = connect_meta(args.meta_url)
    try:
        try:
            settings = meta.load()
            usage = meta.statfs()
            sessions = meta.list_sessions()
        except MetaError as exc:
            raise CliError(str(exc)) from None
    finally:
        meta.shutdown()
    now = time.time()
    doc = {
        "setting": settings.masked(),
        "usage": {
            "used_bytes": max(0, usage.total_bytes - usage.avail_bytes),
            "used_inodes": usage.used_inodes,
            "capacity_bytes": settings.capacity or None,
            "max_inodes": settings.inodes or None,
        },
        "sessions": [
            {
                "sid": s.sid, "host": s.host, "pid": s.pid, "mountpoint": s.mountpoint,
                "version": s.version, "started": s.started, "heartbeat_age_s": round(now - s.heartbeat, 1),
            }
            for s in sessions
        ],
    }
    print(json.dumps(doc, indent=2))
    return 0
