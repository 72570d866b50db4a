"""Clones and snapshots by metadata copy-on-write, and the removal of whole trees.

`clone()` copies a file or a directory tree without copying any object: the new inodes
hold the source's slice records, and {P}sliceref counts the extra holders of each slice
(lua_tree.py). A later write to either side adds slices to that side only, and a slice's
objects are freed only when the last chunk holding it lets go.

A tree is copied in batches of entries, breadth first, into a *detached* root that is
linked under its name only when complete (lua_tree.CLONE_ATTACH). The detached record
names the session that builds it, so a builder that dies leaves a half-done clone that
nobody sees: a rerun of the same clone resumes it, `fsck --repair` removes it. Each file is
copied atomically; a tree that changes while it is cloned gives a clone in which each
file is as it was at some instant of the clone (as `cp -a` would).

A read-only clone (a snapshot) has every inode frozen: the scripts answer EROFS to any
change, root's included. Only `remove_tree` takes one away.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import __version__
from ..errors import FsError
from ..types import ROOT_INO, TRASH_NAME, Attr
from .codec import pack_time, unpack_attr
from .redis import RedisMeta, _check_new_name

Progress = Callable[[str, int, "int | None"], None]
BATCH = 256  # entries per CLONE_BATCH / TREE_REMOVE call: a few ms of Redis time each
HEARTBEAT = 5.0  # seconds between heartbeats of a session opened for a clone
STALE_AFTER = 60.0  # a builder silent this long counts as dead (as fsck judges sessions)


@dataclass(frozen=True)
class Detached:
    """A clone being built (or abandoned): its detached root and what it is a clone of."""

    root: int
    src: int
    parent: int
    name: bytes
    read_only: bool
    sid: int
    started: float
    host: str = ""
    pid: int = 0

    @classmethod
    def parse(cls, root: int, raw: bytes | str) -> Detached:
        rec = json.loads(raw)
        return cls(root, int(rec["src"]), int(rec["parent"]), bytes.fromhex(rec["name"]),
                   bool(rec["ro"]), int(rec["sid"]), float(rec["started"]), str(rec.get("host", "")),
                   int(rec.get("pid", 0)))

    def builder_alive(self, live: set[int]) -> bool:
        """Whether the process building this clone may still be at it: its session is
        live and, when it ran on this host, its process still exists (a kill -9 is seen
        at once, not only when the session times out)."""
        if self.sid not in live:
            return False
        if self.host != socket.gethostname() or not self.pid:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def detached(meta: RedisMeta) -> list[Detached]:
    raw = meta._call(meta._r.hgetall, meta._p + "detached")
    return [Detached.parse(int(root), rec) for root, rec in sorted(raw.items(), key=lambda kv: int(kv[0]))]


def live_sessions(meta: RedisMeta, stale_after: float = STALE_AFTER) -> set[int]:
    """Sessions with a heartbeat in the last `stale_after` seconds (Redis's clock)."""
    now_s, now_us = meta._call(meta._r.time)
    cutoff = now_s + now_us / 1e6 - stale_after
    return {int(sid) for sid in meta._call(meta._r.zrangebyscore, meta._p + "sessions", cutoff, "+inf")}


@contextmanager
def owned_session(meta: RedisMeta, origin: str) -> Iterator[int]:
    """The engine's session, or one opened (and kept alive) for the duration: a clone's
    record names the session building it, which is how others tell that it is still alive."""
    if meta._sid is not None:
        yield meta._sid
        return
    sid = meta.new_session(socket.gethostname(), os.getpid(), "", __version__, origin)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            try:
                meta.heartbeat(sid)
            except Exception:  # Redis away for a moment: the next beat retries
                pass

    thread = threading.Thread(target=beat, name="clone-heartbeat", daemon=True)
    thread.start()
    try:
        yield sid
    finally:
        stop.set()
        thread.join()
        meta.close_session(sid)


def _record(src: int, parent: int, name: bytes, read_only: bool, sid: int) -> str:
    return json.dumps({"src": src, "parent": parent, "name": name.hex(), "ro": read_only, "sid": sid,
                       "started": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                       "token": secrets.token_hex(8)})


def _now() -> bytes:
    return pack_time(time.time_ns())


def clone(meta: RedisMeta, src: int, parent: int, name: bytes, *, read_only: bool = False,
          progress: Progress | None = None, batch: int = BATCH) -> Attr:
    """Copy inode `src` (a file, a symlink or a whole directory tree) as `name` in directory
    `parent`, sharing all data. Returns the new root's attributes. EEXIST if the name is
    taken, ENOSPC / EDQUOT if the volume or a quota has no room for the copy; on any
    failure the partial copy is removed."""
    _check_new_name(parent, name)
    try:
        meta.lookup(parent, name)
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
    else:
        raise FsError(errno.EEXIST)  # found before any copying (CLONE_ATTACH checks it again)
    note = progress or (lambda *_: None)
    with owned_session(meta, "clone") as sid:
        live = live_sessions(meta)
        resumed = next((d for d in detached(meta) if (d.src, d.parent, d.name, d.read_only)
                        == (src, parent, name, read_only) and not d.builder_alive(live)), None)
        root, root_attr = _begin(meta, src, parent, name, read_only, sid, resumed)
        try:
            if root_attr.is_dir:
                _copy_tree(meta, src, root, read_only, note, batch)
            res = meta._run("CLONE_ATTACH", [meta._dk(parent)], [root, parent, name, _now()], token=True)
        except BaseException:
            _forget_quietly(meta, root)
            raise
    return unpack_attr(root, res[1])


def _begin(meta: RedisMeta, src: int, parent: int, name: bytes, read_only: bool, sid: int,
           resumed: Detached | None) -> tuple[int, Attr]:
    rec = _record(src, parent, name, read_only, sid)
    take_over = str(resumed.root) if resumed else ""
    while True:
        root = resumed.root if resumed else meta._new_ino()
        res = meta._run("CLONE_BEGIN", [meta._p + "detached"],
                        [src, root, _now(), rec, "1" if read_only else "0", take_over])
        if res[0] == -2:
            meta._skip_taken_inodes()
            continue
        return int(res[1]), unpack_attr(int(res[1]), res[2])


def _copy_tree(meta: RedisMeta, src: int, root: int, read_only: bool, note: Progress, batch: int) -> None:
    """Copy the entries below source directory `src` into the clone's root `root`, breadth
    first. Directories are listed only once the batch that made their copy has run."""
    ready: deque[tuple[int, int]] = deque([(src, root)])  # (source dir, its copy)
    pending: list[tuple[int, int, bytes, int, bool]] = []  # (source, copy's dir, name, new ino, dir?)
    copied = 0

    def flush() -> None:
        nonlocal copied
        while pending:
            args: list[object] = [root, _now(), "1" if read_only else "0"]
            for item in pending:
                args.extend(item[:4])
            res = meta._run("CLONE_BATCH", [meta._p + "detached"], args)
            if res[0] == -2:  # a reserved inode number is taken: renumber the batch
                meta._skip_taken_inodes()
                pending[:] = [(s, d, n, meta._new_ino(), is_dir) for s, d, n, _, is_dir in pending]
                continue
            for (source, _, _, _, is_dir), made in zip(pending, res[1], strict=True):
                if is_dir and int(made):
                    ready.append((source, int(made)))
            copied += len(pending)
            pending.clear()
            note("cloning entries", copied, None)

    while ready or pending:
        if not ready:
            flush()
            continue
        source_dir, copy_dir = ready.popleft()
        try:
            entries = meta.readdir(source_dir)
        except FsError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue  # removed or replaced while we cloned: nothing to copy
            raise
        for entry in entries:
            pending.append((entry.attr.ino, copy_dir, entry.name, meta._new_ino(), entry.attr.is_dir))
            if len(pending) >= batch:
                flush()
    flush()


def _forget_quietly(meta: RedisMeta, root: int) -> None:
    try:
        forget_detached(meta, root)
    except Exception:  # left for fsck --repair, which names it
        pass


class Attached(Exception):
    """The detached clone being removed was finished and linked meanwhile."""


def _empty_directory(meta: RedisMeta, top: int, guard: int = 0, batch: int = BATCH,
                     progress: Progress | None = None) -> int:
    """Remove everything below directory `top`, deepest first, frozen or not. Returns how
    many entries went. `guard`: the detached root all of it is under, which must stay
    detached (else Attached is raised, with nothing more removed)."""
    note = progress or (lambda *_: None)
    order: list[int] = []
    stack = [top]
    while stack:
        ino = stack.pop()
        order.append(ino)
        try:
            stack.extend(e.attr.ino for e in meta.readdir(ino) if e.attr.is_dir)
        except FsError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
    removed = 0
    for ino in reversed(order):  # a directory after all of its subdirectories
        while True:
            try:
                names = [e.name for e in meta.readdir(ino)]
            except FsError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    break
                raise
            if not names:
                break
            busy = 0
            for start in range(0, len(names), batch):
                args: list[object] = [_now(), guard or ""]
                for name in names[start:start + batch]:
                    args.extend((ino, name))
                res = meta._run("TREE_REMOVE", [meta._p + "detached"], args)
                if len(res) > 3:
                    raise Attached(guard)
                removed += int(res[1])
                busy += int(res[2])
                note("removing entries", removed, None)
            if not busy:
                break
            _empty_directory(meta, ino, guard, batch, progress)  # something was added meanwhile
    return removed


def forget_detached(meta: RedisMeta, root: int, progress: Progress | None = None) -> None:
    """Remove a detached (unfinished) clone and free what it holds; nothing if it was
    finished meanwhile."""
    if not meta._call(meta._r.hexists, meta._p + "detached", str(root)):
        return
    try:
        if meta.getattr(root).is_dir:
            _empty_directory(meta, root, guard=root, progress=progress)
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
    except Attached:
        return
    meta._run("TREE_FORGET", [meta._p + "detached"], [root])


def remove_tree(meta: RedisMeta, parent: int, name: bytes, progress: Progress | None = None) -> int:
    """Remove entry `name` of `parent` and everything below it, frozen (a snapshot) or not.
    Files go without the trash. Returns how many entries went; ENOENT if there is none."""
    if parent == ROOT_INO and name == TRASH_NAME:
        raise FsError(errno.EPERM, "the trash cannot be removed")
    attr = meta.lookup(parent, name)
    removed = _empty_directory(meta, attr.ino, progress=progress) if attr.is_dir else 0
    res = meta._run("TREE_REMOVE", [meta._p + "detached"], [_now(), "", parent, name])
    if int(res[2]):
        return removed + remove_tree(meta, parent, name, progress)  # refilled meanwhile
    return removed + int(res[1])
