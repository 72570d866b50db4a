"""`LocalStore`: the object store on a local directory; key "a/b/c" is the file ROOT/a/b/c.

A put writes a hidden temp file beside its target and renames it over the target, so a
reader sees the old object or the new one, never a torn one. By default every put is
fsynced (file, then directory) before it returns: callers commit metadata that points at an
object right after `put` returns, and an object lost in a power cut would then read as
EIO forever. Pass `fsync=False` for scratch stores (tests, benchmarks of the layers above).

Directories are made on demand and never removed: an empty directory costs an inode, while
removing it would race with a concurrent put into the same directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from fusecache.errors import ObjectChanged, ObjectNotFound, ObjectStoreError
from fusecache.object.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

TMP_SUFFIX = ".fctmp"  # temp files end with this; `list` skips them and keys may not use it


class LocalStore(ObjectStore):
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._root = os.path.abspath(os.fspath(root))
        self._fsync = fsync

    @property
    def root(self) -> Path:
        return Path(self._root)

    # -- ObjectStore -------------------------------------------------------------------------

    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        if off < 0:
            raise ValueError(f"negative offset {off}")
        return self._read(key, off, limit)

    def get_version(self, key: str, off: int, limit: int, etag: str) -> bytes:
        if limit <= 0:
            return b""
        return self._read(key, off, limit, etag)

    def _read(self, key: str, off: int, limit: int, etag: str = "") -> bytes:
        """Bytes [off, off + limit) of the object (to its end if limit < 0); with `etag`,
        only of that version (ObjectChanged otherwise, also if it changes while read)."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise self._error("get", key, e) from e
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):  # a "directory key" is no object, as in S3
                raise ObjectNotFound(key)
            if etag and _etag(st) != etag:
                raise ObjectChanged(f"{key!r} in {self.describe()} changed (expected version {etag})")
            end = st.st_size if limit < 0 else min(st.st_size, off + limit)
            if end <= off:
                return b""
            # The fd pins this inode, so a concurrent put (a rename) cannot change what we read.
            data = os.pread(fd, end - off, off)
            if len(data) < end - off:  # pread may stop short (signals, huge reads): finish it
                parts = [data]
                pos = off + len(data)
                while pos < end:
                    more = os.pread(fd, end - pos, pos)
                    if not more:
                        raise ObjectStoreError(f"{key!r} in {self.describe()} shrank while being read")
                    parts.append(more)
                    pos += len(more)
                data = b"".join(parts)
            if etag and _etag(os.fstat(fd)) != etag:  # written in place while we read
                raise ObjectChanged(f"{key!r} in {self.describe()} changed while being read")
            return data
        except OSError as e:
            raise self._error("get", key, e) from e
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:
                self._make_dirs(directory)
                fd = os.open(tmp, flags, 0o644)
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise self._error("put", key, e) from e
        if self._fsync:
            try:
                _fsync_dir(directory)
            except OSError as e:
                raise self._error("put", key, e) from e

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass  # nothing there, or a "directory key", which is no object
        except OSError as e:
            raise self._error("delete", key, e) from e

    def head(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise self._error("head", key, e) from e
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return ObjectInfo(key, st.st_size, st.st_mtime, _etag(st))

    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if limit <= 0:
            return out
        try:
            for info in self._walk(self._root, "", prefix, start_after):
                out.append(info)
                if len(out) >= limit:
                    break
        except OSError as e:
            raise self._error("list", prefix, e) from e
        return out

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        if prefix and not prefix.endswith("/"):
            yield from super().list_level(prefix)
            return
        directory = os.path.join(self._root, *prefix.split("/")[:-1]) if prefix else self._root
        try:
            with os.scandir(directory) as it:
                entries = sorted((e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error("list", prefix, e) from e
        for sort_name, entry in entries:
            if sort_name.endswith("/"):
                yield prefix + sort_name
            elif not entry.name.endswith(TMP_SUFFIX):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield ObjectInfo(prefix + entry.name, st.st_size, st.st_mtime, _etag(st))

    def describe(self) -> str:
        return f"file://{self._root}"

    # -- internals ---------------------------------------------------------------------------

    def _walk(self, directory: str, dir_key: str, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Yield objects under `directory` (whose keys start with `dir_key`) in key order.

        Entries are sorted by name, with "/" appended to directory names: then the order of
        siblings is the order of every key below them, so a depth-first walk is in key order
        (S3 orders keys by their UTF-8 bytes, which is Python's code point order)."""
        try:
            with os.scandir(directory) as it:
                entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda pair: pair[0])
        for sort_name, entry in entries:
            key = dir_key + sort_name
            if sort_name.endswith("/"):
                # Descend only where prefix-matching keys > start_after can live.
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if key <= start_after and not start_after.startswith(key):
                    continue  # every key below is < start_after
                yield from self._walk(entry.path, key, prefix, start_after)
            else:
                if entry.name.endswith(TMP_SUFFIX) or not key.startswith(prefix) or key <= start_after:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the scan
                if stat.S_ISREG(st.st_mode):
                    yield ObjectInfo(key, st.st_size, st.st_mtime, _etag(st))

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if (
            not key
            or "\0" in key
            or any(p in ("", ".", "..") for p in parts)
            or parts[-1].endswith(TMP_SUFFIX)
        ):
            raise ObjectStoreError(f"invalid object key {key!r} for a local store")
        return os.path.join(self._root, *parts)

    def _make_dirs(self, directory: str) -> None:
        missing: list[str] = []
        d = directory
        while not os.path.isdir(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                continue  # another thread made it first
            if self._fsync:
                _fsync_dir(os.path.dirname(d))  # make the new entry durable

    def _error(self, op: str, key: str, exc: OSError) -> ObjectStoreError:
        # Raised `from exc`, so callers can still map the OSError's errno (ENOSPC, EIO).
        return ObjectStoreError(f"{op} {key!r} in {self.describe()} failed: {exc.strerror or exc}")


def _etag(st: os.stat_result) -> str:
    """A version name of a local file: a rewrite in place changes mtime or size, a
    replacement (rename over it) the inode."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
