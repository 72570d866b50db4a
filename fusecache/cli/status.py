"""`fusecache status META_URL [--json]`: a volume's settings (secrets masked), usage and
sessions, as a readable report, or as JSON (the same document as before the report existed).

Heartbeat ages are measured on the Redis server's clock, which scores the heartbeats, so a
client machine with a skewed clock still reads "5 s ago" for a fresh one.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..errors import CliError, MetaError
from ..meta.base import Meta
from ..types import SessionInfo, VolumeSettings
from ..units import format_duration, format_size
from .common import connect_meta

DESCRIPTION = ("Show a volume's settings (credentials masked), its usage and the clients that have it "
               "mounted, with how long ago each last reported in. --json prints the same as a JSON document.")
STALE_AFTER = 60.0  # a session whose heartbeat is older is a client that stopped (= gc, fsck)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a volume's settings and clients", description=DESCRIPTION)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the report")
    p.set_defaults(run=run)


def _server_now(meta: Meta) -> float:
    """The Redis server's clock (that of the heartbeat scores), else this machine's."""
    client = getattr(meta, "_r", None)
    try:
        seconds, micros = client.time()  # type: ignore[union-attr]
        return float(seconds) + micros / 1e6
    except Exception:
        return time.time()


def run(args: argparse.Namespace) -> int:
    meta = connect_meta(args.meta_url)
    try:
        try:
            settings = meta.load()
            usage = meta.statfs()
            sessions = meta.list_sessions()
            now = _server_now(meta)
        except MetaError as exc:
            raise CliError(str(exc)) from None
    finally:
        meta.shutdown()
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
    print(json.dumps(doc, indent=2) if args.json else render(settings, doc, sessions, now))
    return 0


def ago(seconds: float) -> str:
    """'5 s ago', '3 min ago', '2 h ago', '4 d ago'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _when(ts: float, now: float) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) + f" ({ago(now - ts)})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]


def render(settings: VolumeSettings, doc: dict[str, Any], sessions: list[SessionInfo], now: float) -> str:
    s = doc["setting"]
    use = doc["usage"]
    days = settings.trash_days
    capacity = format_size(settings.capacity) if settings.capacity else "unlimited"
    inodes = str(settings.inodes) if settings.inodes else "unlimited"
    rows = [
        ["volume", settings.name],
        ["uuid", settings.uuid],
        ["storage", f"{settings.storage} {settings.bucket}"],
    ]
    if s.get("access_key"):
        rows.append(["access key", str(s["access_key"])])
    rows += [
        ["block size", format_size(settings.block_size)],
        ["trash", f"{days} day{'s' if days != 1 else ''}" if days else "off"],
        ["garbage delay", format_duration(settings.garbage_delay)],
        ["created", _when(settings.created, now)],
    ]
    if "destroying" in settings.extra:
        rows.append(["state", "being destroyed: run 'fusecache destroy' again to finish"])
    rows += [
        ["used", f"{format_size(use['used_bytes'])} of {capacity}"],
        ["inodes", f"{use['used_inodes']} of {inodes}"],
    ]
    lines = [f"{name + ':':<15}{value}" for name, value in rows]
    lines.append("")
    if not sessions:
        lines.append("sessions: none (no client has the volume mounted)")
        return "\n".join(lines)
    lines.append(f"sessions: {len(sessions)}")
    body = []
    for info in sessions:
        age = now - info.heartbeat
        beat = ago(age) + (" (stale: client stopped?)" if age > STALE_AFTER else "")
        body.append([str(info.sid), info.host, info.mountpoint, str(info.pid), info.version,
                     ago(now - info.started) if info.started else "-", beat])
    lines += ["  " + line for line in table(
        ["SID", "HOST", "MOUNT POINT", "PID", "VERSION", "STARTED", "LAST HEARTBEAT"], body)]
    return "\n".join(lines)
