"""Clones and snapshots by metadata copy-on-write, on a real redis-server: what a clone
shares, that both sides then change independently, that a slice is freed only with its
last holder, that a snapshot refuses every change, and that a clone cut short is
invisible and is resumed by a rerun or removed by fsck."""

from __future__ import annotations

import errno
import stat
import time

import pytest

from fusecache.check.fsck import Fsck
from fusecache.layout import CHUNK_SIZE
from fusecache.meta import clone as clone_mod
from fusecache.meta.clone import clone, detached, remove_tree
from fusecache.meta.redis import RedisMeta
from fusecache.meta.scan import RedisScan
from fusecache.types import SetAttr, Slice
from tests.meta.conformance import ROOT, assert_consistent, drain_garbage, mkfile, raises, write


def build_tree(m: RedisMeta) -> tuple[int, set[int]]:
    """A directory with files across chunks, an overwritten file, a sparse one, an empty
    one, a hard link across directories, a symlink, a fifo and xattrs. Returns its inode
    and the slice ids its files hold."""
    top = m.mkdir(ROOT, b"src", 0o750, 1000, 1000).ino
    sub = m.mkdir(top, b"sub", 0o700, 1000, 1000).ino
    m.mkdir(sub, b"deeper", 0o755, 0, 0)
    big = mkfile(m, top, b"big").ino
    ids = {write(m, big, 0, 1000)[1].id, write(m, big, CHUNK_SIZE, 4096)[1].id, write(m, big, 500, 100)[1].id}
    sparse = mkfile(m, top, b"sparse").ino
    ids.add(write(m, sparse, 3 * CHUNK_SIZE + 10, 10)[1].id)
    m.setattr(sparse, SetAttr(size=5 * CHUNK_SIZE))
    mkfile(m, top, b"empty")
    linked = mkfile(m, sub, b"linked").ino
    ids.add(write(m, linked, 0, 77)[1].id)
    m.link(linked, top, b"also-linked")
    m.symlink(sub, b"ln", b"../big", 1000, 1000)
    m.mknod(top, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    m.setxattr(big, b"user.tag", b"v1")
    m.setxattr(top, b"user.dir", b"d")
    return top, ids


def describe(m: RedisMeta, top: int) -> dict[str, tuple]:
    """Everything a clone must reproduce, by path: attributes, link counts, slices (by id),
    symlink targets and xattrs."""
    out: dict[str, tuple] = {}
    stack = [(top, "")]
    while stack:
        ino, path = stack.pop()
        for e in sorted(m.readdir(ino), key=lambda e: e.name):
            a, p = e.attr, f"{path}/{e.name.decode()}"
            data: tuple = ()
            if a.is_file:
                data = tuple(tuple((s.pos, s.id, s.off, s.length) for s in m.read(a.ino, i))
                             for i in range((a.size + CHUNK_SIZE - 1) // CHUNK_SIZE))
            elif a.is_symlink:
                data = (m.readlink(a.ino),)
            xattrs = tuple(sorted((n, m.getxattr(a.ino, n)) for n in m.listxattr(a.ino)))
            out[p] = (a.mode, a.uid, a.gid, a.nlink, a.size, a.mtime_ns, data, xattrs)
            if a.is_dir:
                stack.append((a.ino, p))
    return out


def used(m: RedisMeta) -> dict[str, int]:
    """The volume's usage counters (bytes and inodes)."""
    return {k: v for k, v in RedisScan(m).counters().items() if k.startswith("used")}


def links_of(m: RedisMeta, top: int) -> tuple[int, int]:
    a, b = m.lookup(m.lookup(top, b"sub").ino, b"linked"), m.lookup(top, b"also-linked")
    return a.ino, b.ino


def test_a_clone_shares_every_slice_and_both_sides_change_independently(meta: RedisMeta) -> None:
    top, ids = build_tree(meta)
    before = describe(meta, top)
    used_before = meta.statfs()
    copy = clone(meta, top, ROOT, b"copy")
    assert copy.is_dir and copy.mode == meta.getattr(top).mode and not copy.frozen
    assert describe(meta, copy.ino) == before  # same tree, same slice ids: nothing copied
    one, other = links_of(meta, copy.ino)
    assert one == other and meta.getattr(one).nlink == 2 and one != links_of(meta, top)[0]
    assert {sid for sid in RedisScan(meta).slice_refs()} == ids
    assert_consistent(meta)
    st = meta.statfs()
    assert st.used_inodes == 2 * used_before.used_inodes  # the volume holds nothing else
    assert st.total_bytes - st.avail_bytes == 2 * (used_before.total_bytes - used_before.avail_bytes)
    assert drain_garbage(meta) == set()

    # Writes to the source add slices there only; the clone still reads the old slices.
    big = meta.lookup(top, b"big").ino
    _, fresh = write(meta, big, 0, 1000)
    meta.setattr(meta.lookup(top, b"sparse").ino, SetAttr(size=0))  # drops a shared slice from the source
    assert describe(meta, copy.ino) == before
    assert fresh.id not in {s.id for s in meta.read(meta.lookup(copy.ino, b"big").ino, 0)}
    assert drain_garbage(meta) == set()  # the dropped slice is still the clone's
    # ... and the other way round.
    meta.setxattr(meta.lookup(copy.ino, b"big").ino, b"user.tag", b"v2")
    assert meta.getxattr(big, b"user.tag") == b"v1"
    meta.setxattr(meta.lookup(copy.ino, b"big").ino, b"user.tag", b"v1")

    # Deleting the source frees only what the clone does not hold.
    remove_tree(meta, ROOT, b"src")
    assert {i for i, _ in drain_garbage(meta)} == {fresh.id}
    assert describe(meta, copy.ino) == before
    assert_consistent(meta)
    # Deleting the clone frees the rest, and no reference count is left behind.
    remove_tree(meta, ROOT, b"copy")
    assert {i for i, _ in drain_garbage(meta)} == ids
    assert RedisScan(meta).slice_refs() == {}
    assert meta.statfs().used_inodes == 0
    assert Fsck(meta, None, "vol", 1 << 20).run() == []


def test_compaction_and_clones_of_clones_keep_counts_exact(meta: RedisMeta) -> None:
    f = mkfile(meta, ROOT, b"f").ino
    _, a = write(meta, f, 0, 100)
    _, b = write(meta, f, 100, 100)
    c1 = clone(meta, f, ROOT, b"c1").ino
    c2 = clone(meta, c1, ROOT, b"c2").ino  # a clone of a clone
    assert RedisScan(meta).slice_refs() == {a.id: 2, b.id: 2}
    # Compacting the source replaces its two slices by a new one: the clones keep theirs.
    new_id = meta.reserve_slice_ids(1)
    assert meta.compact(f, 0, meta.read(f, 0), Slice(0, new_id, 200, 0, 200))
    assert drain_garbage(meta) == set()
    assert RedisScan(meta).slice_refs() == {a.id: 1, b.id: 1}
    for name in (b"c1", b"f"):
        meta.unlink(ROOT, name, trash=False)
    assert {i for i, _ in drain_garbage(meta)} == {new_id}
    assert [s.id for s in meta.read(c2, 0)] == [a.id, b.id]
    meta.unlink(ROOT, b"c2", trash=False)
    assert {i for i, _ in drain_garbage(meta)} == {a.id, b.id}
    assert Fsck(meta, None, "vol", 1 << 20).run() == []


def test_a_snapshot_refuses_every_change_and_only_remove_tree_takes_it(meta: RedisMeta) -> None:
    top, _ = build_tree(meta)
    snap = clone(meta, top, ROOT, b"snap", read_only=True)
    assert snap.frozen
    sf = meta.lookup(snap.ino, b"big")
    sub = meta.lookup(snap.ino, b"sub")
    assert sf.frozen and sub.frozen and meta.lookup(sub.ino, b"ln").frozen
    other = mkfile(meta, ROOT, b"other").ino
    piece = Slice(0, meta.reserve_slice_ids(1), 10, 0, 10)
    changes = {
        "create in": lambda: mkfile(meta, snap.ino, b"new"),
        "mkdir in": lambda: meta.mkdir(sub.ino, b"new", 0o755, 0, 0),
        "symlink in": lambda: meta.symlink(snap.ino, b"new", b"x", 0, 0),
        "unlink": lambda: meta.unlink(snap.ino, b"big"),
        "rmdir": lambda: meta.rmdir(sub.ino, b"deeper"),
        "rmdir of the snapshot": lambda: meta.rmdir(ROOT, b"snap"),
        "rename out": lambda: meta.rename(snap.ino, b"big", ROOT, b"out"),
        "rename in": lambda: meta.rename(ROOT, b"other", snap.ino, b"in"),
        "rename over": lambda: meta.rename(ROOT, b"other", snap.ino, b"big"),
        "rename of the snapshot": lambda: meta.rename(ROOT, b"snap", ROOT, b"moved"),
        "chmod": lambda: meta.setattr(sf.ino, SetAttr(mode=0o777)),
        "chown of the root": lambda: meta.setattr(snap.ino, SetAttr(uid=0)),
        "utimens": lambda: meta.setattr(sf.ino, SetAttr(mtime_ns=1)),
        "truncate": lambda: meta.setattr(sf.ino, SetAttr(size=0)),
        "write": lambda: meta.write(sf.ino, 0, piece, time.time_ns()),
        "setxattr": lambda: meta.setxattr(sf.ino, b"user.tag", b"x"),
        "removexattr": lambda: meta.removexattr(sf.ino, b"user.tag"),
        "link out": lambda: meta.link(sf.ino, ROOT, b"hard"),
        "link in": lambda: meta.link(other, snap.ino, b"hard"),
    }
    before = describe(meta, snap.ino)
    for what, change in changes.items():
        with pytest.raises(Exception) as info:
            change()
        assert getattr(info.value, "errno", None) == errno.EROFS, f"{what}: {info.value!r}"
    assert describe(meta, snap.ino) == before

    # A clone of a snapshot is writable; the source stays writable throughout.
    writable = clone(meta, snap.ino, ROOT, b"writable")
    assert not writable.frozen and not meta.lookup(writable.ino, b"big").frozen
    mkfile(meta, writable.ino, b"new")
    mkfile(meta, top, b"new")
    remove_tree(meta, ROOT, b"snap")
    raises(errno.ENOENT, meta.lookup, ROOT, b"snap")
    assert drain_garbage(meta) == set()  # the source and the writable clone hold it all
    assert_consistent(meta)


def test_clones_respect_quotas_capacity_and_names(meta: RedisMeta) -> None:
    top, _ = build_tree(meta)
    raises(errno.EEXIST, clone, meta, top, ROOT, b"src")
    raises(errno.ENOENT, clone, meta, 999_999, ROOT, b"x")
    limited = meta.mkdir(ROOT, b"limited", 0o755, 0, 0).ino
    meta.set_quota(limited, 0, 3)
    counters = used(meta)
    raises(errno.EDQUOT, clone, meta, top, limited, b"copy")
    # Nothing is left of the refused clone: no detached tree, no counts, no references.
    assert detached(meta) == [] and used(meta) == counters
    assert drain_garbage(meta) == set()  # its files' chunks let go of the source's slices ...
    assert RedisScan(meta).slice_refs() == {}  # ... which are the source's alone again
    meta.set_quota(limited, 0, 0)
    copy = clone(meta, top, limited, b"copy")
    q = meta.get_quota(limited)
    tree = describe(meta, copy.ino)
    # Every path, less the second link of one file, plus the clone's root directory.
    assert q is not None and q.used_inodes == len(tree) - 1 + 1
    assert q.used_bytes == sum(v[4] for p, v in tree.items() if stat.S_ISREG(v[0]) and p != "/also-linked")
    remove_tree(meta, limited, b"copy")
    q = meta.get_quota(limited)
    assert q is not None and (q.used_bytes, q.used_inodes) == (0, 0)
    assert_consistent(meta)


def _cut_short(meta: RedisMeta, monkeypatch: pytest.MonkeyPatch, top: int, after_batches: int) -> None:
    """A clone whose builder dies after `after_batches` batches: it cleans nothing up, and
    its session is gone."""
    real_run = meta._run
    calls = {"batches": 0}

    def dying_run(script: str, *args: object, **kwargs: object) -> list:
        if script == "CLONE_BATCH":
            calls["batches"] += 1
            if calls["batches"] > after_batches:
                raise KeyboardInterrupt  # the builder is gone here
        return real_run(script, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(meta, "_run", dying_run)
    monkeypatch.setattr(clone_mod, "_forget_quietly", lambda *_: None)  # a kill cleans up nothing
    with pytest.raises(KeyboardInterrupt):
        clone(meta, top, ROOT, b"copy", batch=4)
    monkeypatch.undo()
    assert meta._sid is None  # its session ended


def test_a_clone_cut_short_is_invisible_then_resumed_by_a_rerun(meta: RedisMeta,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    top, _ = build_tree(meta)
    for i in range(20):
        write(meta, mkfile(meta, top, b"f%d" % i).ino, 0, 10 + i)
    before = describe(meta, top)
    _cut_short(meta, monkeypatch, top, after_batches=2)
    raises(errno.ENOENT, meta.lookup, ROOT, b"copy")
    [half] = detached(meta)
    assert (half.src, half.parent, half.name) == (top, ROOT, b"copy")
    problems = Fsck(meta, None, "vol", 1 << 20).run()
    assert [p.check for p in problems] == ["clones"] and "unfinished clone of /src" in problems[0].message
    copy = clone(meta, top, ROOT, b"copy")
    assert copy.ino == half.root  # resumed, not started over
    assert describe(meta, copy.ino) == before
    assert detached(meta) == []
    assert_consistent(meta)
    assert Fsck(meta, None, "vol", 1 << 20).run() == []


def test_a_clone_cut_short_is_removed_by_fsck_repair(meta: RedisMeta, monkeypatch: pytest.MonkeyPatch) -> None:
    top, _ = build_tree(meta)
    for i in range(20):
        write(meta, mkfile(meta, top, b"f%d" % i).ino, 0, 10)
    counters = used(meta)
    _cut_short(meta, monkeypatch, top, after_batches=3)
    assert RedisScan(meta).slice_refs()  # the partial copy holds references
    fixed = Fsck(meta, None, "vol", 1 << 20, repair=True).run()
    assert [p.check for p in fixed] == ["clones"] and fixed[0].repaired
    assert detached(meta) == [] and used(meta) == counters
    assert drain_garbage(meta) == set()  # the source's slices are all still the source's
    assert RedisScan(meta).slice_refs() == {}
    assert Fsck(meta, None, "vol", 1 << 20).run() == []
    assert_consistent(meta)


def test_fsck_names_and_repairs_wrong_reference_counts(meta: RedisMeta) -> None:
    f = mkfile(meta, ROOT, b"f").ino
    _, a = write(meta, f, 0, 100)
    clone(meta, f, ROOT, b"c")
    scan = RedisScan(meta)
    scan.set_slice_ref(a.id, 0)  # undercounted: deleting one side would free the other's data
    scan.set_slice_ref(12345, 3)  # counted, held by nobody
    problems = Fsck(meta, None, "vol", 1 << 20).run()
    assert sorted(p.check for p in problems) == ["refs", "refs"]
    assert any("freed while still in use" in p.message for p in problems)
    assert any("no file holds it" in p.message for p in problems)
    Fsck(meta, None, "vol", 1 << 20, repair=True).run()
    assert scan.slice_refs() == {a.id: 1}
    meta.unlink(ROOT, b"f", trash=False)
    assert drain_garbage(meta) == set()
