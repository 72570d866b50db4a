"""Importing a dataset that already lives in a bucket (or a directory): its objects appear
as files of the volume without their data being copied (`fusecache import`, and the CSI
driver's `importSource`).

    spec = parse_source(url, access_key, secret_key)
    summary = import_tree(meta, spec, "/train", load_volume(meta), progress)

source.py checks and opens the source; tree.py makes directories and files in batches.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from ..errors import ObjectStoreError
from ..meta.external import register_source
from ..meta.redis import RedisMeta
from .lazy import mark_unfilled
from .source import SourceError, SourceSpec, open_source, parse_source, refuse_own_store
from .sweep import delete_gone
from .tree import LISTERS, Importer, Summary, dest_dir, key_parts

__all__ = ["LISTERS", "SourceError", "SourceSpec", "Summary", "import_tree", "key_parts", "open_source", "parse_source",
           "refuse_own_store"]


def _quiet(_phase: str, _done: int, _total: int | None = None) -> None:
    return None


def import_tree(meta: RedisMeta, spec: SourceSpec, dest: str, settings: object,
                progress: Callable[[str, int, int | None], None] = _quiet, *,
                update: bool = False, delete: bool = False, parallel: int = LISTERS,
                lazy: bool = False) -> Summary:
    """Import every object of `spec` under `dest` (a directory path from the volume's
    root, made if missing). A rerun skips names already there, so an import cut short
    is finished by running it again. With `update`, files still unchanged in the volume
    that hold an older version of their object get the current one; with `delete` too,
    those whose object is gone from the source are deleted. Every step is atomic per
    batch and safe beside mounted clients: a file open elsewhere on an old version reads
    EIO (never mixed bytes) and the next open sees the new one. With `lazy`, nothing is
    listed now: DEST_DIR is marked, and mounts list each directory on first use. Raises SourceError (one
    line for a user), FsError and MetaError."""
    if delete and not update:
        raise SourceError("--delete works with --update only")
    if lazy and update:
        raise SourceError("--lazy lists nothing now, so it cannot --update; run --update without it")
    refuse_own_store(spec, settings)
    store = open_source(spec)
    seen = f"{meta._p}importseen:{secrets.token_hex(8)}" if delete else ""
    try:
        dest_ino = dest_dir(meta, dest)
        src = register_source(meta, spec.storage, spec.bucket, spec.access_key, spec.secret_key)
        if lazy:  # only marked: each directory is listed the first time a mount looks in
            mark_unfilled(meta, dest_ino, src.number, "")
            return Summary()
        try:
            summary = Importer(meta, store, src.number, dest_ino, progress, update, seen).run(parallel)
        except ObjectStoreError as exc:
            raise SourceError(f"listing SOURCE {spec.shown} failed: {exc}; run the same import again to "
                              "finish it") from None
        if delete:
            # Only after a complete listing: a key not seen is then truly gone.
            swept = delete_gone(meta, dest_ino, src.number, seen, progress)
            summary.deleted, summary.directories_deleted = swept.deleted, swept.directories
        return summary
    finally:
        if seen:
            meta._call(meta._r.delete, seen)
        store.close()
