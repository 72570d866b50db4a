"""Conformance suite of the `Meta` interface: plain `check_*` functions, each taking a freshly
formatted engine (see `SETTINGS`), so every engine runs the same checks.

`assert_consistent` is an fsck over the public API: every check that changes the namespace
ends with it.
"""

from __future__ import annotations

import errno
import random
import stat
import threading
import time
from collections.abc import Callable

import pytest

from fusecache.errors import FsError
from fusecache.layout import CHUNK_SIZE
from fusecache.meta.base import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, Meta
from fusecache.types import ROOT_INO, TRASH_INO, TRASH_NAME, Attr, SetAttr, Slice, VolumeSettings

# No trash and no garbage delay: the checks below look at what an unlink frees at once.
SETTINGS = VolumeSettings(name="vol", uuid="0123-4567", storage="file", bucket="/tmp/fc-meta-test",
                          secret_key="hunter2", trash_days=0, garbage_delay=0)
ROOT = ROOT_INO
FILE = stat.S_IFREG | 0o644


def raises(err: int, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    with pytest.raises(FsError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value}"


def mkfile(m: Meta, parent: int, name: bytes) -> Attr:
    return m.mknod(parent, name, FILE, 1000, 1000)


def write(m: Meta, ino: int, offset: int, length: int) -> tuple[Attr, Slice]:
    """Commit one fresh slice covering [offset, offset+length) within one chunk."""
    index, pos = divmod(offset, CHUNK_SIZE)
    assert pos + length <= CHUNK_SIZE
    sid = m.reserve_slice_ids(1)
    piece = Slice(pos, sid, length, 0, length)
    return m.write(ino, index, piece, time.time_ns()), piece


def drain_garbage(m: Meta) -> set[tuple[int, int]]:
    """Every pending garbage item, acknowledged."""
    seen: set[tuple[int, int]] = set()
    for _ in range(10_000):
        items = m.take_garbage(100)
        if not items.more:
            return seen
        seen.update(items)
        m.ack_garbage(items)
    raise AssertionError("garbage never drained")


def close(m: Meta, ino: int) -> None:
    """Release one open, and finish it now (engines may batch the last release)."""
    m.release(ino)
    m.flush_releases()


def used_bytes(m: Meta) -> int:
    st = m.statfs()
    return st.total_bytes - st.avail_bytes


def assert_consistent(m: Meta) -> None:
    """Walk the tree: parent links, directory nlink, file nlink vs links found, and the
    volume's inode and byte counters (call it when no unlinked file is held open)."""
    links: dict[int, int] = {}
    attrs: dict[int, Attr] = {}
    stack = [m.getattr(ROOT)]
    assert stack[0].parent == ROOT
    seen_dirs = {ROOT}
    while stack:
        d = stack.pop()
        entries = m.readdir(d.ino)
        subdirs = 0
        for e in entries:
            links[e.attr.ino] = links.get(e.attr.ino, 0) + 1
            attrs[e.attr.ino] = e.attr
            assert m.lookup(d.ino, e.name).ino == e.attr.ino
            if e.attr.is_dir:
                subdirs += 1
                assert e.attr.parent == d.ino, f"dir {e.name!r} has parent {e.attr.parent}, lives in {d.ino}"
                assert e.attr.ino not in seen_dirs, "directory reachable twice (cycle?)"
                seen_dirs.add(e.attr.ino)
                stack.append(e.attr)
        assert m.getattr(d.ino).nlink == 2 + subdirs, f"dir {d.ino}: nlink != 2 + {subdirs} subdirs"
    for ino, count in links.items():
        if not attrs[ino].is_dir:
            assert m.getattr(ino).nlink == count, f"inode {ino}: nlink != {count} links"
    st = m.statfs()
    assert st.used_inodes == len(links), f"used inodes {st.used_inodes} != {len(links)}"
    file_bytes = sum(a.size for a in attrs.values() if a.is_file)
    assert st.total_bytes - st.avail_bytes == file_bytes


# -- volume ---------------------------------------------------------------------------------
def check_format_and_load(m: Meta) -> None:
    assert m.load() == SETTINGS
    raises(errno.EEXIST, m.format, SETTINGS)
    f = mkfile(m, ROOT, b"keep")
    changed = VolumeSettings(**{**SETTINGS.__dict__, "capacity": 1 << 30, "extra": {"k": "v"}})
    m.format(changed, force=True)
    assert m.load() == changed
    assert m.lookup(ROOT, b"keep").ino == f.ino, "force format must keep data"
    assert m.statfs().total_bytes == 1 << 30


def check_root(m: Meta) -> None:
    root = m.getattr(ROOT)
    assert root.is_dir and root.nlink == 2 and root.parent == ROOT
    assert m.readdir(ROOT) == []
    assert m.lookup(ROOT, b".").ino == ROOT
    assert m.lookup(ROOT, b"..").ino == ROOT
    raises(errno.ENOENT, m.getattr, 999_999)
    assert_consistent(m)


# -- namespace --------------------------------------------------------------------------------
def check_create_kinds(m: Meta) -> None:
    f = m.mknod(ROOT, b"file", FILE, 10, 20)
    assert f.is_file and f.nlink == 1 and f.size == 0 and (f.uid, f.gid) == (10, 20)
    assert m.getattr(f.ino) == f
    assert m.lookup(ROOT, b"file") == f
    plain = m.mknod(ROOT, b"plain", 0o600, 0, 0)  # no type bits: a regular file
    assert plain.is_file
    fifo = m.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    sock = m.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, 0)
    dev = m.mknod(ROOT, b"dev", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0501)
    blk = m.mknod(ROOT, b"blk", stat.S_IFBLK | 0o600, 0, 0, rdev=0x0802)
    assert stat.S_ISFIFO(m.getattr(fifo.ino).mode)
    assert stat.S_ISSOCK(m.getattr(sock.ino).mode)
    assert stat.S_ISCHR(m.getattr(dev.ino).mode) and m.getattr(dev.ino).rdev == 0x0501
    assert stat.S_ISBLK(m.getattr(blk.ino).mode) and m.getattr(blk.ino).rdev == 0x0802
    d = m.mkdir(ROOT, b"dir", 0o755, 0, 0)
    assert d.is_dir and d.nlink == 2 and d.parent == ROOT
    inos = {f.ino, plain.ino, fifo.ino, sock.ino, dev.ino, blk.ino, d.ino}
    assert len(inos) == 7 and ROOT not in inos
    assert {e.name for e in m.readdir(ROOT)} == {b"file", b"plain", b"fifo", b"sock", b"dev", b"blk", b"dir"}
    assert m.getattr(ROOT).nlink == 3
    assert_consistent(m)


def check_create_errors(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    raises(errno.EEXIST, mkfile, m, ROOT, b"f")
    raises(errno.EEXIST, m.mkdir, ROOT, b"f", 0o755, 0, 0)
    raises(errno.EEXIST, m.symlink, ROOT, b"f", b"x", 0, 0)
    raises(errno.ENOTDIR, mkfile, m, f.ino, b"x")
    raises(errno.ENOTDIR, m.mkdir, f.ino, b"x", 0o755, 0, 0)
    raises(errno.ENOENT, mkfile, m, 999_999, b"x")
    raises(errno.ENAMETOOLONG, mkfile, m, ROOT, b"n" * 256)
    assert mkfile(m, ROOT, b"n" * 255).ino
    raises(errno.ENAMETOOLONG, m.lookup, ROOT, b"n" * 256)
    raises(errno.ENOENT, m.lookup, ROOT, b"missing")
    raises(errno.ENOTDIR, m.lookup, f.ino, b"x")
    raises(errno.ENOENT, m.lookup, 999_999, b"x")
    raises(errno.ENOTDIR, m.readdir, f.ino)
    raises(errno.ENOENT, m.readdir, 999_999)
    assert_consistent(m)


def check_parent_times(m: Meta) -> None:
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    time.sleep(0.002)
    f = mkfile(m, d.ino, b"f")
    after_create = m.getattr(d.ino)
    assert after_create.mtime_ns > d.mtime_ns and after_create.ctime_ns > d.ctime_ns
    assert after_create.mtime_ns >= f.ctime_ns - 1_000_000
    time.sleep(0.002)
    m.unlink(d.ino, b"f")
    after_unlink = m.getattr(d.ino)
    assert after_unlink.mtime_ns > after_create.mtime_ns
    time.sleep(0.002)
    m.mkdir(d.ino, b"sub", 0o755, 0, 0)
    after_mkdir = m.getattr(d.ino)
    assert after_mkdir.mtime_ns > after_unlink.mtime_ns and after_mkdir.nlink == 3
    time.sleep(0.002)
    m.rmdir(d.ino, b"sub")
    after_rmdir = m.getattr(d.ino)
    assert after_rmdir.mtime_ns > after_mkdir.mtime_ns and after_rmdir.nlink == 2


def check_mkdir_rmdir(m: Meta) -> None:
    a = m.mkdir(ROOT, b"a", 0o755, 0, 0)
    b = m.mkdir(a.ino, b"b", 0o700, 5, 6)
    assert b.parent == a.ino and m.getattr(a.ino).nlink == 3
    assert m.lookup(b.ino, b"..").ino == a.ino
    mkfile(m, b.ino, b"f")
    raises(errno.ENOTEMPTY, m.rmdir, ROOT, b"a")
    raises(errno.ENOTEMPTY, m.rmdir, a.ino, b"b")
    raises(errno.ENOTDIR, m.rmdir, b.ino, b"f")
    raises(errno.ENOENT, m.rmdir, ROOT, b"zz")
    raises(errno.EINVAL, m.rmdir, a.ino, b".")
    raises(errno.ENOTEMPTY, m.rmdir, a.ino, b"..")
    raises(errno.EISDIR, m.unlink, ROOT, b"a")
    m.unlink(b.ino, b"f")
    m.rmdir(a.ino, b"b")
    raises(errno.ENOENT, m.getattr, b.ino)
    assert m.getattr(a.ino).nlink == 2
    m.rmdir(ROOT, b"a")
    assert m.getattr(ROOT).nlink == 2
    assert m.readdir(ROOT) == []
    assert_consistent(m)


def check_symlink(m: Meta) -> None:
    target = b"../some/where/" + b"x" * 300
    s = m.symlink(ROOT, b"link", target, 7, 8)
    assert s.is_symlink and s.size == len(target) and (s.uid, s.gid) == (7, 8)
    assert m.readlink(s.ino) == target
    f = mkfile(m, ROOT, b"f")
    raises(errno.EINVAL, m.readlink, f.ino)
    raises(errno.ENOENT, m.readlink, 999_999)
    m.unlink(ROOT, b"link")
    raises(errno.ENOENT, m.readlink, s.ino)
    assert_consistent(m)


def check_link(m: Meta) -> None:
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    f = mkfile(m, ROOT, b"f")
    time.sleep(0.002)
    linked = m.link(f.ino, d.ino, b"g")
    assert linked.nlink == 2 and linked.ctime_ns > f.ctime_ns
    assert m.lookup(d.ino, b"g").ino == f.ino
    raises(errno.EPERM, m.link, d.ino, ROOT, b"dirlink")
    raises(errno.EEXIST, m.link, f.ino, ROOT, b"f")
    raises(errno.ENOENT, m.link, 999_999, ROOT, b"x")
    raises(errno.ENOTDIR, m.link, f.ino, f.ino, b"x")
    raises(errno.ENAMETOOLONG, m.link, f.ino, ROOT, b"x" * 256)
    write(m, f.ino, 0, 1000)
    m.unlink(ROOT, b"f")
    left = m.getattr(f.ino)
    assert left.nlink == 1 and left.size == 1000
    assert_consistent(m)
    m.unlink(d.ino, b"g")
    raises(errno.ENOENT, m.getattr, f.ino)
    assert_consistent(m)


def check_unlink(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    _, piece = write(m, f.ino, 0, 4096)
    _, piece2 = write(m, f.ino, CHUNK_SIZE + 10, 10)
    raises(errno.ENOENT, m.unlink, ROOT, b"nope")
    raises(errno.ENOTDIR, m.unlink, f.ino, b"x")
    m.unlink(ROOT, b"f")
    raises(errno.ENOENT, m.lookup, ROOT, b"f")
    raises(errno.ENOENT, m.getattr, f.ino)
    assert drain_garbage(m) == {(piece.id, piece.size), (piece2.id, piece2.size)}
    assert m.read(f.ino, 0) == [] and m.read(f.ino, 1) == []
    assert used_bytes(m) == 0
    assert_consistent(m)


def check_readdir_large(m: Meta) -> None:
    d = m.mkdir(ROOT, b"big", 0o755, 0, 0)
    names = {f"entry-{i:05d}".encode() for i in range(2500)}
    made = {n: mkfile(m, d.ino, n).ino for n in names}
    sub = m.mkdir(d.ino, b"sub", 0o755, 0, 0)
    entries = m.readdir(d.ino)
    assert len(entries) == len(names) + 1
    by_name = {e.name: e.attr for e in entries}
    assert by_name[b"sub"].ino == sub.ino and by_name[b"sub"].is_dir
    assert all(by_name[n].ino == ino and by_name[n].is_file for n, ino in made.items())
    # the names-only listing: the same entries, in the same order, without attributes
    assert m.dir_names(d.ino) == [(e.name, e.attr.ino) for e in m.readdir(d.ino)]
    assert m.dir_names(sub.ino) == []
    raises(errno.ENOTDIR, m.dir_names, made[b"entry-00000"])
    raises(errno.ENOENT, m.dir_names, 999_999)
    assert_consistent(m)


# -- rename -----------------------------------------------------------------------------------
def check_rename_basic(m: Meta) -> None:
    a = m.mkdir(ROOT, b"a", 0o755, 0, 0)
    b = m.mkdir(ROOT, b"b", 0o755, 0, 0)
    f = mkfile(m, a.ino, b"f")
    time.sleep(0.002)
    m.rename(a.ino, b"f", b.ino, b"g")
    raises(errno.ENOENT, m.lookup, a.ino, b"f")
    moved = m.lookup(b.ino, b"g")
    assert moved.ino == f.ino and moved.ctime_ns > f.ctime_ns
    assert m.getattr(a.ino).mtime_ns > a.mtime_ns and m.getattr(b.ino).mtime_ns > b.mtime_ns
    # within one directory
    m.rename(b.ino, b"g", b.ino, b"h")
    assert m.lookup(b.ino, b"h").ino == f.ino
    # a directory across parents: nlink and parent follow
    sub = m.mkdir(a.ino, b"sub", 0o755, 0, 0)
    mkfile(m, sub.ino, b"inner")
    m.rename(a.ino, b"sub", b.ino, b"sub2")
    assert m.getattr(a.ino).nlink == 2 and m.getattr(b.ino).nlink == 3
    assert m.getattr(sub.ino).parent == b.ino
    assert m.lookup(sub.ino, b"..").ino == b.ino
    # same entry and missing source
    m.rename(b.ino, b"h", b.ino, b"h")
    assert m.lookup(b.ino, b"h").ino == f.ino
    raises(errno.ENOENT, m.rename, a.ino, b"missing", b.ino, b"x")
    raises(errno.ENOENT, m.rename, a.ino, b"x", 999_999, b"x")
    raises(errno.ENOTDIR, m.rename, b.ino, b"h", f.ino, b"x")
    raises(errno.EINVAL, m.rename, b.ino, b".", a.ino, b"x")
    raises(errno.EINVAL, m.rename, b.ino, b"h", a.ino, b"..")
    raises(errno.ENAMETOOLONG, m.rename, b.ino, b"h", a.ino, b"x" * 256)
    raises(errno.EINVAL, m.rename, b.ino, b"h", a.ino, b"x", RENAME_NOREPLACE | RENAME_EXCHANGE)
    assert_consistent(m)


def check_rename_replace(m: Meta) -> None:
    src = mkfile(m, ROOT, b"src")
    dst = mkfile(m, ROOT, b"dst")
    _, piece = write(m, dst.ino, 0, 5000)
    write(m, src.ino, 0, 100)
    m.rename(ROOT, b"src", ROOT, b"dst")
    assert m.lookup(ROOT, b"dst").ino == src.ino
    raises(errno.ENOENT, m.getattr, dst.ino)
    assert drain_garbage(m) == {(piece.id, piece.size)}
    assert used_bytes(m) == 100
    # replacing a file that has another link only drops that link
    other = mkfile(m, ROOT, b"other")
    m.link(other.ino, ROOT, b"other2")
    m.rename(ROOT, b"dst", ROOT, b"other")
    assert m.getattr(other.ino).nlink == 1
    # hard links of one inode: rename is a no-op and both names stay
    m.link(other.ino, ROOT, b"other3")
    m.rename(ROOT, b"other2", ROOT, b"other3")
    assert m.lookup(ROOT, b"other2").ino == m.lookup(ROOT, b"other3").ino == other.ino
    # directories
    d1 = m.mkdir(ROOT, b"d1", 0o755, 0, 0)
    d2 = m.mkdir(ROOT, b"d2", 0o755, 0, 0)
    m.mkdir(d1.ino, b"child", 0o755, 0, 0)
    m.rename(ROOT, b"d1", ROOT, b"d2")  # replace an empty dir
    raises(errno.ENOENT, m.getattr, d2.ino)
    assert m.lookup(ROOT, b"d2").ino == d1.ino and m.getattr(ROOT).nlink == 3
    d3 = m.mkdir(ROOT, b"d3", 0o755, 0, 0)
    mkfile(m, d3.ino, b"x")
    raises(errno.ENOTEMPTY, m.rename, ROOT, b"d2", ROOT, b"d3")
    raises(errno.ENOTDIR, m.rename, ROOT, b"d2", ROOT, b"other")
    raises(errno.EISDIR, m.rename, ROOT, b"other", ROOT, b"d2")
    # a dir replacing an empty dir in another parent
    e = m.mkdir(d3.ino, b"empty", 0o755, 0, 0)
    m.rename(ROOT, b"d2", d3.ino, b"empty")
    raises(errno.ENOENT, m.getattr, e.ino)
    assert m.getattr(d1.ino).parent == d3.ino
    assert m.getattr(d3.ino).nlink == 3 and m.getattr(ROOT).nlink == 3
    assert_consistent(m)


def check_rename_into_own_subtree(m: Meta) -> None:
    a = m.mkdir(ROOT, b"a", 0o755, 0, 0)
    b = m.mkdir(a.ino, b"b", 0o755, 0, 0)
    c = m.mkdir(b.ino, b"c", 0o755, 0, 0)
    raises(errno.EINVAL, m.rename, ROOT, b"a", c.ino, b"a")
    raises(errno.EINVAL, m.rename, ROOT, b"a", a.ino, b"a")
    raises(errno.EINVAL, m.rename, a.ino, b"b", b.ino, b"x")
    x = m.mkdir(ROOT, b"x", 0o755, 0, 0)
    mkfile(m, c.ino, b"y")
    raises(errno.EINVAL, m.rename, ROOT, b"a", c.ino, b"y", RENAME_EXCHANGE)
    raises(errno.EINVAL, m.rename, c.ino, b"y", ROOT, b"a", RENAME_EXCHANGE)
    m.rename(b.ino, b"c", ROOT, b"c")  # moving up is fine
    assert m.getattr(c.ino).parent == ROOT and m.getattr(x.ino).parent == ROOT
    assert_consistent(m)


def check_rename_noreplace(m: Meta) -> None:
    mkfile(m, ROOT, b"a")
    b = mkfile(m, ROOT, b"b")
    raises(errno.EEXIST, m.rename, ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE)
    assert m.lookup(ROOT, b"b").ino == b.ino
    m.rename(ROOT, b"a", ROOT, b"c", RENAME_NOREPLACE)
    raises(errno.ENOENT, m.lookup, ROOT, b"a")
    assert_consistent(m)


def check_rename_exchange(m: Meta) -> None:
    a = m.mkdir(ROOT, b"a", 0o755, 0, 0)
    b = m.mkdir(ROOT, b"b", 0o755, 0, 0)
    f = mkfile(m, a.ino, b"f")
    g = mkfile(m, b.ino, b"g")
    m.rename(a.ino, b"f", b.ino, b"g", RENAME_EXCHANGE)
    assert m.lookup(a.ino, b"f").ino == g.ino and m.lookup(b.ino, b"g").ino == f.ino
    assert m.getattr(f.ino).parent == b.ino and m.getattr(g.ino).parent == a.ino
    raises(errno.ENOENT, m.rename, a.ino, b"f", b.ino, b"missing", RENAME_EXCHANGE)
    # a directory with a file across parents: the nlinks move
    sub = m.mkdir(a.ino, b"sub", 0o755, 0, 0)
    assert m.getattr(a.ino).nlink == 3
    m.rename(a.ino, b"sub", b.ino, b"g", RENAME_EXCHANGE)
    assert m.lookup(b.ino, b"g").ino == sub.ino and m.lookup(a.ino, b"sub").ino == f.ino
    assert m.getattr(a.ino).nlink == 2 and m.getattr(b.ino).nlink == 3
    assert m.getattr(sub.ino).parent == b.ino
    # two directories in one parent
    m.rename(ROOT, b"a", ROOT, b"b", RENAME_EXCHANGE)
    assert m.lookup(ROOT, b"a").ino == b.ino and m.lookup(ROOT, b"b").ino == a.ino
    assert_consistent(m)


# -- attributes -------------------------------------------------------------------------------
def check_setattr(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    time.sleep(0.002)
    a = m.setattr(f.ino, SetAttr(mode=0o4751 | stat.S_IFDIR))  # type bits are ignored
    assert a.mode == stat.S_IFREG | 0o4751 and a.ctime_ns > f.ctime_ns and a.mtime_ns == f.mtime_ns
    a = m.setattr(f.ino, SetAttr(uid=42, gid=43))
    assert (a.uid, a.gid) == (42, 43)
    a = m.setattr(f.ino, SetAttr(atime_ns=-5_000_000_123, mtime_ns=1_700_000_000_123_456_789))
    assert a.atime_ns == -5_000_000_123 and a.mtime_ns == 1_700_000_000_123_456_789
    before = time.time_ns()
    a = m.setattr(f.ino, SetAttr(atime_now=True, mtime_now=True))
    assert a.atime_ns >= before and a.mtime_ns >= before and a.atime_ns == a.mtime_ns
    assert m.getattr(f.ino) == a
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    assert m.setattr(d.ino, SetAttr(mode=0o700)).mode == stat.S_IFDIR | 0o700
    raises(errno.EISDIR, m.setattr, d.ino, SetAttr(size=0))
    s = m.symlink(ROOT, b"s", b"t", 0, 0)
    raises(errno.EINVAL, m.setattr, s.ino, SetAttr(size=0))
    raises(errno.ENOENT, m.setattr, 999_999, SetAttr(mode=0o600))


def check_xattrs(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    raises(errno.ENODATA, m.getxattr, f.ino, b"user.a")
    assert m.listxattr(f.ino) == []
    time.sleep(0.002)
    m.setxattr(f.ino, b"user.a", b"\x00binary\xff")
    assert m.getattr(f.ino).ctime_ns > f.ctime_ns
    assert m.getxattr(f.ino, b"user.a") == b"\x00binary\xff"
    raises(errno.EEXIST, m.setxattr, f.ino, b"user.a", b"x", XATTR_CREATE)
    raises(errno.ENODATA, m.setxattr, f.ino, b"user.b", b"x", XATTR_REPLACE)
    m.setxattr(f.ino, b"user.a", b"new", XATTR_REPLACE)
    m.setxattr(f.ino, b"user.b", b"", XATTR_CREATE)
    assert m.getxattr(f.ino, b"user.a") == b"new" and m.getxattr(f.ino, b"user.b") == b""
    assert sorted(m.listxattr(f.ino)) == [b"user.a", b"user.b"]
    m.removexattr(f.ino, b"user.a")
    raises(errno.ENODATA, m.removexattr, f.ino, b"user.a")
    raises(errno.ENODATA, m.getxattr, f.ino, b"user.a")
    raises(errno.ERANGE, m.setxattr, f.ino, b"u" * 256, b"x")
    raises(errno.ERANGE, m.getxattr, f.ino, b"u" * 256)
    m.setxattr(f.ino, b"u" * 255, b"x")
    for fn, args in ((m.getxattr, (b"user.b",)), (m.setxattr, (b"user.b", b"x")),
                     (m.listxattr, ()), (m.removexattr, (b"user.b",))):
        raises(errno.ENOENT, fn, 999_999, *args)
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    m.setxattr(d.ino, b"user.dir", b"1")
    assert m.getxattr(d.ino, b"user.dir") == b"1"
    m.unlink(ROOT, b"f")
    raises(errno.ENOENT, m.listxattr, f.ino)


# -- file data --------------------------------------------------------------------------------
def check_write_read(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    assert m.read(f.ino, 0) == []
    a1, s1 = write(m, f.ino, 0, 1000)
    assert a1.size == 1000 and a1.mtime_ns >= f.mtime_ns
    a2, s2 = write(m, f.ino, 500, 100)  # inside: no growth
    assert a2.size == 1000
    assert m.read(f.ino, 0) == [s1, s2]
    mtime = 1_234_567_890_123_456_789
    a3 = m.write(f.ino, 0, Slice(2000, m.reserve_slice_ids(1), 300, 100, 200), mtime)
    assert a3.size == 2200 and a3.mtime_ns == mtime == a3.ctime_ns
    assert m.getattr(f.ino) == a3
    assert used_bytes(m) == 2200
    raises(errno.ENOENT, m.write, 999_999, 0, s1, mtime)
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    raises(errno.EISDIR, m.write, d.ino, 0, s1, mtime)
    raises(errno.EINVAL, m.write, f.ino, 0, Slice(CHUNK_SIZE - 10, 9, 20, 0, 20), mtime)
    assert_consistent(m)


def check_sparse_large_file(m: Meta) -> None:
    f = mkfile(m, ROOT, b"big")
    five_gib = 5 << 30
    a, piece = write(m, f.ino, five_gib + 4096, 4096)
    assert a.size == five_gib + 8192
    index = (five_gib + 4096) // CHUNK_SIZE
    assert m.read(f.ino, index) == [piece]
    assert m.read(f.ino, 0) == []
    assert m.setattr(f.ino, SetAttr(size=6 << 40)).size == 6 << 40  # sparse growth, 6 TiB
    assert m.getattr(f.ino).size == 6 << 40
    assert used_bytes(m) == 6 << 40
    m.setattr(f.ino, SetAttr(size=five_gib))
    assert m.read(f.ino, index) == []
    assert drain_garbage(m) == {(piece.id, piece.size)}
    assert_consistent(m)


def check_truncate(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    _, s0 = write(m, f.ino, 0, 1 << 20)
    _, s1 = write(m, f.ino, CHUNK_SIZE, 1 << 20)
    _, s2 = write(m, f.ino, 2 * CHUNK_SIZE, 1 << 20)
    # shrink into chunk 1: chunk 2 goes, chunk 1 gets a hole from the new end
    time.sleep(0.002)
    new_size = CHUNK_SIZE + 1000
    a = m.setattr(f.ino, SetAttr(size=new_size))
    assert a.size == new_size and a.mtime_ns > f.mtime_ns
    assert m.read(f.ino, 2) == []
    hole = Slice(1000, 0, CHUNK_SIZE - 1000, 0, CHUNK_SIZE - 1000)
    assert m.read(f.ino, 1) == [s1, hole]
    assert m.read(f.ino, 0) == [s0]
    assert drain_garbage(m) == {(s2.id, s2.size)}
    # shrink to a chunk boundary: no hole needed, whole chunk 1 is garbage
    m.setattr(f.ino, SetAttr(size=CHUNK_SIZE))
    assert m.read(f.ino, 1) == []
    assert drain_garbage(m) == {(s1.id, s1.size)}
    # growth only sets the length
    a = m.setattr(f.ino, SetAttr(size=3 * CHUNK_SIZE))
    assert a.size == 3 * CHUNK_SIZE and m.read(f.ino, 0) == [s0] and m.read(f.ino, 2) == []
    assert used_bytes(m) == 3 * CHUNK_SIZE
    m.setattr(f.ino, SetAttr(size=0))
    assert m.read(f.ino, 0) == [] and drain_garbage(m) == {(s0.id, s0.size)}
    assert used_bytes(m) == 0
    raises(errno.EINVAL, m.setattr, f.ino, SetAttr(size=-1))
    assert_consistent(m)


def check_reserve_slice_ids(m: Meta) -> None:
    first = m.reserve_slice_ids(10)
    assert first >= 1
    assert m.reserve_slice_ids(1) == first + 10
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(50):
            start = m.reserve_slice_ids(3)
            with lock:
                got.extend(range(start, start + 3))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 600 and min(got) > first + 10


def check_compact(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    _, s1 = write(m, f.ino, 0, 100)
    _, s2 = write(m, f.ino, 50, 100)
    _, s3 = write(m, f.ino, 300, 10)
    new = Slice(0, m.reserve_slice_ids(1), 150, 0, 150)
    assert not m.compact(f.ino, 0, [s2, s1], new), "prefix mismatch must not apply"
    assert not m.compact(f.ino, 0, [s1, s2, s3, s3], new)
    assert m.read(f.ino, 0) == [s1, s2, s3]
    assert m.compact(f.ino, 0, [s1, s2], new)
    assert m.read(f.ino, 0) == [new, s3]
    assert drain_garbage(m) == {(s1.id, s1.size), (s2.id, s2.size)}
    assert m.compact(f.ino, 0, [s1, s2], new), "a repeat (a lost reply) reports what happened"
    assert m.read(f.ino, 0) == [new, s3] and drain_garbage(m) == set()
    # a slice referenced twice is garbage only when no reference is left
    _, s4 = write(m, f.ino, 400, 10)
    m.write(f.ino, 0, Slice(500, s4.id, s4.size, 0, 5), time.time_ns())
    new2 = Slice(0, m.reserve_slice_ids(1), 410, 0, 410)
    assert m.compact(f.ino, 0, [new, s3, s4], new2)
    assert drain_garbage(m) == {(new.id, new.size), (s3.id, s3.size)}
    assert m.getattr(f.ino).size == 505


def check_garbage_listing(m: Meta) -> None:
    f = mkfile(m, ROOT, b"f")
    pieces = [write(m, f.ino, i * CHUNK_SIZE, 10)[1] for i in range(300)]  # > one expansion budget
    m.unlink(ROOT, b"f")
    first = m.take_garbage(100)
    again = m.take_garbage(100)
    assert first and again and not set(first) & set(again), "a taken item goes to one collector"
    m.ack_garbage(first)
    m.ack_garbage(again)
    rest = drain_garbage(m)
    assert rest | set(first) | set(again) == {(p.id, p.size) for p in pieces}
    assert m.take_garbage(10) == []
    m.ack_garbage([])
    assert m.take_garbage(0) == []


def check_garbage_is_delayed(m: Meta) -> None:
    """Dropped slices keep their objects for the garbage delay: a client may still hold a
    slice list naming them. A collector that died leaves its items to the next one."""
    if not hasattr(m, "garbage_delay"):
        return
    m.garbage_delay, m.garbage_lease = 0.6, 0.4  # type: ignore[attr-defined]
    f = mkfile(m, ROOT, b"f")
    _, piece = write(m, f.ino, 0, 10)
    m.setattr(f.ino, SetAttr(size=0))
    assert m.take_garbage(10) == [], "too early"
    time.sleep(0.7)
    assert m.take_garbage(10) == [(piece.id, piece.size)]
    assert m.take_garbage(10) == [], "taken: hidden from others"
    time.sleep(0.5)
    assert m.take_garbage(10) == [(piece.id, piece.size)], "never acknowledged: handed out again"
    m.ack_garbage([(piece.id, piece.size)])
    time.sleep(0.5)
    assert m.take_garbage(10) == []


# -- limits -----------------------------------------------------------------------------------
def check_capacity(m: Meta) -> None:
    m.format(VolumeSettings(**{**SETTINGS.__dict__, "capacity": 10_000}), force=True)
    st = m.statfs()
    assert st.total_bytes == 10_000 and st.avail_bytes == 10_000
    f = mkfile(m, ROOT, b"f")
    write(m, f.ino, 0, 6000)
    assert m.statfs().avail_bytes == 4000
    raises(errno.ENOSPC, write, m, f.ino, 6000, 4001)
    write(m, f.ino, 0, 6000)  # overwriting inside the file needs no space
    raises(errno.ENOSPC, m.setattr, f.ino, SetAttr(size=10_001))
    assert m.setattr(f.ino, SetAttr(size=10_000)).size == 10_000
    assert m.statfs().avail_bytes == 0
    m.setattr(f.ino, SetAttr(size=100))
    assert m.statfs().avail_bytes == 9_900
    m.unlink(ROOT, b"f")
    assert m.statfs().avail_bytes == 10_000
    assert_consistent(m)


def check_inode_limit(m: Meta) -> None:
    m.format(VolumeSettings(**{**SETTINGS.__dict__, "inodes": 3}), force=True)
    st = m.statfs()
    assert st.used_inodes == 0 and st.avail_inodes == 3
    mkfile(m, ROOT, b"a")
    m.mkdir(ROOT, b"b", 0o755, 0, 0)
    m.symlink(ROOT, b"c", b"t", 0, 0)
    raises(errno.ENOSPC, mkfile, m, ROOT, b"d")
    raises(errno.ENOSPC, m.mkdir, ROOT, b"d", 0o755, 0, 0)
    assert m.statfs().avail_inodes == 0
    m.link(m.lookup(ROOT, b"a").ino, ROOT, b"hard")  # a link is no new inode
    m.unlink(ROOT, b"c")
    mkfile(m, ROOT, b"d")
    assert m.statfs().used_inodes == 3
    assert_consistent(m)


# -- sessions and open files ------------------------------------------------------------------
def check_sessions(m: Meta) -> None:
    assert m.list_sessions() == []
    before = time.time()
    sid = m.new_session("host-a", 1234, "/mnt/a", "0.1.0")
    other = m.new_session("host-b", 99, "/mnt/b", "0.2.0")
    assert sid != other
    by_id = {s.sid: s for s in m.list_sessions()}
    s = by_id[sid]
    assert (s.host, s.pid, s.mountpoint, s.version) == ("host-a", 1234, "/mnt/a", "0.1.0")
    assert abs(s.started - before) < 5 and abs(s.heartbeat - before) < 5
    time.sleep(1.2)
    m.heartbeat(sid)
    beats = {s.sid: s.heartbeat for s in m.list_sessions()}
    assert beats[sid] > beats[other]
    assert m.clean_stale_sessions(60) == 0
    assert m.clean_stale_sessions(0.6) == 1, "only the session without a recent heartbeat"
    assert [s.sid for s in m.list_sessions()] == [sid]
    m.close_session(sid)
    assert m.list_sessions() == []


def check_open_unlinked_file(m: Meta) -> None:
    m.new_session("h", 1, "/mnt", "v")
    f = mkfile(m, ROOT, b"f")
    _, piece = write(m, f.ino, 0, 500)
    assert m.open(f.ino) == m.getattr(f.ino)
    m.open(f.ino)  # two handles
    m.unlink(ROOT, b"f")
    raises(errno.ENOENT, m.lookup, ROOT, b"f")
    kept = m.getattr(f.ino)
    assert kept.nlink == 0 and kept.size == 500
    assert m.read(f.ino, 0) == [piece]
    _, piece2 = write(m, f.ino, 500, 500)  # still writable
    assert drain_garbage(m) == set()
    raises(errno.ENOENT, m.link, f.ino, ROOT, b"back")
    assert m.statfs().used_inodes == 1 and used_bytes(m) == 1000
    close(m, f.ino)
    assert m.getattr(f.ino).nlink == 0, "one handle is still open"
    close(m, f.ino)
    raises(errno.ENOENT, m.getattr, f.ino)
    assert drain_garbage(m) == {(piece.id, piece.size), (piece2.id, piece2.size)}
    assert_consistent(m)
    # a closed file is freed at once; releasing an unknown inode is harmless
    g = mkfile(m, ROOT, b"g")
    m.open(g.ino)
    close(m, g.ino)
    m.unlink(ROOT, b"g")
    raises(errno.ENOENT, m.getattr, g.ino)
    close(m, 12345)
    raises(errno.ENOENT, m.open, g.ino)
    assert_consistent(m)


def check_many_open_files(m: Meta) -> None:
    """Unlinking with few and with very many files open: open ones are kept, others go."""
    m.new_session("h", 1, "/mnt", "v")
    for count in (3, 300):
        files = [mkfile(m, ROOT, f"f{count}-{i}".encode()).ino for i in range(count)]
        held = files[: count // 2]
        for ino in held:
            m.open(ino)
        for i in range(count):
            m.unlink(ROOT, f"f{count}-{i}".encode())
        for ino in files:
            if ino in held:
                assert m.getattr(ino).nlink == 0
            else:
                raises(errno.ENOENT, m.getattr, ino)
        for ino in held:
            close(m, ino)
            raises(errno.ENOENT, m.getattr, ino)
    assert_consistent(m)


def check_open_races_unlink(m: Meta) -> None:
    """A thread opening files while another unlinks them: every successful open leaves an
    inode readable until its release, and nothing stays behind afterwards."""
    m.new_session("h", 1, "/mnt", "v")
    names = [f"r{i}".encode() for i in range(300)]
    inos = [mkfile(m, ROOT, n).ino for n in names]
    opened: list[int] = []

    def work(i: int) -> None:
        if i == 0:
            for n in names:
                m.unlink(ROOT, n)
        else:
            for ino in inos[i - 1::3]:
                try:
                    m.open(ino)
                except FsError as exc:
                    assert exc.errno == errno.ENOENT
                    continue
                assert m.getattr(ino).ino == ino
                opened.append(ino)

    _run_threads(4, work)
    for ino in opened:
        assert m.getattr(ino).nlink == 0
        close(m, ino)
    for ino in inos:
        raises(errno.ENOENT, m.getattr, ino)
    assert_consistent(m)


def check_open_file_replaced_by_rename(m: Meta) -> None:
    m.new_session("h", 1, "/mnt", "v")
    victim = mkfile(m, ROOT, b"victim")
    _, piece = write(m, victim.ino, 0, 10)
    mkfile(m, ROOT, b"new")
    m.open(victim.ino)
    m.rename(ROOT, b"new", ROOT, b"victim")
    assert m.getattr(victim.ino).nlink == 0
    close(m, victim.ino)
    raises(errno.ENOENT, m.getattr, victim.ino)
    assert drain_garbage(m) == {(piece.id, piece.size)}
    assert_consistent(m)


def check_crashed_session_frees_kept_files(m: Meta) -> None:
    sid = m.new_session("h", 1, "/mnt", "v")
    f = mkfile(m, ROOT, b"f")
    _, piece = write(m, f.ino, 0, 10)
    m.open(f.ino)
    m.unlink(ROOT, b"f")
    assert m.getattr(f.ino).nlink == 0
    time.sleep(0.2)
    # The session stops heartbeating (its client died): another cleaner closes it.
    assert m.clean_stale_sessions(0.1) == 1
    raises(errno.ENOENT, m.getattr, f.ino)
    assert drain_garbage(m) == {(piece.id, piece.size)}
    assert sid not in {s.sid for s in m.list_sessions()}
    close(m, f.ino)  # the dead session's handle goes away quietly
    assert_consistent(m)


def check_close_session_frees_kept_files(m: Meta) -> None:
    sid = m.new_session("h", 1, "/mnt", "v")
    f = mkfile(m, ROOT, b"f")
    m.open(f.ino)
    m.unlink(ROOT, b"f")
    m.close_session(sid)
    raises(errno.ENOENT, m.getattr, f.ino)
    assert_consistent(m)


# -- quotas -----------------------------------------------------------------------------------
def check_quota_usage_and_limits(m: Meta) -> None:
    d = m.mkdir(ROOT, b"q", 0o755, 0, 0)
    sub = m.mkdir(d.ino, b"sub", 0o755, 0, 0)
    f = mkfile(m, sub.ino, b"f")
    write(m, f.ino, 0, 1000)
    mkfile(m, ROOT, b"outside")
    assert m.get_quota(d.ino) is None
    m.set_quota(d.ino, 5000, 4)
    q = m.get_quota(d.ino)
    assert q is not None and (q.max_bytes, q.max_inodes, q.used_bytes, q.used_inodes) == (5000, 4, 1000, 2)
    g = mkfile(m, d.ino, b"g")
    write(m, g.ino, 0, 3000)
    q = m.get_quota(d.ino)
    assert q is not None and (q.used_bytes, q.used_inodes) == (4000, 3)
    raises(errno.EDQUOT, write, m, g.ino, 3000, 1001)
    raises(errno.EDQUOT, m.setattr, g.ino, SetAttr(size=4001))
    m.setattr(g.ino, SetAttr(size=4000))
    m.symlink(sub.ino, b"s", b"t", 0, 0)
    raises(errno.EDQUOT, mkfile, m, sub.ino, b"x")
    raises(errno.EDQUOT, m.mkdir, d.ino, b"x", 0o755, 0, 0)
    mkfile(m, ROOT, b"free")  # outside the quota tree
    st = m.statfs(sub.ino)
    assert st.total_bytes == 5000 and st.avail_bytes == 0 and st.avail_inodes == 0 and st.used_inodes == 4
    assert m.statfs(f.ino) == st, "a file's statfs uses its directory's quota"
    assert m.statfs(ROOT).total_bytes > 5000
    m.unlink(d.ino, b"g")
    q = m.get_quota(d.ino)
    assert q is not None and (q.used_bytes, q.used_inodes) == (1000, 3)
    mkfile(m, sub.ino, b"x")
    m.set_quota(d.ino, 0, 0)  # unlimited but still counted
    q = m.get_quota(d.ino)
    assert q is not None and (q.used_bytes, q.used_inodes) == (1000, 4)
    mkfile(m, d.ino, b"y")
    m.del_quota(d.ino)
    assert m.get_quota(d.ino) is None
    mkfile(m, d.ino, b"z")
    raises(errno.ENOTDIR, m.set_quota, f.ino, 1, 1)
    raises(errno.ENOENT, m.set_quota, 999_999, 1, 1)
    assert_consistent(m)


def check_quota_nested_and_rename(m: Meta) -> None:
    outer = m.mkdir(ROOT, b"outer", 0o755, 0, 0)
    inner = m.mkdir(outer.ino, b"inner", 0o755, 0, 0)
    other = m.mkdir(ROOT, b"other", 0o755, 0, 0)
    m.set_quota(outer.ino, 0, 100)
    m.set_quota(inner.ino, 10_000, 0)
    f = mkfile(m, inner.ino, b"f")
    write(m, f.ino, 0, 2000)

    def usage(ino: int) -> tuple[int, int]:
        q = m.get_quota(ino)
        assert q is not None
        return q.used_bytes, q.used_inodes

    assert usage(outer.ino) == (2000, 2) and usage(inner.ino) == (2000, 1)
    # a file moving out of both quota trees takes its usage along
    m.rename(inner.ino, b"f", other.ino, b"f")
    assert usage(outer.ino) == (0, 1) and usage(inner.ino) == (0, 0)
    # a directory tree moving in
    tree = m.mkdir(other.ino, b"tree", 0o755, 0, 0)
    t1 = mkfile(m, tree.ino, b"t1")
    write(m, t1.ino, 0, 300)
    m.mkdir(tree.ino, b"t2", 0o755, 0, 0)
    m.rename(other.ino, b"tree", inner.ino, b"tree")
    assert usage(outer.ino) == (300, 4) and usage(inner.ino) == (300, 3)
    # moving between directories of the same quota changes nothing
    m.rename(inner.ino, b"tree", outer.ino, b"tree")
    assert usage(outer.ino) == (300, 4) and usage(inner.ino) == (0, 0)
    # exchange across quota trees swaps the usage
    m.rename(outer.ino, b"tree", other.ino, b"f", RENAME_EXCHANGE)
    assert usage(outer.ino) == (2000, 2)
    # a move that would exceed the target's quota is refused
    big = mkfile(m, other.ino, b"big")
    write(m, big.ino, 0, 20_000)
    raises(errno.EDQUOT, m.rename, other.ino, b"big", inner.ino, b"big")
    assert m.lookup(other.ino, b"big").ino == big.ino
    # removing a quota dir drops its quota
    m.rename(outer.ino, b"inner", ROOT, b"inner")
    m.rmdir(ROOT, b"inner")
    assert m.get_quota(inner.ino) is None
    assert_consistent(m)


def check_quota_counts_match_walk(m: Meta) -> None:
    """After random namespace churn the maintained usage equals a fresh count."""
    rng = random.Random(7)
    q = m.mkdir(ROOT, b"q", 0o755, 0, 0)
    m.set_quota(q.ino, 0, 0)
    dirs = [ROOT, q.ino]
    files: list[tuple[int, bytes]] = []
    for i in range(300):
        op = rng.random()
        parent = rng.choice(dirs)
        name = f"n{i}".encode()
        if op < 0.25:
            dirs.append(m.mkdir(parent, name, 0o755, 0, 0).ino)
        elif op < 0.6 or not files:
            a = mkfile(m, parent, name)
            write(m, a.ino, 0, rng.randrange(1, 5000))
            files.append((parent, name))
        elif op < 0.8:
            old_parent, old_name = files.pop(rng.randrange(len(files)))
            try:
                m.rename(old_parent, old_name, parent, name)
                files.append((parent, name))
            except FsError as exc:
                assert exc.errno == errno.EINVAL
                files.append((old_parent, old_name))
        else:
            p, n = files.pop(rng.randrange(len(files)))
            m.unlink(p, n)
    counted = m.get_quota(q.ino)
    m.set_quota(q.ino, 0, 0)  # recounts from the tree
    assert counted == m.get_quota(q.ino)
    assert_consistent(m)


# -- concurrency ------------------------------------------------------------------------------
def _run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def check_concurrent_creates(m: Meta) -> None:
    d = m.mkdir(ROOT, b"shared", 0o755, 0, 0)

    def work(i: int) -> None:
        for j in range(100):
            if j % 10 == 0:
                m.mkdir(d.ino, f"d-{i}-{j}".encode(), 0o755, 0, 0)
            else:
                a = mkfile(m, d.ino, f"f-{i}-{j}".encode())
                write(m, a.ino, 0, 10)

    _run_threads(8, work)
    entries = m.readdir(d.ino)
    assert len(entries) == 800
    assert len({e.attr.ino for e in entries}) == 800
    assert m.getattr(d.ino).nlink == 2 + 80
    assert used_bytes(m) == 720 * 10
    assert_consistent(m)


def check_concurrent_same_name(m: Meta) -> None:
    """Many threads race to create one name: exactly one wins per round."""
    wins: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for r in range(30):
            try:
                a = mkfile(m, ROOT, f"race-{r}".encode())
            except FsError as exc:
                assert exc.errno == errno.EEXIST
                continue
            with lock:
                wins.append(a.ino)

    _run_threads(6, work)
    assert len(wins) == 30
    assert_consistent(m)


def check_concurrent_conflicting_renames(m: Meta) -> None:
    """Threads move directories into each other at random; loops must be refused and the
    tree must stay a tree with exact link counts."""
    dirs = [m.mkdir(ROOT, f"d{i}".encode(), 0o755, 0, 0).ino for i in range(6)]
    names = {ino: f"d{i}".encode() for i, ino in enumerate(dirs)}
    for ino in dirs:
        mkfile(m, ino, b"payload")

    def where(ino: int) -> int:
        return m.getattr(ino).parent

    def work(i: int) -> None:
        rng = random.Random(i)
        for _ in range(60):
            src, dst = rng.sample(dirs, 2)
            target = rng.choice([dst, ROOT])
            try:
                m.rename(where(src), names[src], target, names[src])
            except FsError as exc:
                assert exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST), exc

    _run_threads(6, work)
    assert_consistent(m)
    for ino in dirs:
        assert m.lookup(ino, b"payload")


# -- helpers for engine-specific tests --------------------------------------------------------
def sample_workload(m: Meta) -> None:
    """A bit of everything, leaving keys of every kind behind (for key-schema tests)."""
    sid = m.new_session("h", 1, "/m", "v")
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    f = mkfile(m, d.ino, b"f")
    write(m, f.ino, 0, 100)
    write(m, f.ino, 70 << 20, 100)
    m.symlink(d.ino, b"s", b"target", 0, 0)
    m.setxattr(f.ino, b"user.x", b"1")
    m.set_quota(d.ino, 1 << 30, 100)
    g = mkfile(m, d.ino, b"g")
    write(m, g.ino, 0, 10)
    m.open(g.ino)
    m.unlink(d.ino, b"g")  # kept for the session
    h = mkfile(m, ROOT, b"h")
    write(m, h.ino, 0, 10)
    m.unlink(ROOT, b"h")  # a deleted file awaiting garbage expansion
    m.heartbeat(sid)



# -- trash ------------------------------------------------------------------------------------
def _trash_entries(m: Meta) -> list[tuple[bytes, bytes, Attr]]:
    """(hour directory, entry name, attributes) of everything in the trash."""
    out = []
    for hour in m.readdir(TRASH_INO):
        out.extend((hour.name, e.name, e.attr) for e in m.readdir(hour.attr.ino))
    return out


def check_trash(m: Meta) -> None:
    """With a trash, the last link of a file (by unlink or by rename over it) moves it to
    /.trash/<hour>/<parent>-<ino>-<name> with nlink 0; rename restores it; unlink inside the
    trash deletes for good; nothing else can enter the trash."""
    m.trash_days = 1
    d = m.mkdir(ROOT, b"d", 0o755, 0, 0)
    f = mkfile(m, d.ino, b"f")
    _, piece = write(m, f.ino, 0, 100)
    g = mkfile(m, ROOT, b"g")
    link = m.link(g.ino, ROOT, b"g2")
    assert link.nlink == 2
    m.unlink(ROOT, b"g2")
    assert m.getattr(g.ino).nlink == 1 and _trash_entries(m) == [], "not the last link: no trash"
    root_before = m.getattr(ROOT)
    m.unlink(d.ino, b"f")
    old_victim = mkfile(m, ROOT, b"victim")
    m.rename(ROOT, b"g", ROOT, b"victim")  # the old /victim goes to the trash
    trashed = {name: (hour, attr) for hour, name, attr in _trash_entries(m)}
    assert set(trashed) == {f"{d.ino}-{f.ino}-f".encode(), f"{ROOT}-{old_victim.ino}-victim".encode()}
    hour, kept = trashed[f"{d.ino}-{f.ino}-f".encode()]
    assert kept.nlink == 0 and kept.size == 100, "no link left in the user's tree"
    assert m.read(f.ino, 0) == [piece] and drain_garbage(m) == set()
    assert m.getattr(ROOT).nlink == root_before.nlink, "the trash is not a subdirectory of the root"
    assert TRASH_NAME not in {e.name for e in m.readdir(ROOT)}
    assert m.lookup(ROOT, TRASH_NAME).ino == TRASH_INO
    hour_ino = m.lookup(TRASH_INO, hour).ino
    # Nothing enters the trash but by deletion.
    raises(errno.EPERM, m.mknod, hour_ino, b"new", FILE, 0, 0)
    raises(errno.EPERM, m.mkdir, TRASH_INO, b"new", 0o755, 0, 0)
    raises(errno.EPERM, m.rename, ROOT, b"victim", hour_ino, b"x")
    raises(errno.EPERM, m.link, m.lookup(ROOT, b"victim").ino, hour_ino, b"x")
    raises(errno.EEXIST, m.mkdir, ROOT, TRASH_NAME, 0o755, 0, 0)
    for call in (m.rmdir, m.unlink):
        raises(errno.EPERM, call, ROOT, TRASH_NAME)
    raises(errno.EPERM, m.rename, ROOT, TRASH_NAME, ROOT, b"elsewhere")
    # Restore by rename: one link again, usage charged where it lands.
    m.rename(hour_ino, f"{d.ino}-{f.ino}-f".encode(), d.ino, b"back")
    back = m.getattr(f.ino)
    assert back.nlink == 1 and back.parent == d.ino and m.read(f.ino, 0) == [piece]
    # Deleting from the trash is for good.
    m.unlink(hour_ino, f"{ROOT}-{old_victim.ino}-victim".encode())
    raises(errno.ENOENT, m.getattr, old_victim.ino)
    m.trash_days = 0
    assert_consistent(m)


def check_trash_purge(m: Meta) -> None:
    """The janitor's purge deletes hour directories older than trash_days, with their files."""
    from fusecache.meta.trash import purge_expired

    m.trash_days = 1
    f = mkfile(m, ROOT, b"old")
    _, piece = write(m, f.ino, 0, 10)
    m.unlink(ROOT, b"old")
    assert purge_expired(m, 1) == (0, 0), "not a day old yet"
    assert purge_expired(m, 1, now=time.time() + 2 * 86400) == (1, 1)
    raises(errno.ENOENT, m.getattr, f.ino)
    assert m.readdir(TRASH_INO) == []
    assert drain_garbage(m) == {(piece.id, piece.size)}
    m.trash_days = 0
    assert_consistent(m)


ALL_CHECKS: list[Callable[[Meta], None]] = [
    fn for name, fn in sorted(globals().items()) if name.startswith("check_") and callable(fn)
]
