"""`create_store` and `probe_store`: building stores from CLI arguments and proving them usable."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusecache.errors import ObjectStoreError
from fusecache.object import create_store, probe_store
from fusecache.object.local import LocalStore
from fusecache.object.s3 import S3Store
from tests.servers import S3Server


def test_create_s3_store(s3_server: S3Server, bucket_url: str) -> None:
    store = create_store("s3", f"{bucket_url}/vol", s3_server.access_key, s3_server.secret_key)
    assert isinstance(store, S3Store)
    assert store.describe() == f"s3://127.0.0.1:{s3_server.port}/{bucket_url.rsplit('/', 1)[1]}/vol"
    store.put("k", b"v")
    assert store.get("k") == b"v"
    store.close()


def test_create_file_store(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "a"), f"file://{tmp_path}/b"):
        store = create_store("file", spec, "", "")
        assert isinstance(store, LocalStore)
        store.put("x/y", b"data")
    assert (tmp_path / "a" / "x" / "y").read_bytes() == b"data"
    assert (tmp_path / "b" / "x" / "y").read_bytes() == b"data"
    assert create_store("file", str(tmp_path)).describe() == f"file://{tmp_path}"


def test_create_store_rejects_unknown_storage_and_bad_file_url() -> None:
    with pytest.raises(ValueError, match="unknown storage 'gcs': choose one of s3, file"):
        create_store("gcs", "gs://bucket", "a", "s")
    with pytest.raises(ValueError, match="local path"):
        create_store("file", "file://otherhost/dir")


def test_probe_passes_and_leaves_nothing(s3_server: S3Server, bucket_url: str, tmp_path: Path) -> None:
    stores = [S3Store(bucket_url, s3_server.access_key, s3_server.secret_key), LocalStore(tmp_path)]
    for store in stores:
        probe_store(store)
        assert list(store.list_all()) == []
        store.close()


def test_probe_fails_on_missing_bucket(s3_server: S3Server) -> None:
    store = S3Store(f"{s3_server.endpoint}/absent", s3_server.access_key, s3_server.secret_key)
    with pytest.raises(ObjectStoreError) as info:
        probe_store(store)
    assert str(info.value) == (
        f"cannot write to object store s3://127.0.0.1:{s3_server.port}/absent: "
        f"bucket 'absent' does not exist at {s3_server.endpoint}"
    )
    store.close()


def test_probe_fails_on_bad_credentials(s3_server: S3Server, bucket_url: str) -> None:
    secret = "not-the-secret-xyz"
    with pytest.raises(ObjectStoreError, match="access denied") as info:
        probe_store(S3Store(bucket_url, s3_server.access_key, secret))
    assert secret not in str(info.value)


def test_probe_fails_on_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")  # a regular file where the store's root directory should be
    with pytest.raises(ObjectStoreError, match=r"^cannot write to object store file://"):
        probe_store(LocalStore(blocker / "root"))


class _BitFlippingStore(LocalStore):
    """A real LocalStore whose reads come back with one bit flipped, as from bad media."""

    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        data = bytearray(super().get(key, off, limit))
        data[0] ^= 1
        return bytes(data)


def test_probe_detects_corruption(tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError, match="returned other bytes than were written"):
        probe_store(_BitFlippingStore(tmp_path))


def test_create_store_passes_engine_options(tmp_path: Path) -> None:
    store = create_store("s3", "http://127.0.0.1:1/b", "a", "s", max_pool_connections=7)
    assert isinstance(store, S3Store)
    assert store._client.meta.config.max_pool_connections == 7
    local = create_store("file", str(tmp_path), fsync=False)
    assert isinstance(local, LocalStore)
    with pytest.raises(TypeError):
        create_store("file", str(tmp_path), no_such_option=1)
