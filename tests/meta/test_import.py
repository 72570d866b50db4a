"""How `fusecache import` turns keys into names, on a real redis-server: keys that cannot
be file names (no filesystem-backed S3 server can even store them) are skipped and
counted, and nothing half-made is left for them. The listing comes from a store that only
lists: no data is read here."""

from __future__ import annotations

from fusecache import importer
from fusecache.meta.redis import RedisMeta
from fusecache.object.base import ObjectInfo, ObjectStore
from tests.meta.conformance import ROOT, assert_consistent


class Listing(ObjectStore):
    """A store whose only content is a listing (the importer never reads data)."""

    def __init__(self, keys: list[str]) -> None:
        self.infos = [ObjectInfo(k, 10, 1_700_000_000.0, f"etag-{i}") for i, k in enumerate(sorted(keys))]

    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        return [i for i in self.infos if i.key.startswith(prefix) and i.key > start_after][:limit]

    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        raise AssertionError("an import reads no data")

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        raise AssertionError("an import writes nothing to its source")

    def delete(self, key: str) -> None:
        raise AssertionError("an import deletes nothing at its source")

    def head(self, key: str) -> ObjectInfo:
        raise AssertionError("not needed")

    def describe(self) -> str:
        return "listing"


def test_unusable_keys_are_skipped_and_counted(meta: RedisMeta) -> None:
    keys = ["ok/a", "both", "both/inner", "x" * 256, "ok/" + "y" * 255, "dot/./x", "dot/../y", "a//b",
            "/lead", "dir-marker/", "dir-marker/in", "ünï/日本語"]
    dest = importer.dest_dir(meta, "/in/here")
    run = importer.Importer(meta, Listing(keys), 1, dest, lambda *_: None)
    summary = run.run()
    assert summary.files == 5  # ok/a, both, ok/yyy…, dir-marker/in, ünï/日本語
    assert summary.skipped == {"keys that are both an object and a prefix": 1,
                               "names longer than 255 bytes": 1,
                               "unusable names (empty, '.', '..')": 4}
    both = meta.lookup(dest, b"both")
    assert both.is_file and both.size == 10
    assert meta.lookup(meta.lookup(dest, b"ok").ino, b"y" * 255).size == 10
    assert meta.lookup(dest, b"dir-marker").is_dir
    assert meta.lookup(meta.lookup(dest, "ünï".encode()).ino, "日本語".encode()).is_file
    assert [e.name for e in meta.readdir(dest)] and not [e for e in meta.readdir(dest) if e.name == b"dot"]
    again = importer.Importer(meta, Listing(keys), 1, dest, lambda *_: None).run()
    assert again.files == 0 and again.existing == 5
    assert meta.lookup(ROOT, b"in").is_dir
    assert_consistent(meta)


class GeneratedListing(Listing):
    """`count` keys over 16 prefixes, made as they are listed (the listing itself holds no
    memory), so that what an import keeps is all that grows."""

    def __init__(self, count: int) -> None:
        self.count = count

    def _key(self, i: int) -> str:
        return f"p{i % 16:02d}/k{i:09d}"

    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        # Keys sort by prefix, then by number: page straight from `start_after`.
        groups = [p for p in range(16) if f"p{p:02d}/".startswith(prefix) or prefix.startswith(f"p{p:02d}/")]
        out: list[ObjectInfo] = []
        for p in groups:
            first = p
            if start_after[:4] == f"p{p:02d}/":
                first = int(start_after[5:]) + 16
            elif start_after[:4] > f"p{p:02d}/":
                continue
            for i in range(first, self.count, 16):
                out.append(ObjectInfo(self._key(i), 10, 1_700_000_000.0, "e"))
                if len(out) == limit:
                    return out
        return out


def test_memory_of_an_import_does_not_grow_with_its_keys(meta: RedisMeta) -> None:
    import tracemalloc

    def peak(count: int, dest: str) -> int:
        tracemalloc.start()
        summary = importer.Importer(meta, GeneratedListing(count), 1, importer.dest_dir(meta, dest),
                                    lambda *_: None).run(4)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary.files == count
        return top

    small, large = peak(4_000, "/small"), peak(40_000, "/large")
    # Ten times the keys: the peak is set by the batch and the listers' bounded queue.
    # (About 1.6 and 2.8 MB here; keeping every listed object would add some 8 MB.)
    assert large - small < 3 << 20, (small, large)
    assert len(meta.readdir(meta.lookup(meta.lookup(ROOT, b"large").ino, b"p03").ino)) == 2_500
