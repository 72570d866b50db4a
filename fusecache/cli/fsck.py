"""`fusecache fsck META_URL`: check a volume's metadata and objects, one check per invariant.

Exit status 0: clean (or every problem found was repaired); 1: problems remain, one line
each on stdout (or one JSON document with --json). --repair fixes what is safe: counters,
link counts, dangling entries, expired sessions and their leftovers, orphans (moved to
/lost+found). Files that lost data are named by path. Repairs need a quiet volume: they are
refused while clients are mounted, unless --force.
"""

from __future__ import annotations

import argparse
import json
import time

from ..check.fsck import Fsck, as_json
from ..errors import CliError
from .common import whole_volume
from .progress import ScanProgress

DESCRIPTION = """\
Check a volume's metadata and objects, one check per rule the filesystem keeps.

Exit status 0: clean (or every problem found was repaired); 1: problems remain, one line
each on stdout (or one JSON document with --json). --repair fixes what is safe: counters,
link counts, dangling entries, expired sessions and their leftovers, orphans (moved to
/lost+found). Files that lost data are named by path. Repairs need a quiet volume: they are
refused while clients are mounted, unless --force.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsck", help="check (and repair) a volume", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--repair", action="store_true", help="fix what is safe to fix")
    p.add_argument("--force", action="store_true", help="repair even while clients are mounted")
    p.add_argument("--no-objects", action="store_true", help="skip listing the object store (block check)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    progress = ScanProgress(enabled=not args.quiet and not args.json)
    try:
        with whole_volume(args.meta_url, "fsck", with_store=not args.no_objects) as (meta, settings, store):
            fsck = Fsck(meta, store, settings.name, settings.block_size, repair=args.repair, progress=progress)
            if args.repair and not args.force and (live := fsck.live_sessions()):
                raise CliError(f"{live} clients have the volume mounted; unmount them, or repair anyway "
                               "with --force")
            problems = fsck.run()
    finally:
        progress.done()
    if args.json:
        print(json.dumps(as_json(problems, time.monotonic() - started), indent=2))
    else:
        for problem in problems:
            print(problem.line())
        repaired = sum(p.repaired for p in problems)
        state = "clean" if not problems else f"{len(problems)} problems"
        if repaired:
            state += f", {repaired} repaired"
        print(f"fsck: {settings.name}: {len(fsck.snap.attrs)} inodes, {len(fsck.snap.chunks)} files with data: {state}")
    return 0 if all(p.repaired for p in problems) else 1
