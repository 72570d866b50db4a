"""Object stores: the `ObjectStore` interface, its engines, and the one place that builds them."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from fusecache.errors import ObjectNotFound, ObjectStoreError
from fusecache.object.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

STORAGES = ("s3", "file")
PROBE_PREFIX = ".probe/"

__all__ = ["STORAGES", "ObjectInfo", "ObjectStore", "create_store", "probe_store"]


def create_store(
    storage: str, bucket: str, access_key: str = "", secret_key: str = "", **options: Any
) -> ObjectStore:
    """Build the store for `storage`:
    - "s3": `bucket` is `http(s)://host:port/bucket[/prefix]` or `https://bucket.s3.region.amazonaws.com`;
    - "file": `bucket` is a directory, as a path or a `file://` URL (keys are ignored).
    `options` go to the engine's constructor (e.g. S3Store's max_pool_connections, LocalStore's fsync).
    """
    if storage == "s3":
        from fusecache.object.s3 import S3Store  # boto3 is slow to import; only load it when used

        return S3Store(bucket, access_key, secret_key, **options)
    if storage == "file":
        from fusecache.object.local import LocalStore

        return LocalStore(_local_path(bucket), **options)
    raise ValueError(f"unknown storage {storage!r}: choose one of {', '.join(STORAGES)}")


def _local_path(bucket: str) -> str:
    if bucket.startswith("file://"):
        parts = urlsplit(bucket)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {bucket!r} must name a local path (file:///dir)")
        bucket = unquote(parts.path)
    if not bucket:
        raise ValueError("a file store needs a directory")
    return os.path.abspath(os.path.expanduser(bucket))


def probe_store(store: ObjectStore) -> None:
    """Prove the store works end to end before anything is written for real: put a small
    object, read it back byte for byte, delete it. Raises `ObjectStoreError` naming the step."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    payload = secrets.token_bytes(1024)
    where = store.describe()
    step = "write to"
    try:
        store.put(key, payload)
        step = "read back from"
        got = store.get(key)
        step = "delete from"
        store.delete(key)
    except ObjectStoreError as e:
        raise ObjectStoreError(f"cannot {step} object store {where}: {e}") from e
    except ObjectNotFound:
        raise ObjectStoreError(f"object store {where} lost a test object right after writing it") from None
    if got != payload:
        raise ObjectStoreError(
            f"object store {where} returned other bytes than were written ({len(got)} of {len(payload)})"
        )
    log.debug("object store %s passed the probe", where)
