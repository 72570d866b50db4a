"""The object store interface: a flat key → bytes namespace (S3, MinIO, a local directory).

Every call is blocking (run it from a worker thread) and idempotent, except `aget`: a store
that can read an object on the trio event loop without blocking says so with `async_get`,
and callers on the loop then await `aget` instead of handing `get` to a thread. Implementations retry
temporary failures themselves; what escapes is `ObjectNotFound` for a missing key and
`ObjectStoreError` for anything else, with a message that names the cause but never a
credential.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ObjectChanged


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str = ""  # names one version of the object's content ("" if the store has none)


class ObjectStore(ABC):
    @abstractmethod
    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        """Bytes [off, off+limit) of the object (limit -1: to the end)."""

    @property
    def async_get(self) -> bool:
        """Whether `aget` reads on the event loop (else it is not available)."""
        return False

    async def aget(self, key: str) -> bytes:
        """The whole object, read on the trio event loop (only when `async_get`)."""
        raise NotImplementedError

    def get_version(self, key: str, off: int, limit: int, etag: str) -> bytes:
        """Like `get`, but only from version `etag` of the object (see ObjectInfo.etag):
        ObjectChanged if the object now is another version, so that bytes of two
        versions are never mixed. Stores that can check the version in the read itself
        override this; the fallback checks before and after."""
        before = self.head(key)
        if before.etag != etag:
            raise ObjectChanged(f"{key!r} in {self.describe()} changed (version {before.etag}, expected {etag})")
        data = self.get(key, off, limit)
        if self.head(key).etag != etag:
            raise ObjectChanged(f"{key!r} in {self.describe()} changed while being read")
        return data

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete; a missing key is not an error."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """Up to `limit` objects under `prefix` with keys > `start_after`, in key order."""

    def list_all(self, prefix: str = "") -> Iterator[ObjectInfo]:
        marker = ""
        while True:
            page = self.list(prefix, marker, 1000)
            yield from page
            if len(page) < 1000:
                return
            marker = page[-1].key

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        """One level below `prefix` (empty, or ending in "/"): each object whose key has no
        further "/", and each deeper prefix once (a str ending in "/"), in key order. This
        default derives it from a full listing; stores with a delimiter list do better."""
        last = ""
        for info in self.list_all(prefix):
            cut = info.key.find("/", len(prefix))
            if cut < 0:
                yield info
                continue
            sub = info.key[:cut + 1]
            if sub != last:
                last = sub
                yield sub

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location (no credentials), e.g. 's3://host:port/bucket'."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
