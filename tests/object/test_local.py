"""LocalStore specifics beyond the conformance suite: key validation and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusecache.errors import ObjectNotFound, ObjectStoreError
from fusecache.object.local import TMP_SUFFIX, LocalStore


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/", "x" + TMP_SUFFIX, "nul\0"])
def test_invalid_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        store.put(key, b"x")
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "abs").exists()


def test_keys_map_to_files_and_no_temp_files_remain(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    for i in range(50):
        store.put(f"v/blocks/{i % 3}/{i}", str(i).encode())
    store.put("v/blocks/0/0", b"again")
    names = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(names) == sorted(f"v/blocks/{i % 3}/{i}" for i in range(50))
    assert (tmp_path / "v/blocks/0/0").read_bytes() == b"again"


def test_failed_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("d/child", b"x")
    with pytest.raises(ObjectStoreError, match="put 'd'"):
        store.put("d", b"a directory is in the way")
    assert sorted(os.listdir(tmp_path)) == ["d"]
    assert os.listdir(tmp_path / "d") == ["child"]


def test_stray_temp_files_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    (tmp_path / "a" / f".b.123abc{TMP_SUFFIX}").write_bytes(b"half-written")  # as after a crash
    assert [i.key for i in store.list()] == ["a/b"]
    with pytest.raises(ObjectStoreError, match="invalid object key"):  # temp names are no keys
        store.get(f"a/.b.123abc{TMP_SUFFIX}")


def test_missing_root_reads_as_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "not-yet")
    assert store.list() == []
    with pytest.raises(ObjectNotFound):
        store.get("k")
    store.delete("k")
