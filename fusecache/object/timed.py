"""An ObjectStore wrapper that times every request by method (GET/PUT/DELETE/HEAD/LIST).

It wraps whichever engine the volume uses, so the latency histograms mean the same for S3
and a local directory; the figures reach `fusecache stats`, the Prometheus exporter
(`fusecache_object_request_duration_seconds`) and `fusecache bench`.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any

from ..latency import Histograms
from .base import ObjectInfo, ObjectStore


class TimedStore(ObjectStore):
    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.latency = Histograms()

    def _done(self, method: str, t0: float) -> None:
        self.latency.observe(method, perf_counter() - t0)

    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        t0 = perf_counter()
        try:
            return self.inner.get(key, off, limit)
        finally:
            self._done("GET", t0)

    @property
    def async_get(self) -> bool:
        return self.inner.async_get

    async def aget(self, key: str) -> bytes:
        t0 = perf_counter()
        try:
            return await self.inner.aget(key)
        finally:
            self._done("GET", t0)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        t0 = perf_counter()
        try:
            self.inner.put(key, data)
        finally:
            self._done("PUT", t0)

    def delete(self, key: str) -> None:
        t0 = perf_counter()
        try:
            self.inner.delete(key)
        finally:
            self._done("DELETE", t0)

    def head(self, key: str) -> ObjectInfo:
        t0 = perf_counter()
        try:
            return self.inner.head(key)
        finally:
            self._done("HEAD", t0)

    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        t0 = perf_counter()
        try:
            return self.inner.list(prefix, start_after, limit)
        finally:
            self._done("LIST", t0)

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        return self.inner.list_level(prefix)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Engine-specific extras (e.g. S3Store settings) stay reachable through the wrapper.
        return getattr(self.inner, name)
