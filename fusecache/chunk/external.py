"""Reads of external slices: blocks of objects that stay in a source bucket or directory
(fusecache import). Each read asks the source for exactly the version the registry names
(ObjectStore.get_version); an object changed or deleted at the source is EIO, logged with
its key, never bytes of another version."""

from __future__ import annotations

import errno
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..errors import FsError, ObjectChanged, ObjectNotFound, ObjectStoreError
from ..layout import CHUNK_SIZE, external_parts
from ..meta.external import ExternalSource, Registry
from ..object.base import ObjectStore
from ..types import VolumeSettings

if TYPE_CHECKING:
    from .store import BlockCache, ChunkStore

log = logging.getLogger(__name__)


class SourceChanged(FsError):
    """EIO: the source no longer has the version of an object its file names."""


class ExternalReader:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._stores: dict[int, tuple[ExternalSource, ObjectStore]] = {}

    def store_for(self, number: int) -> ObjectStore:
        from ..object import create_store

        with self._lock:
            held = self._stores.get(number)
        if held is not None:
            return held[1]
        src = self.registry.source(number)
        if src is None:
            raise FsError(errno.EIO, f"import source {number} is not registered")
        store = create_store(src.storage, src.bucket, src.access_key, src.secret_key)
        with self._lock:
            self._stores[number] = (src, store)
        return store

    def read(self, slice_id: int, index: int, length: int, block_size: int) -> bytes:
        """Block `index` (of `length` bytes) of external slice `slice_id`."""
        number, chunk = external_parts(slice_id)
        obj = self.registry.object(number)
        if obj is None:
            log.error("imported object %d has no registry record", number)
            raise FsError(errno.EIO, f"imported object {number} is not registered")
        offset = chunk * CHUNK_SIZE + index * block_size
        if offset + length > obj.size:
            log.error("imported object %r: block at %d+%d is past its size %d", obj.key, offset, length, obj.size)
            raise FsError(errno.EIO, f"imported object {obj.key!r} is shorter than its file")
        store = self.store_for(obj.source)
        try:
            data = store.get_version(obj.key, offset, length, obj.etag)
        except ObjectChanged:
            log.error("imported object %r changed at its source %s; its file reads EIO until "
                      "'fusecache import --update'", obj.key, store.describe())
            raise SourceChanged(errno.EIO, f"imported object {obj.key!r} changed at its source") from None
        except ObjectNotFound:
            log.error("imported object %r is gone from its source %s", obj.key, store.describe())
            raise SourceChanged(errno.EIO, f"imported object {obj.key!r} is gone from its source") from None
        except ObjectStoreError as exc:
            log.error("cannot read imported object %r: %s", obj.key, exc)
            raise FsError(errno.EIO, str(exc)) from None
        if len(data) != length:
            log.error("imported object %r: read %d bytes at %d, expected %d", obj.key, len(data), offset, length)
            raise FsError(errno.EIO, f"imported object {obj.key!r} is shorter than its file")
        return data

    def close(self) -> None:
        with self._lock:
            stores, self._stores = self._stores, {}
        for _, store in stores.values():
            store.close()


def volume_chunks(meta: object, store: ObjectStore, settings: VolumeSettings, cache: BlockCache | None = None,
                  **options: Any) -> ChunkStore:
    """The chunk store of a volume (its own objects, through `cache`), which also reads
    imported files from their sources when the metadata engine keeps a registry (Redis):
    what a mount uses, and what `import --copy` uses outside one. Close `external` after
    the store."""
    from ..meta.redis import RedisMeta
    from .store import ChunkStore

    chunks = ChunkStore(store, settings.name, settings.block_size, cache, **options)
    if isinstance(meta, RedisMeta):
        chunks.external = ExternalReader(Registry(meta))
    return chunks
