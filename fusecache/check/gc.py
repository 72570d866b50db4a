"""gc: objects in the store that no metadata names (leaks), found by listing.

Leaks are what the data rules allow instead of holes: an object is stored before its
slice commits, so a client that dies in between, or a commit whose outcome stayed unknown,
leaves objects nobody references (docs/data-safety.md). They waste space, nothing more.

An object is a leak only if none of these protects it:
- a slice list names its slice (any file, deleted files awaiting cleanup included);
- the delayed-garbage queue holds its slice (its deletion is already scheduled);
- its slice id is at or above the in-use mark of a live session: a slice being written
  right now (blocks stored or staged for upload, commit to come);
- it is younger than `min_age`.
The order matters: marks are read first, then slice lists, then the queue, then the store
is listed, so a slice that moves from a list to the queue during the scan is seen in one of
them, and a slice committed during the scan is above a mark read before it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..meta.redis import RedisMeta
from ..meta.scan import RedisScan
from ..object.base import ObjectInfo, ObjectStore
from .fsck import STALE_AFTER

Progress = Callable[[str, int, "int | None"], None]
_BLOCK = re.compile(r"[0-9a-f]{2}/\d+/(\d+)_(\d+)_(\d+)")


@dataclass
class GcReport:
    leaked: list[ObjectInfo] = field(default_factory=list)
    young: int = 0  # unreferenced, but younger than min_age
    in_use: int = 0  # unreferenced, but possibly being written by a live session
    referenced: int = 0
    foreign: list[str] = field(default_factory=list)  # under blocks/ but not a block name
    deleted: int = 0

    @property
    def leaked_bytes(self) -> int:
        return sum(o.size for o in self.leaked)


def find_leaks(meta: RedisMeta, store: ObjectStore, volume: str, min_age: float,
               progress: Progress | None = None, stale_after: float = STALE_AFTER) -> GcReport:
    note = progress or (lambda *_: None)
    scan = RedisScan(meta)
    now = scan.server_time()
    live = {sid for sid, beat in scan.session_beats().items() if now - beat <= stale_after}
    marks = scan.in_use_marks()
    # A live session without a mark (an older client) may be writing any slice.
    bound = min((marks.get(sid, 0) for sid in live), default=None)
    referenced: set[int] = set()
    for n, (_, _, slices) in enumerate(scan.chunks(), 1):
        referenced.update(s.id for s in slices if s.id)
        note("reading slice lists", n, None)
    referenced.update(slice_id for slice_id, _ in scan.delayed())
    report = GcReport()
    prefix = f"{volume}/blocks/"
    started = time.time()
    for n, obj in enumerate(store.list_all(prefix), 1):
        note("listing the object store", n, None)
        match = _BLOCK.fullmatch(obj.key[len(prefix):])
        if match is None:
            report.foreign.append(obj.key)
            continue
        slice_id = int(match.group(1))
        if slice_id in referenced:
            report.referenced += 1
        elif bound is not None and slice_id >= bound:
            report.in_use += 1
        elif started - obj.mtime < min_age:
            report.young += 1
        else:
            report.leaked.append(obj)
    return report


def delete_leaks(store: ObjectStore, report: GcReport, progress: Progress | None = None) -> int:
    note = progress or (lambda *_: None)
    total = len(report.leaked)
    for n, obj in enumerate(report.leaked, 1):
        store.delete(obj.key)
        report.deleted += 1
        note("deleting leaked objects", n, total)
    return report.deleted
