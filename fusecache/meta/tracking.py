"""Attributes and names this client read, kept for as long as Redis says they did not change.

Redis tracks the keys for us (CLIENT TRACKING in broadcast mode, aio.ChangeFeed): whenever
any client changes an inode's attributes or a directory's entries, this client hears of it
within a round trip and drops what it kept. Lookups and getattrs of unchanged entries are
then answered here, without crossing the network.

Rules that keep it coherent:
- Nothing is kept unless the feed is live (subscribed). When it drops, everything goes
  and caching stops until it is subscribed again (changes in between are unknown).
- A value read from Redis is kept only if no change notice arrived while it was being
  read (`begin()` takes the epoch before the request, `fill_*` checks it after).
- This client's own changes drop everything at once (`reset()`), before their notices
  come back: a lookup right after our own unlink never sees the old entry.
- A directory's listing (its names and inodes) is kept like a name: any change to the
  directory's entries drops it. The entries' attributes are not part of it: they come
  from the attribute cache, so a child's chmod elsewhere only refetches that child.
- Entries are also dropped after `ttl` seconds, and all of them when `limit` is reached:
  a bound, not the coherence rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TTL = 60.0
LIMIT = 200_000


class MetaCache:
    def __init__(self, ttl: float = TTL, limit: int = LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self.live = False
        self.epoch = 0
        # Counts only what Redis told us (inode notices, feed up or down), not our own
        # resets: a reply built after our own change may still be kept by the kernel.
        self.notice_epoch = 0
        self.hits = 0
        # Told after each batch of notices which inodes changed (None: any may have).
        self.listener: Callable[[set[int] | None], None] | None = None
        self._heard: set[int] = set()
        self._heard_all = False
        self._attrs: dict[int, tuple[Any, float]] = {}  # ino → (Attr, expiry)
        self._names: dict[int, dict[bytes, int]] = {}  # parent → name → ino
        self._listings: dict[int, tuple[list[tuple[bytes, int]], float]] = {}  # dir → ((name, ino)s, expiry)
        self._listed = 0  # names held in listings, bounded by `limit` with the attributes

    # -- reads ---------------------------------------------------------------------------

    def begin(self) -> int | None:
        """A token for a read from Redis whose result may be kept; None: do not keep it."""
        return self.epoch if self.live else None

    def notice_token(self) -> int | None:
        """Like `begin()`, for a cache outside this client (the kernel's) that hears of
        changes through `listener`: None unless the feed is live."""
        return self.notice_epoch if self.live else None

    def attr(self, ino: int) -> Any:
        kept = self._attrs.get(ino)
        if kept is None:
            return None
        if kept[1] < time.monotonic():
            del self._attrs[ino]
            return None
        self.hits += 1
        return kept[0]

    def entry(self, parent: int, name: bytes) -> Any:
        names = self._names.get(parent)
        ino = names.get(name) if names is not None else None
        return self.attr(ino) if ino is not None else None

    def fill_attr(self, token: int | None, attr: Any) -> None:
        if token is None or token != self.epoch or not self.live:
            return
        if len(self._attrs) >= self.limit:
            self._drop_all()
        self._attrs[attr.ino] = (attr, time.monotonic() + self.ttl)

    def fill_entry(self, token: int | None, parent: int, name: bytes, attr: Any) -> None:
        if token is None or token != self.epoch or not self.live:
            return
        self.fill_attr(token, attr)
        self._names.setdefault(parent, {})[name] = attr.ino

    def listing(self, ino: int) -> list[tuple[bytes, int]] | None:
        """The (name, inode) pairs of a directory, as last read (do not modify)."""
        kept = self._listings.get(ino)
        if kept is None:
            return None
        if kept[1] < time.monotonic():
            self._drop_listing(ino)
            return None
        self.hits += 1
        return kept[0]

    def fill_listing(self, token: int | None, ino: int, pairs: list[tuple[bytes, int]]) -> None:
        if token is None or token != self.epoch or not self.live:
            return
        if self._listed + len(pairs) > self.limit:
            self._drop_all()
            if len(pairs) > self.limit:
                return
        self._drop_listing(ino)
        self._listings[ino] = (pairs, time.monotonic() + self.ttl)
        self._listed += len(pairs)

    def _drop_listing(self, ino: int) -> None:
        kept = self._listings.pop(ino, None)
        if kept is not None:
            self._listed -= len(kept[0])

    # -- changes -------------------------------------------------------------------------

    def changed_inode(self, ino: int) -> None:
        self.epoch += 1
        self.notice_epoch += 1
        self._attrs.pop(ino, None)
        if self.listener is not None:
            self._heard.add(ino)

    def changed_dir(self, ino: int) -> None:
        self.epoch += 1
        self._names.pop(ino, None)
        self._drop_listing(ino)

    def reset(self) -> None:
        """Drop everything (our own change, or the feed's state changed)."""
        self.epoch += 1
        self._drop_all()

    def changed_all(self) -> None:
        """Anything may have changed (FLUSHDB, or the feed went down or came back)."""
        self.notice_epoch += 1
        self._heard_all = True
        self.reset()

    def set_live(self, live: bool) -> None:
        self.live = live
        self.changed_all()
        self.tell()

    def tell(self) -> None:
        """Pass what the last batch of notices changed to the listener."""
        if self.listener is None or not (self._heard or self._heard_all):
            return
        heard, self._heard = (None if self._heard_all else self._heard), set()
        self._heard_all = False
        self.listener(heard)

    def _drop_all(self) -> None:
        self._attrs = {}
        self._names = {}
        self._listings = {}
        self._listed = 0

    @property
    def size(self) -> int:
        return len(self._attrs)
