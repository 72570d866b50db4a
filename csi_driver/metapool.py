"""Open metadata engines for the filesystems requests name, formatting new ones on demand.

One `Meta` per (URL, password) is kept open and shared by all worker threads (engines are
thread-safe); the first request for a filesystem that was never formatted runs
`fusecache format` when its secrets or parameters say how (see fsref.FormatSpec).
"""

from __future__ import annotations

import hashlib
import logging
import threading

from fusecache.errors import MetaError
from fusecache.meta.base import Meta
from fusecache.types import VolumeSettings

from .errors import failed_precondition, unavailable
from .fsref import Filesystem
from .tools import CliFailed, run_cli

log = logging.getLogger(__name__)

FORMAT_TIMEOUT = 120.0


def open_engine(fs: Filesystem) -> Meta:
    from fusecache.meta import open_meta  # the engine registry lives with the engines

    return open_meta(fs.url_with_password())


class MetaPool:
    def __init__(self, fusecache_cmd: list[str]) -> None:
        self._cmd = fusecache_cmd
        self._guard = threading.Lock()
        self._metas: dict[str, Meta] = {}
        self._format_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def _key(fs: Filesystem) -> str:
        return hashlib.sha256(f"{fs.meta_url}\0{fs.password}".encode()).hexdigest()

    def meta(self, fs: Filesystem) -> Meta:
        key = self._key(fs)
        with self._guard:
            meta = self._metas.get(key)
            if meta is None:
                try:
                    meta = open_engine(fs)
                except MetaError as exc:
                    raise unavailable(f"cannot open metadata engine {fs.meta_url}: {exc}") from exc
                self._metas[key] = meta
            return meta

    def open(self, fs: Filesystem) -> tuple[Meta, VolumeSettings]:
        """The engine and the filesystem's settings; MetaError if it is not formatted."""
        meta = self.meta(fs)
        return meta, meta.load()

    def open_or_format(self, fs: Filesystem) -> tuple[Meta, VolumeSettings]:
        try:
            return self.open(fs)
        except MetaError:
            if fs.format is None:
                raise failed_precondition(
                    f"no formatted filesystem at {fs.meta_url} (or it is unreachable); give 'storage', "
                    "'bucket' and 'name' in the secrets or parameters to format a new one") from None
        with self._guard:
            lock = self._format_locks.setdefault(self._key(fs), threading.Lock())
        with lock:
            try:
                return self.open(fs)  # formatted by a concurrent request
            except MetaError:
                pass
            self._format(fs)
            return self.open(fs)

    def _format(self, fs: Filesystem) -> None:
        assert fs.format is not None
        log.info("formatting filesystem %r at %s (storage %s)", fs.format.name, fs.meta_url, fs.format.storage)
        try:
            run_cli(self._cmd, ["format", fs.meta_url, *fs.format.args()], fs.env(), FORMAT_TIMEOUT)
        except CliFailed as exc:
            try:
                self.open(fs)  # another controller formatted it first: fine
                return
            except MetaError:
                pass
            raise unavailable(f"formatting the filesystem failed: {exc}") from exc

    def close(self) -> None:
        with self._guard:
            metas, self._metas = list(self._metas.values()), {}
        for meta in metas:
            try:
                meta.shutdown()
            except Exception:
                log.warning("closing a metadata engine failed", exc_info=True)
