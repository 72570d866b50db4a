"""`fusecache clone` / `snapshot` on a real mount over S3: a clone copies no object, the two
sides then change independently, data is freed only with its last holder (the S3 listing
shows it), a snapshot refuses root, and a clone killed with SIGKILL is invisible, resumed
by a rerun and removed by `fsck --repair`."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fusecache.meta import open_meta
from fusecache.meta.clone import clone, detached
from fusecache.meta.redis import RedisMeta
from tests.fuse.helpers import CLI, Volume, format_volume, run_cli, sha256_file, wait_for
from tests.fuse.test_cli import assert_clean_failure
from tests.servers import S3Server

MiB = 1 << 20


@pytest.fixture
def vol(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> Iterator[Volume]:
    """An S3 volume that frees data at once: no trash, no garbage delay."""
    v = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                      "--trash-days", "0", "--garbage-delay", "0")
    try:
        yield v
    finally:
        v.cleanup()


def hashes(top: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(filenames + dirnames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = f"{p.stat().st_mode:o} {sha256_file(p)}"
            else:
                out[rel] = f"{p.stat().st_mode:o} dir"
    return out


def make_tree(top: Path) -> None:
    """Files across blocks and chunks' worth of slices: big, sparse, overwritten, small,
    empty, a hard link, a symlink."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "big").write_bytes(os.urandom(3 * MiB + 123))
    with open(top / "sparse", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"tail")
    (top / "over").write_bytes(os.urandom(2 * MiB))
    with open(top / "over", "r+b") as f:
        f.seek(MiB - 10)
        f.write(os.urandom(100))
    for i in range(5):
        (top / "sub" / f"small{i}").write_bytes(os.urandom(1000 + i))
    (top / "sub" / "deeper" / "empty").touch()
    os.link(top / "big", top / "sub" / "big-link")
    os.symlink("../big", top / "sub" / "ln")
    os.setxattr(top / "big", "user.tag", b"kept")
    os.sync()


def block_objects(vol: Volume) -> set[str]:
    return {k for k in vol.object_keys() if "/blocks/" in k}


def test_a_clone_copies_no_object_and_each_side_changes_alone(vol: Volume) -> None:
    m = vol.mount()
    src, copy = m.path / "src", m.path / "copy"
    src.mkdir()
    make_tree(src)
    before, objects = hashes(src), block_objects(vol)
    assert objects

    out = run_cli("clone", str(src), str(copy), "-q").stdout
    assert "no data copied" in out
    assert hashes(copy) == before
    assert os.getxattr(copy / "big", "user.tag") == b"kept"
    assert os.stat(copy / "big").st_ino == os.stat(copy / "sub" / "big-link").st_ino != os.stat(src / "big").st_ino
    assert block_objects(vol) == objects  # not one object copied

    # A write on either side leaves the other as it was.
    with open(src / "over", "r+b") as f:
        f.write(b"source changed")
    (copy / "sub" / "small0").write_bytes(b"copy changed")
    os.truncate(copy / "big", 10)
    assert hashes(copy)["over"] == before["over"]
    assert hashes(src)["sub/small0"] == before["sub/small0"] and hashes(src)["big"] == before["big"]

    # Deleting the source keeps the clone whole, from the store, not from a cache.
    subprocess.run(["rm", "-rf", str(src)], check=True)
    os.sync()
    time.sleep(2)  # the client's garbage collector runs every second
    m.umount()
    m = vol.mount()
    copy = m.path / "copy"
    run_cli("warmup", str(copy), "--evict", "-q")  # nothing cached: every read below is a GET
    after = hashes(copy)
    for name in ("sparse", "over", "sub/small1", "sub/deeper/empty", "sub/ln"):
        assert after[name] == before[name]
    # Deleting the clone too frees every object, as the listing shows.
    subprocess.run(["rm", "-rf", str(copy)], check=True)
    wait_for(lambda: not block_objects(vol), timeout=30, what="every block object deleted")
    assert run_cli("fsck", vol.meta_url).returncode == 0


def test_a_snapshot_refuses_root_and_snapshot_delete_frees_it(vol: Volume) -> None:
    m = vol.mount()
    src, snap = m.path / "src", m.path / "snap"
    src.mkdir()
    make_tree(src)
    before = hashes(src)
    run_cli("snapshot", str(src), str(snap), "-q")
    assert hashes(snap) == before
    assert os.geteuid() == 0
    attempts = {
        "write": lambda: os.close(os.open(snap / "big", os.O_WRONLY)),
        "truncate": lambda: os.truncate(snap / "big", 0),
        "create": lambda: (snap / "new").write_bytes(b"x"),
        "mkdir": lambda: (snap / "sub" / "new").mkdir(),
        "unlink": lambda: (snap / "big").unlink(),
        "rmdir": lambda: (snap / "sub" / "deeper" / "empty").unlink(),
        "rename": lambda: os.rename(snap / "big", snap / "big2"),
        "rename out": lambda: os.rename(snap / "big", m.path / "stolen"),
        "chmod": lambda: os.chmod(snap / "big", 0o777),
        "chown": lambda: os.chown(snap / "big", 1, 1),
        "utime": lambda: os.utime(snap / "big", (1, 1)),
        "setxattr": lambda: os.setxattr(snap / "big", "user.tag", b"x"),
        "link": lambda: os.link(snap / "big", m.path / "hard"),
        "symlink": lambda: os.symlink("x", snap / "ln2"),
        "rm -rf": lambda: subprocess.run(["rm", "-rf", str(snap)], check=True, capture_output=True),
    }
    for what, attempt in attempts.items():
        with pytest.raises((OSError, subprocess.CalledProcessError)) as info:
            attempt()
        if isinstance(info.value, OSError):
            assert info.value.errno == errno.EROFS, f"{what}: {info.value}"
    assert hashes(snap) == before
    with open(src / "big", "r+b") as f:  # the source stays writable
        f.write(b"changed")
    assert hashes(snap) == before

    out = run_cli("snapshot", "--delete", str(snap), "-q").stdout
    assert "deleted" in out and not snap.exists()
    assert_clean_failure(run_cli("snapshot", "--delete", str(snap), check=False), "does not exist")
    assert_clean_failure(run_cli("clone", str(src), str(src / "sub"), check=False), "exists")
    assert_clean_failure(run_cli("clone", str(m.path / "nope"), str(m.path / "x"), check=False), "does not exist")
    assert_clean_failure(run_cli("clone", str(src), "/tmp/not-a-mount-dst", check=False), "not")
    assert run_cli("fsck", vol.meta_url).returncode == 0


def _wide_tree(meta: RedisMeta, top: Path, files: int, copies: int) -> None:
    """`files` files written through the mount, then `copies` clones of their directory,
    then as many clones of the result: files * copies**2 files, made in seconds."""
    (top / "leaf").mkdir()
    for i in range(files):
        (top / "leaf" / f"f{i}").write_bytes(os.urandom(100 + i))
    (top / "mid").mkdir()
    os.sync()
    ino = meta.lookup(1, top.name.encode()).ino
    leaf, mid = meta.lookup(ino, b"leaf").ino, meta.lookup(ino, b"mid").ino
    for i in range(copies):
        clone(meta, leaf, mid, b"c%d" % i)
    for i in range(copies):
        clone(meta, mid, ino, b"m%d" % i)


def _killed_clone(vol: Volume, src: Path, dst: Path) -> None:
    """Start `fusecache clone` and SIGKILL it once it has begun copying."""
    client = redis.Redis.from_url(vol.meta_url)
    proc = subprocess.Popen([*CLI, "clone", str(src), str(dst), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not client.hlen("{fc}detached") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        client.close()
    assert proc.returncode == -signal.SIGKILL, "the clone ended before it could be killed"


def test_a_clone_killed_mid_way_is_invisible_then_resumed_or_removed(vol: Volume) -> None:
    from tests.meta.test_clone import describe

    m = vol.mount()
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        src, dst = m.path / "src", m.path / "dst"
        src.mkdir()
        _wide_tree(meta, src, files=40, copies=9)  # 3,240 files
        tree = describe(meta, meta.lookup(1, b"src").ino)
        sample = hashes(src / "m3" / "c7")
        objects = block_objects(vol)

        _killed_clone(vol, src, dst)
        assert not dst.exists()  # nothing half-done is visible
        [half] = detached(meta)
        out = run_cli("clone", str(src), str(dst), "-q").stdout  # a rerun resumes the same copy
        assert "no data copied" in out
        assert meta.lookup(1, b"dst").ino == half.root
        assert describe(meta, half.root) == tree and detached(meta) == []
        assert hashes(dst / "m3" / "c7") == sample

        _killed_clone(vol, src, m.path / "dst2")
        assert not (m.path / "dst2").exists() and len(detached(meta)) == 1
        found = run_cli("fsck", vol.meta_url, check=False)
        assert found.returncode != 0 and "unfinished clone of /src" in found.stdout + found.stderr
        run_cli("fsck", vol.meta_url, "--repair", "--force")
        assert detached(meta) == []
        # The removed copy's files go to the garbage queue, which the mount works off; fsck
        # of a volume whose files are being freed would see passing differences.
        wait_for(lambda: not meta._call(meta._r.scard, "{fc}delfiles"), timeout=60, what="freed files expanded")
        clean = run_cli("fsck", vol.meta_url, check=False)
        assert clean.returncode == 0, clean.stdout
        assert describe(meta, half.root) == tree and block_objects(vol) == objects
    finally:
        meta.shutdown()
