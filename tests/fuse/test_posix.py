"""POSIX namespace semantics through a real mount, with the errnos callers rely on."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuse.helpers import Volume

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_files_and_directories(mnt: Path) -> None:
    (mnt / "d").mkdir()
    (mnt / "d" / "sub").mkdir()
    (mnt / "d" / "f").write_bytes(b"x")
    assert sorted(os.listdir(mnt / "d")) == ["f", "sub"]
    assert os.stat(mnt / "d").st_nlink == 3
    assert errno_of(os.mkdir, mnt / "d") == errno.EEXIST
    assert errno_of(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    assert errno_of(os.stat, mnt / "nope") == errno.ENOENT
    assert errno_of(os.listdir, mnt / "d" / "f") == errno.ENOTDIR
    assert errno_of(os.mkdir, mnt / "d" / "f" / "x") == errno.ENOTDIR
    assert errno_of(os.unlink, mnt / "d" / "sub") in (errno.EISDIR, errno.EPERM)
    assert errno_of(os.rmdir, mnt / "d" / "f") == errno.ENOTDIR
    assert errno_of(open, mnt / "d" / "sub", "w") == errno.EISDIR
    os.unlink(mnt / "d" / "f")
    os.rmdir(mnt / "d" / "sub")
    os.rmdir(mnt / "d")
    assert os.listdir(mnt) == []


def test_names(mnt: Path) -> None:
    longest = "n" * 255
    (mnt / longest).write_bytes(b"1")
    assert errno_of((mnt / ("n" * 256)).write_bytes, b"1") == errno.ENAMETOOLONG
    unicode = "données-日本語-🙂"
    (mnt / unicode).write_bytes(b"u")
    assert set(os.listdir(mnt)) == {longest, unicode}
    assert (mnt / unicode).read_bytes() == b"u"


def test_rename_semantics(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    os.rename(mnt / "a", mnt / "b")  # replaces
    assert (mnt / "b").read_bytes() == b"A"
    assert not (mnt / "a").exists()
    (mnt / "c").write_bytes(b"C")
    assert errno_of(renameat2, mnt / "c", mnt / "b", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(mnt / "c", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "b").read_bytes() == b"C" and (mnt / "c").read_bytes() == b"A"
    renameat2(mnt / "c", mnt / "new", RENAME_NOREPLACE)
    assert (mnt / "new").read_bytes() == b"A"
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    (mnt / "d2" / "x").write_bytes(b"")
    assert errno_of(os.rename, mnt / "d1", mnt / "d2") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt / "d1", mnt / "b") == errno.ENOTDIR
    assert errno_of(os.rename, mnt / "b", mnt / "d1") == errno.EISDIR
    assert errno_of(os.rename, mnt / "d1", mnt / "d1" / "inside") == errno.EINVAL
    os.rename(mnt / "d1", mnt / "d2" / "moved")
    assert os.listdir(mnt / "d2") == sorted(["x", "moved"]) or set(os.listdir(mnt / "d2")) == {"x", "moved"}
    assert errno_of(os.rename, mnt / "missing", mnt / "z") == errno.ENOENT


def test_hard_links_and_symlinks(mnt: Path) -> None:
    (mnt / "f").write_bytes(b"data")
    os.link(mnt / "f", mnt / "g")
    assert os.stat(mnt / "f").st_nlink == 2
    assert os.stat(mnt / "f").st_ino == os.stat(mnt / "g").st_ino
    os.unlink(mnt / "f")
    assert (mnt / "g").read_bytes() == b"data" and os.stat(mnt / "g").st_nlink == 1
    (mnt / "dir").mkdir()
    assert errno_of(os.link, mnt / "dir", mnt / "dirlink") == errno.EPERM
    os.symlink("g", mnt / "s")
    assert os.readlink(mnt / "s") == "g"
    assert stat.S_ISLNK(os.lstat(mnt / "s").st_mode)
    assert (mnt / "s").read_bytes() == b"data"
    os.symlink("nowhere", mnt / "dangling")
    assert errno_of(os.stat, mnt / "dangling") == errno.ENOENT


def test_fifo(mnt: Path) -> None:
    os.mkfifo(mnt / "fifo", 0o640)
    st = os.stat(mnt / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


def test_chmod_chown_utimens_and_times(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"x")
    before = os.stat(f)
    time.sleep(0.02)
    os.chmod(f, 0o600)
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_ctime_ns > before.st_ctime_ns
    assert st.st_mtime_ns == before.st_mtime_ns
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(f, ns=(1_000_000_000_123, 2_000_000_000_456))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    time.sleep(0.02)
    with open(f, "ab") as h:
        h.write(b"more")
    st2 = os.stat(f)
    assert st2.st_mtime_ns > st.st_mtime_ns and st2.st_size == 5
    dir_before = os.stat(mnt)
    time.sleep(0.02)
    (mnt / "new").write_bytes(b"")
    assert os.stat(mnt).st_mtime_ns > dir_before.st_mtime_ns


def test_xattrs(mnt: Path) -> None:
    f = mnt / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.one", b"1")
    os.setxattr(f, "user.two", b"\x00binary\xff")
    assert os.getxattr(f, "user.two") == b"\x00binary\xff"
    assert sorted(os.listxattr(f)) == ["user.one", "user.two"]
    assert errno_of(os.setxattr, f, "user.one", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, f, "user.three", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.one", b"uno", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.one") == b"uno"
    os.removexattr(f, "user.one")
    assert errno_of(os.getxattr, f, "user.one") == errno.ENODATA
    assert errno_of(os.removexattr, f, "user.one") == errno.ENODATA
    assert os.listxattr(f) == ["user.two"]


def test_fsync_and_ftruncate(mnt: Path) -> None:
    with open(mnt / "f", "w+b") as h:
        h.write(os.urandom(100_000))
        h.flush()
        os.fsync(h.fileno())
        os.ftruncate(h.fileno(), 10)
        h.seek(0)
        assert len(h.read()) == 10
    assert os.stat(mnt / "f").st_size == 10


def test_statfs_counts_usage(volume: Volume) -> None:
    m = volume.mount()
    before = os.statvfs(m.path)
    (m.path / "f").write_bytes(os.urandom(8 << 20))
    for i in range(5):
        (m.path / f"e{i}").write_bytes(b"")
    after = os.statvfs(m.path)
    assert after.f_files - after.f_ffree >= (before.f_files - before.f_ffree) + 6
    assert after.f_namemax == 255


def test_unlinked_open_file_stays_readable(mnt: Path) -> None:
    data = os.urandom(2 << 20)
    (mnt / "f").write_bytes(data)
    with open(mnt / "f", "rb") as h:
        os.unlink(mnt / "f")
        assert not (mnt / "f").exists()
        assert h.read() == data


def _as_nobody(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The system interpreter: the venv's may live under a directory nobody cannot enter.
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run([python, "-c", code], user=65534, group=65534, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_permissions_enforced(volume: Volume) -> None:
    m = volume.mount("-o", "allow_other")
    os.chmod(m.path, 0o755)
    (m.path / "private").write_bytes(b"secret")
    os.chmod(m.path / "private", 0o600)
    (m.path / "locked").mkdir(mode=0o700)
    (m.path / "open").mkdir(mode=0o777)
    os.chmod(m.path / "open", 0o777)
    code = (
        "import errno, os\n"
        "def err(fn, *a):\n"
        "    try:\n        fn(*a)\n    except OSError as e:\n        return errno.errorcode[e.errno]\n    return 'ok'\n"
        "print(err(open, 'private'), err(os.listdir, 'locked'), err(open, 'newfile', 'w'),"
        " err(os.chmod, 'private', 0o777), err(lambda: open('open/mine', 'w').close()))\n"
    )
    result = _as_nobody(code, m.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EACCES", "EACCES", "EACCES", "EPERM", "ok"]
    assert os.stat(m.path / "open" / "mine").st_uid == 65534


def test_read_only_mount(volume: Volume) -> None:
    m = volume.mount()
    (m.path / "f").write_bytes(b"hello")
    m.umount()
    ro = volume.mount("--read-only")
    assert (ro.path / "f").read_bytes() == b"hello"
    assert errno_of((ro.path / "g").write_bytes, b"x") == errno.EROFS
    assert errno_of(os.mkdir, ro.path / "d") == errno.EROFS
    assert errno_of(os.unlink, ro.path / "f") == errno.EROFS
    assert errno_of(os.setxattr, ro.path / "f", "user.a", b"1") == errno.EROFS


def test_subdir_mount(volume: Volume) -> None:
    m = volume.mount()
    (m.path / "a" / "b").mkdir(parents=True)
    (m.path / "a" / "b" / "f").write_bytes(b"in b")
    sub = volume.mount("--subdir", "a/b")
    assert os.listdir(sub.path) == ["f"]
    assert (sub.path / "f").read_bytes() == b"in b"
    (sub.path / "g").write_bytes(b"new")
    assert (m.path / "a" / "b" / "g").read_bytes() == b"new"
