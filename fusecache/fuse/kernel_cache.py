"""Long kernel cache timeouts that stay coherent: the kernel keeps names and attributes
for `long` seconds, and this client takes them back the moment another client changes them.

Redis tells this client which inodes changed (meta/aio.ChangeFeed, CLIENT TRACKING). For
every reply that gave the kernel a long timeout, this module keeps what the kernel holds:
the attributes sent and the names (parent, name) that point at the inode. After each batch
of notices it reads the changed inodes' attributes again, in one round trip, and where they
differ from what the kernel holds it tells the kernel to drop them (`invalidate_inode`) and
every name it holds for the inode (`invalidate_entry`). A directory keeps the names that
still lead to it: dropping a directory's name drops all the names cached below it.

Why notices about inodes are enough for names: every change that removes or replaces a
name also changes the inode the name pointed at (unlink and rename-over change its link
count or remove it, rename changes its ctime, rmdir removes it). And this client never
gives the kernel negative entries, so a name that another client creates needs no notice.

Rules that keep it safe:
- A long timeout only while the feed is live, and only if no notice arrived between the
  request to Redis and the reply (a token, as in meta/tracking.MetaCache). Otherwise the
  reply carries the short timeouts (`--attr-timeout`, `--entry-timeout`).
- When the feed goes down or comes back, everything the kernel holds is taken back.
- Our own changes need no invalidation (the kernel saw them), but they are harmless: an
  own change that makes the attributes differ only costs the kernel one more lookup.
- The records are bounded (`limit`); past it, replies get the short timeouts.

Invalidations run in a worker thread: the kernel may need a directory lock that a request
waiting for this loop holds (pyfuse3's documented deadlock of invalidating in a handler).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

log = logging.getLogger(__name__)

LONG_TIMEOUT = 60.0  # seconds; a bound for failures the feed cannot see, not the coherence rule
LIMIT = 500_000  # inodes recorded
CHECK_BATCH = 1000  # inodes read again per round trip


@dataclass
class _Held:
    attr: Any  # the Attr the kernel was last sent with a long timeout (None: none, or unknown)
    names: set[tuple[int, bytes]] = field(default_factory=set)
    lookups: int = 0  # the kernel's lookup count from our replies; FORGET takes it back


class KernelCache:
    def __init__(
        self,
        token: Callable[[], int | None],
        current_attrs: Callable[[list[int]], Awaitable[list[Any]]],
        entry_ino: Callable[[int, bytes], Awaitable[int | None]],
        to_kernel: Callable[[int], int],
        long: float = LONG_TIMEOUT,
        limit: int = LIMIT,
    ) -> None:
        self._token = token
        self._current = current_attrs
        self._entry_ino = entry_ino
        self._to_kernel = to_kernel
        self.long = long
        self.limit = limit
        self._held: dict[int, _Held] = {}
        self._by_name: dict[tuple[int, bytes], int] = {}  # the names in `_held`, to their inode
        self._changed: set[int] = set()
        self._all_changed = False
        self._wake = trio.Event()
        self.long_replies = 0
        self.forgotten = 0  # FORGETs: the kernel evicted an inode
        self.invalidated_inodes = 0
        self.invalidated_names = 0

    # -- replies ---------------------------------------------------------------------------

    def begin(self) -> int | None:
        """Take before the request to Redis whose answer goes to the kernel."""
        return self._token() if self.long > 0 else None

    def keep(self, token: int | None, attr: Any, name: tuple[int, bytes] | None = None) -> bool:
        """Record a reply of `attr` (with a new kernel name `name`, for entry replies).
        True: the reply may carry the long timeouts."""
        held = self._held.get(attr.ino)
        if token is None or token != self._token():
            if held is not None and name is not None:
                held.lookups += 1  # the kernel counts short replies too, and FORGET returns them
            return False
        if held is None:
            if len(self._held) >= self.limit:
                return False
            held = self._held[attr.ino] = _Held(attr)
        held.attr = attr
        if name is not None:
            self._name(name, attr.ino)
            held.lookups += 1
        self.long_replies += 1
        return True

    def forget(self, ino: int, nlookup: int) -> None:
        self.forgotten += 1
        held = self._held.get(ino)
        if held is not None:
            held.lookups -= nlookup
            if held.lookups <= 0:
                self._drop(ino)

    def own_change(self, change: Any) -> None:
        """This client changed an inode through the kernel: a create in a directory, or the
        commit of data the kernel wrote to a file. The kernel dropped what the change makes
        stale itself (a directory's attributes after a create; a file's size and times
        after a write), and no name leading to the inode moved. If what the kernel holds is
        the state just before the change, the state just after it is what the kernel is
        consistent with: the change's own notice then finds nothing to take back. Any other
        change, before or after, still differs and is checked. (A file whose reply carried
        the size of unflushed writes does not match the stored "before", so it is checked.)"""
        held = self._held.get(change.after.ino)
        if held is not None and held.attr is not None and held.attr == change.before:
            held.attr = change.after

    def name_gone(self, parent: int, name: bytes) -> None:
        """Our own unlink or rmdir took (parent, name) away in the kernel too."""
        ino = self._by_name.pop((parent, name), None)
        if ino is not None and (held := self._held.get(ino)) is not None:
            held.names.discard((parent, name))

    def holder(self, parent: int, name: bytes) -> int | None:
        """The inode the kernel's name (parent, name) leads to, if it was held long."""
        return self._by_name.get((parent, name))

    def renamed(self, old: tuple[int, bytes], new: tuple[int, bytes], moved: int | None, other: int | None,
                exchange: bool) -> None:
        """Our own rename moved the kernel's names as it did ours: follow them, so that a
        later change by another client still finds every name the kernel holds. `moved`
        and `other` are `holder()` of old and new taken before the rename: its own notice
        may have taken the names back meanwhile, while the kernel's moved name keeps its
        long timeout."""
        self.name_gone(*old)
        self.name_gone(*new)
        for name, ino in ((new, moved), (old, other if exchange else None)):
            if ino is not None:
                held = self._held.setdefault(ino, _Held(None))
                held.attr = None  # unknown now: the next notice about it takes it back
                self._name(name, ino)

    def _name(self, name: tuple[int, bytes], ino: int) -> None:
        before = self._by_name.get(name)
        if before is not None and before != ino and (held := self._held.get(before)) is not None:
            held.names.discard(name)
        if (held := self._held.get(ino)) is not None:
            held.names.add(name)
            self._by_name[name] = ino

    def _drop(self, ino: int) -> None:
        self._take(ino)
        del self._held[ino]

    def _take(self, ino: int) -> list[tuple[int, bytes]]:
        """Forget what the kernel holds of `ino` (it is being told to drop it), keeping the
        lookup count, which only FORGET takes back."""
        held = self._held[ino]
        names, held.names, held.attr = list(held.names), set(), None
        for name in names:
            if self._by_name.get(name) == ino:
                del self._by_name[name]
        return names

    # -- notices ---------------------------------------------------------------------------

    def changed(self, inos: set[int] | None) -> None:
        """The change feed's listener (None: anything may have changed)."""
        if inos is None:
            self._all_changed = True
        else:
            held = self._held
            self._changed.update(ino for ino in inos if ino in held and (held[ino].names or held[ino].attr is not None))
        if self._all_changed or self._changed:
            self._wake.set()

    async def run(self) -> None:
        """Take back what changed, batch after batch, for as long as the mount lives."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._take_back()
            except Exception as exc:  # Redis unreachable: take everything back instead
                log.info("kernel cache: cannot check changed inodes (%s); dropping all", exc)
                self._all_changed = True
                try:
                    await self._take_back()  # needs no Redis
                except Exception as again:  # never let this loop end the mount
                    log.warning("kernel cache: cannot take back the kernel's entries (%s)", again)

    async def _take_back(self) -> None:
        if self._all_changed:
            self._all_changed = False
            self._changed.clear()
            await self._invalidate([(ino, self._take(ino)) for ino in list(self._held)])
            return
        changed, self._changed = sorted(self._changed), set()
        stale: list[tuple[int, list[tuple[int, bytes]]]] = []
        for start in range(0, len(changed), CHECK_BATCH):
            part = changed[start:start + CHECK_BATCH]
            now = await self._current(part)
            for ino, attr in zip(part, now, strict=True):
                held = self._held.get(ino)
                if held is None or (attr is not None and attr == held.attr):
                    continue
                if attr is not None and attr.is_dir:
                    stale.append((ino, await self._moved_names(ino, held, attr)))
                else:
                    stale.append((ino, self._take(ino)))
        await self._invalidate(stale)

    async def _moved_names(self, ino: int, held: _Held, attr: Any) -> list[tuple[int, bytes]]:
        """A directory that is still there changed: its entries, most likely. Dropping its
        name in the kernel would drop every cached name below it too, so only the names
        that no longer lead to it are dropped; the kernel asks for its attributes again."""
        held.attr = attr
        moved = [name for name in list(held.names) if await self._entry_ino(*name) != ino]
        for name in moved:
            self.name_gone(*name)
        return moved

    async def _invalidate(self, stale: list[tuple[int, list[tuple[int, bytes]]]]) -> None:
        if not stale:
            return
        work = [(self._to_kernel(ino), [(self._to_kernel(p), n) for p, n in names]) for ino, names in stale]
        self.invalidated_inodes += len(work)
        self.invalidated_names += sum(len(names) for _, names in work)
        await trio.to_thread.run_sync(_tell_kernel, work)

    def snapshot(self) -> dict[str, int]:
        return {"held_inodes": len(self._held), "long_replies": self.long_replies, "forgotten": self.forgotten,
                "invalidated_inodes": self.invalidated_inodes, "invalidated_names": self.invalidated_names}


def _tell_kernel(work: list[tuple[int, list[tuple[int, bytes]]]]) -> None:
    for ino, names in work:
        for parent, name in names:
            try:
                pyfuse3.invalidate_entry(parent, name)
            except OSError:
                pass  # the kernel no longer holds it (ENOENT), or the mount is going away
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass
