"""Deleting the objects of a deleted volume right away (controller side).

Removing a volume's tree only moves its slices to the engine's garbage list; mounted
clients collect garbage as they run, but after the last PV of a filesystem is gone none
may be running. So DeleteVolume collects too, for a bounded time: what is left is picked
up by the next DeleteVolume or by any client. `take_garbage` keeps items listed until
`ack_garbage`, and deleting an object twice is harmless, so collectors may overlap.
"""

from __future__ import annotations

import logging
import time

from fusecache.chunk.store import ChunkStore
from fusecache.meta.base import Meta
from fusecache.object import create_store
from fusecache.types import VolumeSettings

log = logging.getLogger(__name__)

BATCH = 200


def collect(meta: Meta, settings: VolumeSettings, access_key: str = "", secret_key: str = "",
            budget: float = 20.0) -> int:
    """Delete garbage objects for up to `budget` seconds; returns how many slices went."""
    store = create_store(settings.storage, settings.bucket, access_key or settings.access_key,
                         secret_key or settings.secret_key)
    chunks = ChunkStore(store, settings.name, settings.block_size)
    deadline = time.monotonic() + budget
    removed = 0
    try:
        while time.monotonic() < deadline:
            items = meta.take_garbage(BATCH)
            if not items:
                if items.more:
                    continue  # deleted files released slices that clones still hold
                break
            for slice_id, size in items:
                chunks.remove_slice(slice_id, size)
            meta.ack_garbage(items)
            removed += len(items)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    if removed:
        log.info("deleted the objects of %d slices", removed)
    return removed
