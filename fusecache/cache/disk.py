"""A disk (SSD) tier: cache files in one or more directories, an in-memory index, LRU eviction.

Layout under each configured directory (one subdirectory per volume, so volumes never
collide):

    <dir>/<volume>/clean/<xx>/<file>    clean blocks: a copy of an object in the store
    <dir>/<volume>/staged/<xx>/<file>   staged (dirty) blocks: not yet uploaded; durable
    <dir>/<volume>/tmp/                 files being written; emptied at start-up

The file format and names are in `blockfile.py`; the states and recovery rules are in
docs/cache.md.

Concurrency rules (the tier is called from many threads at once):
- One lock guards the index and the counters; it is never held during disk I/O.
- Space is reserved in the index before a file is written (an entry that is not `ready`),
  so concurrent admissions can never overshoot the quota.
- Every write creates a new file name (a fresh generation). An entry owns its file, so a
  late unlink of an evicted or dropped entry can never remove a newer copy; a writer that
  finds its entry gone when it finishes unlinks its own file.
- A reader that finds its file missing re-checks the index: the file may have moved
  (staged → clean) or been evicted, both of which are a plain miss or a retry, never an
  error.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import math
import os
import resource
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import xxhash

from fusecache.cache import blockfile
from fusecache.cache.blockfile import Buffer, CorruptBlock
from fusecache.cache.config import TierConfig
from fusecache.cache.policy import PROTECTED_SHARE, SegmentedLRU
from fusecache.cache.stats import TierStats

log = logging.getLogger(__name__)

def _open_files_allowed() -> int:
    """How many cache files a tier keeps open for ranged reads: up to 4096, a quarter of
    the descriptor limit (raised to its hard limit first: the client needs many)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft // 4))
RETRY_FAILED_AFTER = 30.0  # seconds a directory that failed with EIO/EROFS/... is skipped
RETRY_FULL_AFTER = 1.0  # seconds writes to a full directory are skipped
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(slots=True, eq=False)
class _Entry:
    root: int  # index of the directory holding the file
    path: Path
    size: int  # bytes of the file (header + key + data)
    staged: bool
    ready: bool  # False while the file is being written
    moving: bool = False  # uploaded() is turning this staged file into a clean one


@dataclass(slots=True, eq=False)
class _Open:
    """A cache file held open for ranged reads. Closed once it is `doomed` (its entry
    left the index, or the open-file cache let it go) and no reader uses it: a read in
    progress never has its descriptor closed under it, and an evicted file's space is
    freed as soon as its last reader is done."""

    block: blockfile.OpenBlock
    entry: _Entry
    users: int = 1
    doomed: bool = False


class _Root:
    """One configured directory: the volume's subdirectory and its health."""

    def __init__(self, base: Path, volume_id: str) -> None:
        self.base = base / volume_id
        self.clean = self.base / "clean"
        self.staged = self.base / "staged"
        self.tmp = self.base / "tmp"
        self.down_until = 0.0  # time.monotonic() before which writes skip this directory
        self.pending = 0  # disk bytes reserved by writes in flight (not yet seen by statvfs)
        self._made: set[Path] = set()  # shard directories known to exist
        self._lock_file: io.FileIO | None = None  # a file object: garbage collection unlocks
        self.owned = False  # this process holds the directory (else it must not touch it)

    def claim(self) -> str | None:
        """Take this process's exclusive claim on the directory (an flock, which the kernel
        drops when the process dies). Returns None, or the pid of the process holding it."""
        self.base.mkdir(parents=True, exist_ok=True)
        lock_path = self.base / ".lock"
        try:
            # Read-only descriptor: flock does not need write access, and an open writable
            # file would keep the filesystem from being remounted read-only.
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise
            self.owned = True  # a read-only disk without a lock file: nobody can write there
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            return holder
        except BaseException:
            os.close(fd)
            raise
        self._lock_file = io.FileIO(fd, "r", closefd=True)
        self.owned = True
        try:
            lock_path.write_text(f"{os.getpid()}\n")  # for the message of the next claimant
        except OSError:
            pass
        return None

    def claim_if_free(self) -> bool:
        try:
            return self.claim() is None
        except OSError:
            return False

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self.owned = False
        self.down_until = math.inf

    def dir_for(self, key: str, staged: bool) -> Path:
        """The shard directory of a key, created on first use (durably for staged files)."""
        path = (self.staged if staged else self.clean) / blockfile.shard(key)
        if path not in self._made:
            try:
                path.mkdir(parents=True)
                if staged:
                    blockfile.fsync_dir(path.parent)
            except FileExistsError:
                pass
            self._made.add(path)
        return path

    def forget_dirs(self) -> None:
        self._made.clear()


class DiskTier:
    def __init__(self, config: TierConfig, volume_id: str, *, verify: bool = True,
                 protected_share: float = PROTECTED_SHARE) -> None:
        if config.medium != "ssd":
            raise ValueError(f"DiskTier needs an ssd tier config, got {config.medium!r}")
        self.config = config
        self._verify = verify
        self._roots = [_Root(Path(p), volume_id) for p in config.paths]
        self._gens = blockfile.Generations()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._evictable = SegmentedLRU(config.quota, protected_share)  # clean, ready entries
        self._used = 0  # sum of entry sizes, including reservations of writes in flight
        self._staged_blocks = self._staged_bytes = 0
        self._hits = self._misses = self._admitted = self._refused = 0
        self._evictions = self._corrupt = self._errors = 0
        self._logged: set[tuple[int, int]] = set()  # (directory, errno) already warned about
        self._open: OrderedDict[str, _Open] = OrderedDict()  # LRU of files kept open
        self._open_max = _open_files_allowed()

    # ----------------------------------------------------------------- start-up

    def load(self) -> None:
        """Rebuild the index from the cache directories (blocking; call once at start).

        Recovery rules: temporary files are deleted; when a key has several files, a staged
        one wins over clean ones (it may not be uploaded yet) and otherwise the newest
        generation wins; the losers and unparseable names are deleted. Clean blocks enter
        the LRU order by file mtime. Contents are verified lazily, on read.
        """
        found: dict[str, tuple[_Entry, int, float]] = {}  # key -> (entry, generation, mtime)
        losers: list[Path] = []
        for ri, root in enumerate(self._roots):
            try:
                holder = root.claim()
                if holder is not None:
                    # Two processes sharing one cache directory would delete each other's
                    # files in flight and double the quota: the second one stays out.
                    log.warning("cache dir %s is in use by process %s%s; not using it", root.base, holder,
                                " (this one: open it once)" if holder == str(os.getpid()) else "")
                    root.down_until = math.inf
                    continue
                self._prepare(root)
            except OSError as exc:
                self._io_error(ri, "prepare", exc)
                continue
            for staged in (True, False):
                try:
                    shards = [Path(d.path) for d in os.scandir(root.staged if staged else root.clean)
                              if d.is_dir(follow_symlinks=False)]
                    for shard in shards:
                        for item in os.scandir(shard):
                            self._load_file(ri, staged, item, found, losers)
                except OSError as exc:
                    self._io_error(ri, "scan", exc)
        for path in losers:
            _unlink_quietly(path)
        # Oldest mtime first: the least recently written clean block is evicted first.
        ordered = sorted(found.items(), key=lambda kv: kv[1][2])
        with self._lock:
            self._entries.clear()
            self._evictable.clear()
            self._used = self._staged_blocks = self._staged_bytes = 0
            for key, (entry, _gen, _mtime) in ordered:
                self._entries[key] = entry
                self._used += entry.size
                if entry.staged:
                    self._staged_blocks += 1
                    self._staged_bytes += entry.size
                else:
                    self._evictable.add(key, entry.size)
            over_high = self._used > self.config.high * self.config.quota
            victims = self._evict_to_low_locked(0) if over_high else []
        self._unlink_entries(victims)
        log.info("cache %s: %d blocks (%d staged), %d bytes found", ",".join(self.config.paths),
                 len(found), self._staged_blocks, self._used)

    def _prepare(self, root: _Root) -> None:
        created = not root.staged.exists()
        for top in (root.clean, root.staged, root.tmp):
            top.mkdir(parents=True, exist_ok=True)
        for item in os.scandir(root.tmp):
            _unlink_quietly(Path(item.path))
        if created:
            # Staged files must survive a crash, so their directories must too.
            blockfile.fsync_dir(root.staged)
            blockfile.fsync_dir(root.base)
            blockfile.fsync_dir(root.base.parent)

    def _load_file(self, ri: int, staged: bool, item: os.DirEntry[str],
                   found: dict[str, tuple[_Entry, int, float]], losers: list[Path]) -> None:
        path = Path(item.path)
        parsed = blockfile.parse_file_name(item.name)
        try:
            st = item.stat(follow_symlinks=False)
            regular = item.is_file(follow_symlinks=False)
        except OSError:
            return
        if not regular:
            return
        if parsed is None or st.st_size < blockfile.HEADER.size:
            losers.append(path)
            return
        key, gen = parsed
        entry = _Entry(ri, path, st.st_size, staged, ready=True)
        previous = found.get(key)
        if previous is not None:
            prev_entry, prev_gen, _ = previous
            # Staged beats clean (scan order guarantees staged files come first per root,
            # but another root may have a clean copy found earlier); then newest wins.
            if (prev_entry.staged, prev_gen) >= (staged, gen):
                losers.append(path)
                return
            losers.append(prev_entry.path)
        found[key] = (entry, gen, st.st_mtime)

    # ----------------------------------------------------------------- reads

    def get(self, key: str) -> bytes | None:
        return self._read(key, record=True)

    def get_range(self, key: str, offset: int, length: int) -> Buffer | None:
        """Bytes [offset, offset+length) of a cached block, reading and verifying only the
        pages they lie in; None on a miss (counted like `get`)."""
        data = self._ranged(key, offset, length, nowait=False)
        if data is None:
            with self._lock:
                self._misses += 1
        return data

    def get_range_nowait(self, key: str, offset: int, length: int) -> Buffer | None:
        """Like get_range, but only if it needs no disk wait (an open file, pages in the
        page cache), so it may run on an event loop; None (no miss counted) otherwise."""
        return self._ranged(key, offset, length, nowait=True)

    def _ranged(self, key: str, offset: int, length: int, *, nowait: bool) -> Buffer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.ready:
                return None
            held = self._open.get(key)
            if held is not None and held.entry is entry:
                held.users += 1
                self._open.move_to_end(key)
            else:
                held = None
            path = entry.path
        if held is None:
            try:
                held = self._open_file(key, entry, path, nowait=nowait)
            except BlockingIOError:
                return None  # opening it would wait for the disk: on a thread, then
            if held is None:
                if nowait:
                    return None  # moved, gone, corrupt or format 1: on a thread, the general path
                data = self._read(key, record=False, span=(offset, length))
                if data is not None:
                    with self._lock:
                        self._hits += 1
                        self._evictable.touch(key)
                return data
        hit = False
        try:
            data = blockfile.read_pages(held.block, offset, length, verify=self._verify, nowait=nowait)
            hit = True
        except BlockingIOError:
            return None
        except CorruptBlock as exc:
            log.log(logging.ERROR if entry.staged else logging.WARNING, "cache file %s is corrupt (%s): dropped",
                    path, exc)
            with self._lock:
                self._corrupt += 1
            self._drop(key, entry)
            return None
        except OSError as exc:
            self._io_error(entry.root, "read", exc)
            if not entry.staged:
                self._drop(key, entry)
            return None
        finally:
            self._let_go(held, key if hit else None)
        return data

    def _open_file(self, key: str, entry: _Entry, path: Path, nowait: bool = False) -> _Open | None:
        """Open a format-2 cache file and keep it in the open-file cache (used once).
        `nowait`: BlockingIOError if opening it would wait for the disk."""
        try:
            block = blockfile.open_block(path, key, nowait=nowait)
        except BlockingIOError:
            if nowait:
                raise
            return None
        except (OSError, CorruptBlock):
            return None
        if block.layout is None:
            block.close()
            return None
        held = _Open(block, entry)
        closing: list[_Open] = []
        with self._lock:
            if self._entries.get(key) is not entry or key in self._open:
                held.doomed = True  # a private copy for this read only
            else:
                self._open[key] = held
                while len(self._open) > self._open_max:
                    _, old = self._open.popitem(last=False)
                    old.doomed = True
                    if old.users == 0:
                        closing.append(old)
        for old in closing:
            old.block.close()
        return held

    def _let_go(self, held: _Open, hit: str | None = None) -> None:
        """A read is done with the file; `hit`: it was served, so count it (one lock for
        both, on every random read's path)."""
        with self._lock:
            held.users -= 1
            close = held.doomed and held.users == 0
            if hit is not None:
                self._hits += 1
                self._evictable.touch(hit)
        if close:
            held.block.close()

    def _doom_locked(self, key: str, entry: _Entry) -> None:
        """Its entry left the index: close the file once no read uses it."""
        held = self._open.get(key)
        if held is not None and held.entry is entry:
            del self._open[key]
            held.doomed = True
            if held.users == 0:
                held.block.close()

    def read_staged(self, key: str) -> bytes | None:
        """The data of a staged block, for its upload (no hit counted, no change of the
        eviction order). None if the block is not staged here or its file is unreadable."""
        return self._read(key, record=False, staged_only=True)

    def _read(self, key: str, *, record: bool, staged_only: bool = False,
              span: tuple[int, int] = (0, -1)) -> bytes | None:
        for _ in range(3):  # a file moved by uploaded() is retried under its new name
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or not entry.ready or (staged_only and not entry.staged):
                    if record:
                        self._misses += 1
                    return None
                if record:
                    self._evictable.touch(key)
                path = entry.path
            try:
                data = blockfile.read_range(path, key, *span, verify=self._verify)
            except FileNotFoundError:
                with self._lock:
                    moved = self._entries.get(key) is entry and entry.path != path
                if moved:
                    continue
                # Evicted or removed meanwhile (then the entry is gone already), or deleted
                # behind our back (then drop the entry).
                self._drop(key, entry)
            except CorruptBlock as exc:
                level = logging.ERROR if entry.staged else logging.WARNING
                log.log(level, "cache file %s is corrupt (%s): dropped%s", path, exc,
                        "; this block was staged and never uploaded" if entry.staged else "")
                with self._lock:
                    self._corrupt += 1
                self._drop(key, entry)
            except OSError as exc:
                self._io_error(entry.root, "read", exc)
                if not entry.staged:  # a staged file is the only copy: keep it for a retry
                    self._drop(key, entry)
            else:
                if record:
                    with self._lock:
                        self._hits += 1
                return data
            break
        if record:
            with self._lock:
                self._misses += 1
        return None

    def contains(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.ready

    def is_staged(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.staged

    # ----------------------------------------------------------------- writes

    def put(self, key: str, data: Buffer) -> bool:
        """Admit a clean block (a copy of an object the store has). False if refused."""
        return self._admit(key, data, staged=False)

    def stage(self, key: str, data: Buffer) -> bool:
        """Write a dirty block durably (fsync file and directory); it is never evicted
        until `uploaded(key)`. False if it cannot be staged here."""
        return self._admit(key, data, staged=True)

    def _admit(self, key: str, data: Buffer, *, staged: bool) -> bool:
        ri = xxhash.xxh64_intdigest(key.encode()) % len(self._roots)
        root = self._roots[ri]
        name = blockfile.file_name(key, self._gens.next())
        size = blockfile.file_size(key, len(data))
        if (name is None or size > self.config.quota or not root.owned
                or time.monotonic() < root.down_until):
            with self._lock:
                self._refused += 1
            return False
        try:
            headroom, fs_block = self._headroom(root)
            path = root.dir_for(key, staged) / name
        except OSError as exc:
            self._io_error(ri, "prepare", exc)
            return False
        disk_size = _disk_bytes(size, fs_block)
        with self._lock:
            old = self._entries.get(key)
            if old is not None:
                if not staged:
                    # Blocks are immutable: a present (or arriving) copy is as good as ours.
                    self._evictable.touch(key)
                    return True
                if old.staged:
                    return old.ready  # already durable; a concurrent stage may still fail
                self._forget_locked(key, old)  # restaged: the clean copy gives way
            victims, fits = self._make_room_locked(size, ri, headroom - root.pending, fs_block)
            if old is not None:
                victims.append(old)
            if not fits:
                self._refused += 1
            else:
                entry = _Entry(ri, path, size, staged, ready=False)
                self._entries[key] = entry
                self._used += size
                root.pending += disk_size
        self._unlink_entries(victims)
        if not fits:
            return False
        try:
            blockfile.write_block(root.tmp, path, key, data, durable=staged)
            written = True
        except OSError as exc:
            self._io_error(ri, "write", exc)
            written = False
        with self._lock:
            root.pending -= disk_size
            mine = self._entries.get(key) is entry
            if mine and written:
                entry.ready = True
                self._admitted += 1
                if staged:
                    self._staged_blocks += 1
                    self._staged_bytes += size
                else:
                    self._evictable.add(key, size)
            elif mine:
                del self._entries[key]
                self._used -= size
        if written and not mine:
            _unlink_quietly(path)  # removed while we wrote it
        return written and mine

    def _headroom(self, root: _Root) -> tuple[int, int]:
        """(bytes this tier may still add to the filesystem before free space drops below
        free_ratio, filesystem block size)."""
        st = os.statvfs(root.base)
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return avail - int(self.config.free_ratio * total), max(st.f_frsize, 1)

    def _make_room_locked(self, size: int, ri: int, headroom: int,
                          fs_block: int) -> tuple[list[_Entry], bool]:
        """Pick clean blocks to evict so `size` more bytes fit, both in the quota and above
        the free-space floor of directory `ri`. Returns (victims, fits)."""
        quota = self.config.quota
        victims: list[_Entry] = []
        if self._used + size > self.config.high * quota:
            victims = self._evict_to_low_locked(size)
        if self._used + size > quota:
            return victims, False  # staged blocks pin the space
        freed_here = sum(_disk_bytes(v.size, fs_block) for v in victims if v.root == ri)
        shortfall = _disk_bytes(size, fs_block) - headroom - freed_here
        if shortfall > 0:
            # The filesystem is near its free-space floor: replace our own old blocks in this
            # directory rather than grow. If even that cannot make room, do not evict at all.
            chosen: list[str] = []
            for key in self._evictable.in_eviction_order():
                entry = self._entries[key]
                if entry.root == ri:
                    chosen.append(key)
                    shortfall -= _disk_bytes(entry.size, fs_block)
                    if shortfall <= 0:
                        break
            if shortfall > 0:
                return victims, False
            for key in chosen:
                victims.append(self._forget_locked(key, self._entries[key]))
            self._evictions += len(chosen)
        return victims, True

    def _evict_to_low_locked(self, incoming: int) -> list[_Entry]:
        """Evict clean blocks, least recently used first, until usage + incoming <= low."""
        target = self.config.low * self.config.quota
        victims: list[_Entry] = []
        while self._used + incoming > target:
            key = self._evictable.oldest()
            if key is None:
                break
            victims.append(self._forget_locked(key, self._entries[key]))
        self._evictions += len(victims)
        return victims

    def _forget_locked(self, key: str, entry: _Entry) -> _Entry:
        """Remove an entry from the index and the accounting (its file is unlinked later)."""
        del self._entries[key]
        self._evictable.discard(key)
        self._doom_locked(key, entry)
        self._used -= entry.size
        if entry.staged and entry.ready:
            self._staged_blocks -= 1
            self._staged_bytes -= entry.size
        return entry

    def uploaded(self, key: str) -> bool:
        """Turn a staged block into a clean one (the store has it now). False if not staged."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.staged or not entry.ready or entry.moving:
                return False
            entry.moving = True
            old_path = entry.path
        root = self._roots[entry.root]
        name = blockfile.file_name(key, self._gens.next())
        assert name is not None  # the staged name had the same length
        try:
            new_path = root.dir_for(key, staged=False) / name
            # link, then switch the entry, then unlink: a reader always finds one of the two
            # names, and a crash in between leaves the staged name (uploaded again: harmless).
            os.link(old_path, new_path)
        except OSError as exc:
            with self._lock:
                entry.moving = False
            if not isinstance(exc, FileNotFoundError):  # else: dropped meanwhile
                self._io_error(entry.root, "link", exc)
            return False
        with self._lock:
            entry.moving = False
            mine = self._entries.get(key) is entry
            if mine:
                entry.path = new_path
                entry.staged = False
                self._staged_blocks -= 1
                self._staged_bytes -= entry.size
                self._evictable.add(key, entry.size)
        _unlink_quietly(old_path if mine else new_path)
        return mine

    # ----------------------------------------------------------------- removal

    def remove(self, key: str) -> bool:
        """Delete the block in any state (staged included: the caller no longer needs it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._forget_locked(key, entry)
        self._unlink_entries([entry])
        return True

    def evict(self, keys: list[str]) -> int:
        """Drop these blocks if they are clean; staged blocks stay."""
        with self._lock:
            victims = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry.ready and not entry.staged:
                    victims.append(self._forget_locked(key, entry))
            self._evictions += len(victims)
        self._unlink_entries(victims)
        return len(victims)

    def _drop(self, key: str, entry: _Entry) -> None:
        """Drop an entry whose file turned out bad or missing, if it is still the current one."""
        with self._lock:
            if self._entries.get(key) is not entry:
                return
            self._forget_locked(key, entry)
        self._unlink_entries([entry])

    def _unlink_entries(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._io_error(entry.root, "unlink", exc)

    def clean(self, *, force: bool = False) -> int:
        """Delete this volume's cache directories. Staged blocks (never uploaded) are kept
        unless `force`. Returns the number of staged blocks kept."""
        with self._lock:
            kept = 0 if force else self._staged_blocks
            self._close_open_locked()
            self._entries = {k: e for k, e in self._entries.items() if e.staged and not force}
            self._evictable.clear()
            self._used = sum(e.size for e in self._entries.values())
            if force:
                self._staged_blocks = self._staged_bytes = 0
        for root in self._roots:
            if not root.base.exists():
                continue
            if not root.owned and not root.claim_if_free():
                log.warning("cache dir %s is in use by another process: not cleaning it", root.base)
                continue
            doomed = [root.base] if force or kept == 0 else [root.clean, root.tmp]
            for path in doomed:
                shutil.rmtree(path, ignore_errors=True)
            root.forget_dirs()
        return kept

    def close(self) -> None:
        """Release the directory locks; the tier takes no more writes."""
        with self._lock:
            self._close_open_locked()
        for root in self._roots:
            root.release()

    def _close_open_locked(self) -> None:
        for held in self._open.values():
            held.doomed = True
            if held.users == 0:
                held.block.close()
        self._open.clear()

    # ----------------------------------------------------------------- queries

    def keys_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._entries if k.startswith(prefix)]

    def pending_staged(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.staged and e.ready]

    def stats(self) -> TierStats:
        c = self.config
        with self._lock:
            return TierStats(
                medium=c.medium, paths=c.paths, quota=c.quota, low=c.low, high=c.high,
                used=self._used, blocks=len(self._entries), hits=self._hits, misses=self._misses,
                admitted=self._admitted, refused=self._refused, evictions=self._evictions,
                corrupt=self._corrupt, errors=self._errors, staged_blocks=self._staged_blocks,
                staged_bytes=self._staged_bytes, free_ratio=c.free_ratio,
            )

    # ----------------------------------------------------------------- failures

    def _io_error(self, ri: int, op: str, exc: OSError) -> None:
        """Skip a directory for a while after an I/O error; warn once per (directory, errno)."""
        root = self._roots[ri]
        err = exc.errno or 0
        full = err in _FULL
        root.down_until = time.monotonic() + (RETRY_FULL_AFTER if full else RETRY_FAILED_AFTER)
        with self._lock:
            self._errors += 1
            first = (ri, err) not in self._logged
            self._logged.add((ri, err))
        if first:
            log.warning("cache dir %s: %s failed: %s; %s", root.base, op,
                        os.strerror(err) if err else exc,
                        "the cache will not grow there while the disk is full" if full
                        else f"skipping it for {RETRY_FAILED_AFTER:.0f}s at a time while it fails")
        else:
            log.debug("cache dir %s: %s failed: %s", root.base, op, exc)


def _disk_bytes(n: int, fs_block: int) -> int:
    """Bytes a file of n bytes takes on a filesystem with this block size."""
    return -(-n // fs_block) * fs_block


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
