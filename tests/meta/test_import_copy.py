"""The outcomes of one chunk's copy (`import --copy`), on a real redis-server and a local
store: a swap whose reply was lost keeps its objects (it may have happened) and a rerun
finds the chunk done; a refused swap (the chunk changed) frees its objects and the chunk is
copied again; a chunk whose imported bytes are all hidden drops its external slice too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusecache import importer
from fusecache.chunk.external import volume_chunks
from fusecache.chunk.store import ChunkStore
from fusecache.errors import MetaError
from fusecache.importer.copy import copy_tree
from fusecache.layout import CHUNK_SIZE, is_external
from fusecache.meta import open_meta
from fusecache.meta.redis import RedisMeta
from fusecache.object import create_store
from fusecache.types import Slice
from tests.meta.conformance import SETTINGS

MiB = 1 << 20
Vol = tuple[RedisMeta, ChunkStore, dict[str, bytes], Path]


@pytest.fixture
def volume(meta_url: str, tmp_path: Path) -> Iterator[Vol]:
    m = open_meta(meta_url)
    assert isinstance(m, RedisMeta)
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "bucket": str(tmp_path / "objects")})
    m.format(settings)
    src = tmp_path / "src"
    src.mkdir()
    files = {"a": os.urandom(3 * MiB + 7), "b": os.urandom(1000), "big/two-chunks": os.urandom(64 * MiB + 100)}
    (src / "big").mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    importer.import_tree(m, importer.parse_source(str(src)), "/in", settings)
    store = create_store("file", settings.bucket)
    chunks = volume_chunks(m, store, settings)
    yield m, chunks, files, src
    assert chunks.external is not None
    chunks.external.close()
    store.close()
    m.shutdown()


def inode(meta: RedisMeta, path: str) -> int:
    ino = 1
    for part in ("in/" + path).split("/"):
        ino = meta.lookup(ino, part.encode()).ino
    return ino


def read_back(chunks: ChunkStore, meta: RedisMeta, path: str) -> bytes:
    """A file's bytes, each chunk read from its one owned slice."""
    ino = inode(meta, path)
    out = b""
    for index in range((meta.getattr(ino).size + CHUNK_SIZE - 1) // CHUNK_SIZE):
        (s,) = meta.read(ino, index)
        assert not is_external(s.id)
        out += b"".join(chunks.load_block(s.id, s.size, i, s.block_hash(i)) for i in range(chunks.blocks_of(s.size)))
    return out


def block_objects(chunks: ChunkStore) -> set[str]:
    return {o.key for o in chunks.store.list_all(f"{SETTINGS.name}/blocks/")}


def test_a_lost_reply_is_not_a_failure(volume: Vol,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    meta, chunks, files, _ = volume
    real = meta.compact

    def swapped_then_lost(*args: Any) -> bool:
        real(*args)
        raise MetaError("connection lost")

    monkeypatch.setattr(meta, "compact", swapped_then_lost)
    summary = copy_tree(meta, chunks, "/in", parallel=2)
    assert not summary.failed and summary.files == 3  # looked again: the swaps happened
    kept = block_objects(chunks)
    assert kept
    monkeypatch.setattr(meta, "compact", real)
    again = copy_tree(meta, chunks, "/in")
    assert not again.failed and again.files == 0 and again.owned == 3
    assert block_objects(chunks) == kept
    for name, data in files.items():
        assert read_back(chunks, meta, name) == data


def test_an_unknown_outcome_keeps_the_objects_and_a_rerun_finds_the_chunk_done(
        volume: Vol, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, chunks, files, _ = volume
    real_compact, real_read = meta.compact, meta.read
    lost = [False]

    def swapped_then_lost(*args: Any) -> bool:
        real_compact(*args)
        lost[0] = True
        raise MetaError("connection lost")

    def read(*args: Any) -> list[Slice]:
        if lost[0]:  # still away when the copy looks again
            raise MetaError("connection lost")
        return real_read(*args)

    monkeypatch.setattr(meta, "compact", swapped_then_lost)
    monkeypatch.setattr(meta, "read", read)
    summary = copy_tree(meta, chunks, "/in", parallel=1)
    assert set(summary.failed) == {"/in/a", "/in/b", "/in/big/two-chunks"}  # a lost reply, then metadata away
    assert all("run the copy again" in why for why in summary.failed.values()), summary.failed
    kept = block_objects(chunks)
    assert kept  # the swap happened: its objects must still be there
    monkeypatch.setattr(meta, "compact", real_compact)
    monkeypatch.setattr(meta, "read", real_read)
    again = copy_tree(meta, chunks, "/in")
    assert not again.failed and again.owned >= 1  # the chunk of the lost reply is done
    assert kept <= block_objects(chunks)
    for name, data in files.items():
        assert read_back(chunks, meta, name) == data


def test_a_refused_swap_frees_its_objects_and_the_chunk_is_copied_again(
        volume: Vol, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, chunks, files, _ = volume
    real = meta.compact
    refused: list[int] = []

    def refuse_first(ino: int, index: int, old: list[Slice], new: Slice) -> bool:
        if not refused:
            refused.append(new.id)
            assert block_objects(chunks)  # uploaded before the swap is asked for
            return False
        return real(ino, index, old, new)

    monkeypatch.setattr(meta, "compact", refuse_first)
    summary = copy_tree(meta, chunks, "/in", parallel=1)
    assert not summary.failed and summary.files == 3
    assert summary.bytes == sum(len(d) for d in files.values())  # the refused attempt is not counted
    assert not [k for k in block_objects(chunks) if f"/{refused[0]}_" in k]  # freed
    for name, data in files.items():
        assert read_back(chunks, meta, name) == data


def test_a_chunk_whose_imported_bytes_are_hidden_drops_them(
        volume: Vol) -> None:
    meta, chunks, _, _ = volume
    ino = inode(meta, "b")
    meta.write(ino, 0, Slice(0, 0, 1000, 0, 1000), 1)  # a hole over every imported byte
    summary = copy_tree(meta, chunks, "/in")
    assert not summary.failed
    slices = meta.read(ino, 0)
    assert slices and not any(is_external(s.id) for s in slices) and all(s.id == 0 for s in slices)


def test_a_source_change_midway_gives_the_copied_chunks_back(volume: Vol, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, chunks, files, src = volume
    ino = inode(meta, "big/two-chunks")
    before = [meta.read(ino, i) for i in (0, 1)]
    real = meta.compact

    def then_change(i: int, index: int, old: list[Slice], new: Slice) -> bool:
        done = real(i, index, old, new)
        if i == ino and index == 0:  # the object changes once its first chunk is copied
            (src / "big" / "two-chunks").write_bytes(os.urandom(len(files["big/two-chunks"])))
        return done

    monkeypatch.setattr(meta, "compact", then_change)
    summary = copy_tree(meta, chunks, "/in", parallel=1)
    assert list(summary.failed) == ["/in/big/two-chunks"]
    assert "changed at its source" in summary.failed["/in/big/two-chunks"]
    # The whole file is as imported again (it reads EIO throughout; --update can refresh it).
    assert [meta.read(ino, i) for i in (0, 1)] == before
