"""Object stores: the `ObjectStore` interface, its engines, and the one place that builds them."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from fusecache.errors import ObjectNotFound, ObjectStoreError, StoreUnreachable
from fusecache.object.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

STORAGES = ("s3", "file")
PROBE_PREFIX = ".probe/"
# The probe's S3 policy: a dead endpoint is one clear line within seconds (a black hole
# within the connect timeout, a refusal at once), where the data path's patient policy
# would wait about 25 s. A 1 KiB request gets 10 s, far more than any working server needs.
PROBE_S3_OPTIONS: dict[str, Any] = {
    "fail_fast": True, "connect_timeout": 3.0, "read_timeout": 10.0,
    "max_attempts": 3, "backoff_base": 0.2, "backoff_max": 1.0, "max_pool_connections": 2,
}

__all__ = ["STORAGES", "ObjectInfo", "ObjectStore", "check_store", "create_store", "probe_store"]


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


def check_store(storage: str, bucket: str, access_key: str = "", secret_key: str = "", *,
                write: bool = True, **options: Any) -> str:
    """Fail fast if the store cannot be used: a short-lived store with the probe's policy
    writes, reads back and deletes a test object (`write`), or lists one key (read-only
    use). The caller then builds its long-lived store with the data path's policy.
    Returns the store's description (no credentials)."""
    if storage == "s3":
        options = {**options, **PROBE_S3_OPTIONS}
    store = create_store(storage, bucket, access_key, secret_key, **options)
    try:
        if write:
            probe_store(store)
        else:
            try:
                store.list("", "", 1)
            except StoreUnreachable:
                raise
            except ObjectStoreError as e:
                raise ObjectStoreError(f"cannot list object store {store.describe()}: {e}") from e
        return store.describe()
    finally:
        store.close()


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
    except StoreUnreachable:
        raise  # already names the endpoint and why; the step adds nothing
    except ObjectStoreError as e:
        raise ObjectStoreError(f"cannot {step} object store {where}: {e}") from e
    except ObjectNotFound:
        raise ObjectStoreError(f"object store {where} lost a test object right after writing it") from None
    if got != payload:
        raise ObjectStoreError(
            f"object store {where} returned other bytes than were written ({len(got)} of {len(payload)})"
        )
    log.debug("object store %s passed the probe", where)
