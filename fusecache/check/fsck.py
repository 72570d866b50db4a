"""fsck: one check per invariant of the metadata (meta/redis.py) and of the data rules
(docs/data-safety.md), each reporting what breaks it and, with `repair`, fixing what is
safe to fix.

The invariants:
- check_entries: every directory entry names an existing inode (of the type it says);
- check_links: a file's nlink is its number of entries (a trashed file: 0, one entry in
  the trash), a directory's is 2 + its subdirectories;
- check_orphans: every inode but the root and the trash is reachable, unless it is an
  unlinked file kept for the open files of a live session;
- check_chunks: slice lists belong to existing files, or to deleted ones awaiting cleanup;
- check_blocks: every block of every referenced slice exists in the object store;
- check_usage: the volume's and the quotas' usage counters match the tree;
- check_refs: a slice's reference count ({P}sliceref) is the number of chunks holding it,
  less one (too low would free shared data early; too high never frees it);
- check_clones: no unfinished clone whose builder is gone (it is removed);
- check_imports: every imported object a file still reads is at its source, unchanged
  (one HEAD per object; only with the store, like check_blocks);
- check_sessions: no expired session, and nothing left of sessions that ended.

Safe repairs: counters and nlinks are rewritten, dangling entries removed, expired sessions
closed, leftover notes dropped, slice lists of missing inodes queued for deletion, orphans
linked into /lost+found. Lost data cannot be repaired: those files are reported by path.

The scan reads a snapshot one key batch at a time; a volume being written to meanwhile can
show passing differences, so repairs are refused while live sessions exist (unless forced).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import FsError
from ..layout import CHUNK_SIZE, external_parts, is_external, slice_keys
from ..meta.clone import Detached, detached, forget_detached
from ..meta.redis import RedisMeta
from ..meta.scan import RedisScan
from ..object.base import ObjectStore
from ..types import ROOT_INO, TRASH_INO, Attr, Slice

Progress = Callable[[str, int, "int | None"], None]
LOST_FOUND = b"lost+found"
STALE_AFTER = 60.0  # seconds without heartbeat after which a session counts as dead (= mount)


@dataclass
class Problem:
    check: str
    message: str
    path: str = ""
    repaired: bool = False

    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.check}: {where}{self.message}{' (repaired)' if self.repaired else ''}"


@dataclass
class Snapshot:
    """What the scan read: the whole tree, the slice lists, the bookkeeping."""

    attrs: dict[int, Attr] = field(default_factory=dict)
    dirs: dict[int, dict[bytes, tuple[int, int]]] = field(default_factory=dict)
    chunks: dict[int, dict[int, list[Slice]]] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    quotas: dict[int, tuple[int, int]] = field(default_factory=dict)
    notes: dict[int, set[int]] = field(default_factory=dict)
    note_sets: set[int] = field(default_factory=set)
    marks: dict[int, int] = field(default_factory=dict)
    beats: dict[int, float] = field(default_factory=dict)
    now: float = 0.0
    entry_of: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # ino -> (dir, name), first seen
    refs: dict[int, int] = field(default_factory=dict)  # slice id -> extra holders
    detached: list[Detached] = field(default_factory=list)  # clones being built or abandoned

    def live(self, stale_after: float) -> set[int]:
        return {sid for sid, beat in self.beats.items() if self.now - beat <= stale_after}

    def path(self, ino: int) -> str:
        parts: list[str] = []
        seen = set()
        while ino not in (ROOT_INO, TRASH_INO) and ino not in seen:
            seen.add(ino)
            found = self.entry_of.get(ino)
            if found is None:
                return f"<inode {ino}>" + ("/" + "/".join(reversed(parts)) if parts else "")
            ino, name = found
            parts.append(name.decode(errors="replace"))
        head = "/.trash" if ino == TRASH_INO else ""
        return head + "/" + "/".join(reversed(parts))


def is_trash_dir(snap: Snapshot, ino: int) -> bool:
    attr = snap.attrs.get(ino)
    return ino == TRASH_INO or (attr is not None and attr.parent == TRASH_INO and attr.is_dir)


def take_snapshot(meta: RedisMeta, progress: Progress | None = None) -> Snapshot:
    scan = RedisScan(meta)
    note = progress or (lambda *_: None)
    snap = Snapshot(now=scan.server_time())
    snap.beats = scan.session_beats()
    snap.marks = scan.in_use_marks()
    # Counts before the chunks: every change to a slice's holders since then also changed
    # its count, which the compare-and-set repair of check_refs then sees.
    snap.refs = scan.slice_refs()
    for n, attr in enumerate(scan.inodes(), 1):
        snap.attrs[attr.ino] = attr
        note("reading inodes", n, None)
    for n, (ino, entries) in enumerate(scan.directories(), 1):
        snap.dirs[ino] = entries
        for name, (child, _) in entries.items():
            snap.entry_of.setdefault(child, (ino, name))
        note("reading directories", n, None)
    for n, (ino, index, slices) in enumerate(scan.chunks(), 1):
        snap.chunks.setdefault(ino, {})[index] = slices
        note("reading slice lists", n, None)
    snap.deleted = scan.deleted_files()
    snap.counters = scan.counters()
    snap.quotas = scan.quotas()
    snap.notes = scan.open_notes()
    snap.note_sets = scan.session_sets()
    snap.detached = detached(meta)
    return snap


class Fsck:
    def __init__(self, meta: RedisMeta, store: ObjectStore | None, volume: str, block_size: int,
                 repair: bool = False, stale_after: float = STALE_AFTER, progress: Progress | None = None) -> None:
        self.meta = meta
        self.scan = RedisScan(meta)
        self.store = store
        self.volume = volume
        self.block_size = block_size
        self.repair = repair
        self.stale_after = stale_after
        self.progress = progress or (lambda *_: None)
        self.problems: list[Problem] = []
        self.snap = Snapshot()

    def report(self, check: str, message: str, path: str = "", fix: Callable[[], None] | None = None) -> None:
        problem = Problem(check, message, path)
        if self.repair and fix is not None:
            fix()
            problem.repaired = True
        self.problems.append(problem)

    def run(self) -> list[Problem]:
        self.snap = take_snapshot(self.meta, self.progress)
        self.check_sessions()
        if any(p.repaired for p in self.problems):
            # Closing sessions freed what only they kept open: judge the rest afresh.
            self.snap = take_snapshot(self.meta, self.progress)
        self.check_clones()
        if any(p.repaired for p in self.problems):
            self.snap = take_snapshot(self.meta, self.progress)  # the removed clones are gone
        for check in (self.check_entries, self.check_links, self.check_orphans, self.check_chunks,
                      self.check_blocks, self.check_usage, self.check_refs, self.check_imports):
            check()
        return self.problems

    def live_sessions(self) -> int:
        """Sessions with a recent heartbeat, judged by the Redis server's clock."""
        now = self.scan.server_time()
        return sum(now - beat <= self.stale_after for beat in self.scan.session_beats().values())

    # -- the checks -----------------------------------------------------------------------
    def check_sessions(self) -> None:
        snap = self.snap
        live = snap.live(self.stale_after)
        for sid, beat in sorted(snap.beats.items()):
            if sid not in live:
                self.report("sessions", f"session {sid} expired (last heartbeat {snap.now - beat:.0f} s ago)",
                            fix=lambda sid=sid: self.meta.close_session(sid))
        known = set(snap.beats)
        leftovers = (snap.note_sets | set(snap.marks)) - known
        for sids in snap.notes.values():
            leftovers |= sids - known
        for sid in sorted(leftovers):
            self.report("sessions", f"open-file notes of ended session {sid} are left",
                        fix=lambda sid=sid: self._drop_session(sid))

    def _drop_session(self, sid: int) -> None:
        self.scan.drop_session_leftovers(sid, [ino for ino, sids in self.snap.notes.items() if sid in sids])

    def check_entries(self) -> None:
        snap = self.snap
        for dir_ino, entries in snap.dirs.items():
            if dir_ino not in snap.attrs:
                self.report("entries", f"entries of a directory inode {dir_ino} that does not exist")
                continue
            for name, (child, kind) in sorted(entries.items()):
                attr = snap.attrs.get(child)
                path = f"{snap.path(dir_ino).rstrip('/')}/{name.decode(errors='replace')}"
                if attr is None:
                    self.report("entries", f"entry names inode {child}, which does not exist", path,
                                fix=lambda d=dir_ino, n=name: self.scan.remove_entry(d, n))
                elif kind and kind != attr.mode & 0o170000:
                    self.report("entries", f"entry says type {kind:o}, inode {child} is {attr.mode & 0o170000:o}", path)

    def _links(self) -> tuple[dict[int, int], dict[int, int]]:
        """Entries naming each inode, and subdirectories of each directory."""
        links: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        for dir_ino, entries in self.snap.dirs.items():
            for child, _ in entries.values():
                links[child] = links.get(child, 0) + 1
                attr = self.snap.attrs.get(child)
                if attr is not None and attr.is_dir:
                    subdirs[dir_ino] = subdirs.get(dir_ino, 0) + 1
        return links, subdirs

    def check_links(self) -> None:
        snap = self.snap
        links, subdirs = self._links()
        for ino, attr in sorted(snap.attrs.items()):
            if attr.is_dir:
                want = 2 + subdirs.get(ino, 0)
                if ino not in (ROOT_INO, TRASH_INO) and links.get(ino, 0) > 1:
                    self.report("links", f"directory has {links[ino]} entries", snap.path(ino))
            elif ino not in links:
                continue  # an orphan: check_orphans
            elif is_trash_dir(snap, attr.parent):
                want = 0  # trashed: no link in the user's tree
            else:
                want = links[ino]
            if attr.nlink != want:
                self.report("links", f"nlink is {attr.nlink}, {want} expected", snap.path(ino),
                            fix=lambda a=attr, w=want: self.scan.set_attr(a.with_(nlink=w)))

    def check_orphans(self) -> None:
        snap = self.snap
        links, _ = self._links()
        live = snap.live(self.stale_after)
        clones = {d.root for d in snap.detached}  # check_clones judges them
        for ino, attr in sorted(snap.attrs.items()):
            if ino in (ROOT_INO, TRASH_INO) or links.get(ino) or ino in clones:
                continue
            if attr.nlink == 0 and attr.parent == 0 and snap.notes.get(ino, set()) & live:
                continue  # unlinked while open: kept for a live session
            if attr.nlink == 0 and attr.parent == 0 and snap.notes.get(ino):
                self.report("orphans", f"inode {ino} ({_kind(attr)}, {attr.size} bytes) is kept for sessions that "
                            "ended; closing them (fsck --repair) frees it")
                continue
            self.report("orphans", f"inode {ino} ({_kind(attr)}, {attr.size} bytes) is in no directory",
                        fix=lambda a=attr: self._to_lost_found(a))

    def _lost_found(self) -> Attr:
        try:
            attr = self.meta.lookup(ROOT_INO, LOST_FOUND)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            attr = self.meta.mkdir(ROOT_INO, LOST_FOUND, 0o700, 0, 0)
        return attr

    def _to_lost_found(self, attr: Attr) -> None:
        lf = self._lost_found()
        if not self.scan.add_entry(lf.ino, str(attr.ino).encode(), attr):
            return
        if attr.is_dir:
            self.scan.set_attr(attr.with_(parent=lf.ino))
            self.scan.set_attr(self.meta.getattr(lf.ino).with_(nlink=self.meta.getattr(lf.ino).nlink + 1))
        else:
            self.scan.set_attr(attr.with_(nlink=1, parent=lf.ino if attr.parent == 0 else attr.parent))

    def check_chunks(self) -> None:
        snap = self.snap
        for ino, chunks in sorted(snap.chunks.items()):
            attr = snap.attrs.get(ino)
            if attr is None:
                if ino not in snap.deleted:
                    self.report("chunks", f"slice lists of inode {ino}, which does not exist",
                                fix=lambda i=ino, c=list(chunks): self.scan.queue_deleted_file(i, c))
                continue
            if not attr.is_file:
                self.report("chunks", f"slice lists on a {_kind(attr)}", snap.path(ino))
                continue
            count = (attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE
            beyond = [i for i in chunks if i >= count]
            if beyond:
                self.report("chunks", f"slice lists past the end of the file (chunks {beyond[:5]})", snap.path(ino))

    def check_blocks(self) -> None:
        if self.store is None:
            return
        snap = self.snap
        stored: set[str] = set()
        for n, obj in enumerate(self.store.list_all(f"{self.volume}/blocks/"), 1):
            stored.add(obj.key)
            self.progress("listing the object store", n, None)
        total = len(snap.chunks)
        for n, (ino, chunks) in enumerate(sorted(snap.chunks.items()), 1):
            self.progress("checking blocks", n, total)
            if ino not in snap.attrs:
                continue  # a deleted file's data: not needed
            missing = 0
            for slices in chunks.values():
                for piece in {s.id: s for s in slices if s.id and not is_external(s.id)}.values():
                    missing += sum(k not in stored for k in slice_keys(self.volume, piece.id, piece.size,
                                                                       self.block_size))
            if missing:
                self.report("blocks", f"lost data: {missing} blocks are missing from the object store",
                            snap.path(ino))

    def check_usage(self) -> None:
        snap = self.snap
        files = [a for a in snap.attrs.values() if a.is_file]
        used_space = sum(a.size for a in files)
        system = {ino for ino in snap.attrs if ino in (ROOT_INO, TRASH_INO) or is_trash_dir(snap, ino)}
        used_inodes = len(snap.attrs) - len(system)
        for name, want in (("usedspace", used_space), ("usedinodes", used_inodes)):
            have = snap.counters.get(name, 0)
            if have != want:
                self.report("usage", f"volume counter {name} is {have}, the tree has {want}",
                            fix=lambda n=name, w=want: self.scan.set_counter(n, w))
        for ino, (have_bytes, have_inodes) in sorted(snap.quotas.items()):
            if ino not in snap.attrs:
                self.report("usage", f"quota of directory inode {ino}, which does not exist")
                continue
            want_bytes, want_inodes = self._subtree(ino)
            if (have_bytes, have_inodes) != (want_bytes, want_inodes):
                self.report("usage", f"quota usage is {have_bytes} bytes / {have_inodes} inodes, the tree has "
                            f"{want_bytes} / {want_inodes}", snap.path(ino),
                            fix=lambda i=ino, b=want_bytes, n=want_inodes: self.scan.set_quota_usage(i, b, n))

    def check_clones(self) -> None:
        snap = self.snap
        live = snap.live(self.stale_after)
        for d in snap.detached:
            if d.builder_alive(live):
                continue
            where = f"{snap.path(d.parent).rstrip('/')}/{d.name.decode(errors='replace')}"
            kind = "snapshot" if d.read_only else "clone"
            self.report("clones", f"unfinished {kind} of {snap.path(d.src)} (its builder, session {d.sid}, "
                        "ended); removing it frees what it holds", where,
                        fix=lambda root=d.root: forget_detached(self.meta, root))

    def check_refs(self) -> None:
        snap = self.snap
        holders: dict[int, int] = {}
        first: dict[int, int] = {}
        for ino, chunks in snap.chunks.items():
            for slices in chunks.values():
                for slice_id in {s.id for s in slices if s.id and not is_external(s.id)}:
                    holders[slice_id] = holders.get(slice_id, 0) + 1
                    first.setdefault(slice_id, ino)
        for slice_id in sorted(set(snap.refs) | {i for i, n in holders.items() if n > 1}):
            held = holders.get(slice_id, 0)
            counted = 1 + snap.refs.get(slice_id, 0)
            if held == counted:
                continue
            fix = lambda i=slice_id, h=held, seen=snap.refs.get(slice_id, 0): (  # noqa: E731
                self.scan.set_slice_ref(i, h - 1, seen))
            if held == 0:
                self.report("refs", f"slice {slice_id} is counted as shared, but no file holds it "
                            "(`fusecache gc` then frees its objects)", fix=fix)
            elif held > counted:
                self.report("refs", f"slice {slice_id} is held by {held} files' chunks but counted for {counted}: "
                            "its data would be freed while still in use", snap.path(first[slice_id]), fix=fix)
            else:
                self.report("refs", f"slice {slice_id} is held by {held} chunks but counted for {counted}: "
                            "its objects would never be freed", snap.path(first[slice_id]), fix=fix)

    def check_imports(self) -> None:
        if self.store is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        from ..errors import ObjectNotFound, ObjectStoreError
        from ..meta.external import Registry
        from ..object import create_store

        snap = self.snap
        users: dict[int, int] = {}  # registry number -> a file that reads it
        for ino, chunks in snap.chunks.items():
            # An inode only a program still holds open (replaced by import --update, or
            # unlinked) is nobody's file: its old version going is expected.
            if ino in snap.attrs and snap.attrs[ino].nlink > 0:
                for slices in chunks.values():
                    for s in slices:
                        if is_external(s.id):
                            users.setdefault(external_parts(s.id)[0], ino)
        if not users:
            return
        registry = Registry(self.meta)
        records = registry.objects(sorted(users))
        stores: dict[int, object] = {}

        def check(number: int) -> tuple[int, str]:
            obj = records.get(number)
            if obj is None:
                return number, "its registry record is missing"
            src = registry.source(obj.source)
            if src is None:
                return number, f"its source {obj.source} is not registered"
            store = stores[obj.source]
            try:
                info = store.head(obj.key)  # type: ignore[attr-defined]
            except ObjectNotFound:
                return number, f"its source object {obj.key!r} is gone"
            except ObjectStoreError as exc:
                return number, f"its source object {obj.key!r} cannot be checked: {exc}"
            if (info.etag, info.size) != (obj.etag, obj.size):
                return number, f"its source object {obj.key!r} changed (import --update refreshes it)"
            return number, ""

        for obj in records.values():  # one store per source, made before the checks run
            src = registry.source(obj.source)
            if src is not None and obj.source not in stores:
                stores[obj.source] = create_store(src.storage, src.bucket, src.access_key, src.secret_key)
        with ThreadPoolExecutor(16) as pool:
            for n, (number, problem) in enumerate(pool.map(check, sorted(users)), 1):
                self.progress("checking imported objects", n, len(users))
                if problem:
                    self.report("imports", f"imported data: {problem}", snap.path(users[number]))
        for store in stores.values():
            store.close()  # type: ignore[attr-defined]

    def _subtree(self, root: int) -> tuple[int, int]:
        """Usage charged below `root`: an inode counts under the directory its parent field
        names (as the scripts charge it)."""
        used_bytes = used_inodes = 0
        stack = [root]
        while stack:
            d = stack.pop()
            for child, _ in self.snap.dirs.get(d, {}).values():
                attr = self.snap.attrs.get(child)
                if attr is None or attr.parent != d:
                    continue
                used_inodes += 1
                if attr.is_file:
                    used_bytes += attr.size
                elif attr.is_dir:
                    stack.append(child)
        return used_bytes, used_inodes


def _kind(attr: Attr) -> str:
    if attr.is_dir:
        return "directory"
    if attr.is_file:
        return "file"
    if attr.is_symlink:
        return "symlink"
    return "special file"


def as_json(problems: list[Problem], elapsed: float) -> dict[str, object]:
    return {"clean": not problems, "problems": [asdict(p) for p in problems],
            "unrepaired": sum(not p.repaired for p in problems), "seconds": round(elapsed, 3),
            "time": time.time()}
