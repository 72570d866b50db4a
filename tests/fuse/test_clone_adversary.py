"""Adversarial tests of `fusecache clone` / `snapshot`: two mounts of one volume (a clone
made through one is seen, byte for byte, through the other; writes on either mount change
one side only; a snapshot refuses every change through the other mount; its deletion and
the deletion of both sides free every object), and Redis dying under a clone (SIGKILL and
restart on its AOF; SIGSTOP / SIGKILL while a clone of thousands of files is being built),
after which fsck is clean, reference counts included, and every file reads back by hash."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fusecache.errors import FsError
from fusecache.meta import open_meta
from fusecache.meta.clone import detached
from fusecache.meta.connect import GIVE_UP_AFTER
from fusecache.meta.redis import RedisMeta
from tests.fuse.helpers import CLI, Mount, Volume, format_volume, run_cli, sha256_file, wait_for
from tests.fuse.test_clone import _wide_tree, block_objects, hashes, make_tree
from tests.fuse.test_redis_faults import own_redis  # noqa: F401  (fixture)
from tests.servers import RedisServer, S3Server, start_redis

MiB = 1 << 20
VOLUME_ARGS = ("--block-size", "1M", "--trash-days", "0", "--garbage-delay", "0")


@pytest.fixture
def vol(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> Iterator[Volume]:
    """An S3 volume that frees data at once (no trash, no garbage delay), on the session's Redis."""
    v = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, *VOLUME_ARGS)
    try:
        yield v
    finally:
        v.cleanup()


def fsck(url: str, *extra: str) -> dict:
    """`fsck --json` as a dict; fails the test on output that is not the JSON document."""
    result = run_cli("fsck", url, "--json", "-q", *extra, check=False)
    try:
        doc = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"fsck printed no JSON ({result.returncode}): {result.stdout}{result.stderr}") from None
    assert (result.returncode == 0) == (doc["clean"] or not doc["unrepaired"]), (result.returncode, doc)
    return doc


def assert_fsck_clean(url: str) -> None:
    doc = fsck(url)
    assert doc["clean"] and doc["problems"] == [], json.dumps(doc["problems"], indent=1)


def settled(meta: RedisMeta, timeout: float = 60) -> None:
    """Wait until the garbage queue of freed files is worked off (fsck of a volume whose
    files are being freed sees passing differences)."""
    wait_for(lambda: not meta._call(meta._r.scard, meta._p + "delfiles"), timeout=timeout,
             what="freed files expanded")


def evicted(m: Mount, *paths: Path) -> None:
    """Drop the mount's cached blocks of `paths`: what is read next comes from S3."""
    for p in paths:
        run_cli("warmup", str(p), "--evict", "-q")


def coherent(path_hashes, want: dict[str, str], what: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Wait for a tree seen through another mount to show `want` (entry and attribute
    timeouts are 1 s; the change feed usually makes it immediate)."""
    last: dict[str, str] = {}

    def same() -> bool:
        nonlocal last
        try:
            last = path_hashes()
        except OSError:
            return False
        return last == want

    try:
        wait_for(same, timeout=timeout, what=what)
    except AssertionError:
        diff = {k: (want.get(k), last.get(k)) for k in set(want) | set(last) if want.get(k) != last.get(k)}
        raise AssertionError(f"{what}: differences (want, got) {diff}") from None


# --- two mounts of one volume -------------------------------------------------------------


def test_a_clone_made_on_one_mount_is_seen_whole_on_the_other_and_each_side_changes_alone(vol: Volume) -> None:
    a, b = vol.mount(), vol.mount()
    src_a, copy_a = a.path / "src", a.path / "copy"
    src_b, copy_b = b.path / "src", b.path / "copy"
    src_a.mkdir()
    make_tree(src_a)
    before = hashes(src_a)
    coherent(lambda: hashes(src_b), before, "B sees the source as A wrote it")
    # B holds the source open (and its blocks cached) across the clone.
    held = open(src_b / "over", "r+b")  # noqa: SIM115
    held.read()

    out = run_cli("clone", str(src_a), str(copy_a), "-q").stdout
    assert "no data copied" in out
    assert hashes(copy_a) == before
    wait_for(lambda: copy_b.exists(), timeout=10, what="B sees the clone")
    coherent(lambda: hashes(copy_b), before, "B sees the clone byte for byte")

    # B overwrites the source: through the fd it held since before the clone, by many small
    # writes (slices to compact), by truncation and by a whole rewrite.
    for i in range(200):
        held.seek((i * 7919) % (2 * MiB))
        held.write(b"B%03d" % i)
        held.flush()
    os.fsync(held.fileno())
    held.close()
    os.truncate(src_b / "big", MiB + 5)
    (src_b / "sub" / "small0").write_bytes(b"rewritten on B")
    with open(src_b / "sparse", "r+b") as f:
        f.seek(5 * MiB - 2)
        f.write(b"XXXX")
    os.sync()
    changed_src = hashes(src_b)
    for name in ("over", "big", "sub/small0", "sparse"):
        assert changed_src[name] != before[name], name
    assert changed_src["sub/big-link"] == changed_src["big"]  # the hard link is the same file
    coherent(lambda: hashes(src_a), changed_src, "A sees B's writes to the source")
    # The clone is as it was, on both mounts, also when read from S3 rather than a cache.
    evicted(a, copy_a)
    assert hashes(copy_a) == before
    assert hashes(copy_b) == before

    # A writes into the clone; the source, read on B, keeps B's version.
    with open(copy_a / "over", "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(MiB))
    (copy_a / "sub" / "small1").write_bytes(b"clone changed on A")
    os.truncate(copy_a / "sub" / "big-link", 3)  # and the clone's hard link pair goes together
    (copy_a / "sub" / "deeper" / "new").write_bytes(os.urandom(5000))
    os.unlink(copy_a / "sub" / "small2")
    os.sync()
    changed_copy = hashes(copy_a)
    assert changed_copy["big"] == changed_copy["sub/big-link"] != before["big"]
    coherent(lambda: hashes(copy_b), changed_copy, "B sees A's writes to the clone")
    evicted(b, src_b)
    assert hashes(src_b) == changed_src
    assert hashes(src_a) == changed_src
    assert_fsck_clean(vol.meta_url)


SNAPSHOT_ATTEMPTS = {
    "write": lambda snap, root: os.close(os.open(snap / "big", os.O_WRONLY)),
    "append": lambda snap, root: os.close(os.open(snap / "sub" / "small0", os.O_WRONLY | os.O_APPEND)),
    "truncate": lambda snap, root: os.truncate(snap / "big", 0),
    "open O_TRUNC": lambda snap, root: os.close(os.open(snap / "over", os.O_WRONLY | os.O_TRUNC)),
    "unlink": lambda snap, root: os.unlink(snap / "big"),
    "unlink deep": lambda snap, root: os.unlink(snap / "sub" / "deeper" / "empty"),
    "rename": lambda snap, root: os.rename(snap / "big", snap / "big2"),
    "rename out": lambda snap, root: os.rename(snap / "sub" / "small0", root / "stolen"),
    "rename over": lambda snap, root: os.rename(root / "outside", snap / "big"),
    "rename snapshot": lambda snap, root: os.rename(snap, root / "moved"),
    "chmod": lambda snap, root: os.chmod(snap / "big", 0o777),
    "chmod dir": lambda snap, root: os.chmod(snap / "sub", 0o700),
    "create": lambda snap, root: os.close(os.open(snap / "sub" / "new", os.O_CREAT | os.O_WRONLY, 0o644)),
    "mkdir": lambda snap, root: os.mkdir(snap / "sub" / "newdir"),
    "setxattr": lambda snap, root: os.setxattr(snap / "big", "user.tag", b"changed"),
}


def test_a_snapshot_made_on_one_mount_refuses_changes_on_the_other_and_its_deletion_frees_all(vol: Volume) -> None:
    a, b = vol.mount(), vol.mount()
    src_a, snap_a, snap_b = a.path / "src", a.path / "snap", b.path / "snap"
    src_a.mkdir()
    make_tree(src_a)
    (a.path / "outside").write_bytes(b"outside the snapshot")
    objects = block_objects(vol)
    assert objects
    before = hashes(src_a)
    # B reads the source first, so that it has the inodes' attributes and blocks cached.
    coherent(lambda: hashes(b.path / "src"), before, "B sees the source")

    run_cli("snapshot", str(src_a), str(snap_a), "-q")
    wait_for(lambda: snap_b.exists(), timeout=10, what="B sees the snapshot")
    coherent(lambda: hashes(snap_b), before, "B sees the snapshot byte for byte")
    assert os.geteuid() == 0  # root, and still refused
    wrong = {}
    for what, attempt in SNAPSHOT_ATTEMPTS.items():
        try:
            attempt(snap_b, b.path)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                wrong[what] = errno.errorcode.get(exc.errno, exc.errno)
        else:
            wrong[what] = "succeeded"
    assert wrong == {}, f"on mount B, not EROFS: {wrong}"
    assert hashes(snap_b) == before and hashes(snap_a) == before
    assert block_objects(vol) == objects  # the snapshot copied nothing

    out = run_cli("snapshot", "--delete", str(snap_b), "-q").stdout  # deleted through B
    assert "deleted" in out
    wait_for(lambda: not snap_a.exists(), timeout=10, what="A sees the snapshot gone")
    assert hashes(src_a) == before  # the source keeps every byte the snapshot shared
    evicted(a, src_a)
    assert hashes(src_a) == before
    assert block_objects(vol) == objects  # nothing freed while the source holds it

    # Now a clone made on A; then both sides deleted, one on each mount: every object goes.
    run_cli("clone", str(src_a), str(a.path / "copy"), "-q")
    wait_for(lambda: (b.path / "copy").exists(), timeout=10, what="B sees the clone")
    subprocess.run(["rm", "-rf", str(b.path / "src")], check=True)
    os.sync()
    time.sleep(1.5)
    assert hashes(a.path / "copy") == before  # still whole after the source is gone
    subprocess.run(["rm", "-rf", str(a.path / "copy")], check=True)
    (a.path / "outside").unlink()
    os.sync()
    wait_for(lambda: not block_objects(vol), timeout=40, what="every block object deleted")
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        settled(meta)
        assert not meta._call(meta._r.hlen, meta._p + "sliceref"), "reference counts left behind"
    finally:
        meta.shutdown()
    assert_fsck_clean(vol.meta_url)


def test_a_snapshot_deleted_on_one_mount_stays_readable_through_a_file_open_on_the_other(vol: Volume) -> None:
    """The snapshot holds the only reference to the data (its source is gone) when A
    deletes it; B's open file must still read every byte, from S3, and the objects go
    only once B closes it."""
    a, b = vol.mount(), vol.mount()
    (a.path / "src").mkdir()
    data = os.urandom(3 * MiB + 77)
    (a.path / "src" / "f").write_bytes(data)
    run_cli("snapshot", str(a.path / "src"), str(a.path / "snap"), "-q")
    subprocess.run(["rm", "-rf", str(a.path / "src")], check=True)
    os.sync()
    objects = block_objects(vol)
    assert objects  # held by the snapshot alone now
    wait_for(lambda: (b.path / "snap" / "f").exists(), timeout=10, what="B sees the snapshot")
    with open(b.path / "snap" / "f", "rb", buffering=0) as f:
        assert f.read(10) == data[:10]
        run_cli("snapshot", "--delete", str(a.path / "snap"), "-q")
        wait_for(lambda: not (b.path / "snap").exists(), timeout=10, what="B sees the snapshot gone")
        time.sleep(2)  # past the collectors' period and the garbage delay (0)
        assert block_objects(vol) == objects, "objects of a file open on B were deleted"
        run_cli("warmup", str(b.path), "--evict", "-q")
        f.seek(0)
        got = f.read()
    assert got == data
    wait_for(lambda: not block_objects(vol), timeout=40, what="the objects freed after B's close")
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        settled(meta)
    finally:
        meta.shutdown()
    assert_fsck_clean(vol.meta_url)


def test_a_file_cloned_on_a_while_b_holds_unflushed_writes_is_one_version_or_the_other(vol: Volume) -> None:
    """B writes into a file and keeps it open (the data sits in B's buffers) while A clones
    it: the clone is the file as it was at one instant (old or new bytes, never a mix, never
    a hole), B's close lands in the source only, and the counts stay exact."""
    a, b = vol.mount(), vol.mount()
    old = os.urandom(2 * MiB + 11)
    (a.path / "f").write_bytes(old)
    wait_for(lambda: (b.path / "f").exists(), timeout=10, what="B sees f")
    for i in range(4):
        new = bytearray(old)
        new[MiB - 100:MiB + 100 + i] = os.urandom(200 + i)  # across a block boundary
        with open(b.path / "f", "r+b") as f:
            f.seek(MiB - 100)
            f.write(new[MiB - 100:MiB + 100 + i])
            run_cli("clone", str(a.path / "f"), str(a.path / f"c{i}"), "-q")
        os.sync()
        evicted(a, a.path / f"c{i}")
        got = (a.path / f"c{i}").read_bytes()
        assert got in (old, bytes(new)), f"clone {i} mixes versions"
        coherent(lambda: {"f": sha256_file(a.path / "f")}, {"f": hashlib.sha256(new).hexdigest()},
                 "A sees B's close in the source")
        assert (a.path / f"c{i}").read_bytes() == got  # the source's change did not reach it
        old = bytes(new)
    assert_fsck_clean(vol.meta_url)


def test_two_clones_racing_to_one_name_from_two_mounts_under_a_writer_leave_exact_counts(vol: Volume) -> None:
    """Two `fusecache clone` processes, one through each mount, copy the same tree to the
    same new name at the same time (both copies are seen being built at once) while a
    writer on B overwrites, renames and deletes files of the source: one clone wins, the
    other fails with 'exists' and leaves nothing behind, and fsck finds every reference
    count exact."""
    import threading

    a, b = vol.mount(), vol.mount()
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        src = a.path / "src"
        src.mkdir()
        _wide_tree(meta, src, files=20, copies=9)  # 1,620 files
        untouched = {d: hashes(src / d) for d in ("m0", "m5/c1")}
        wait_for(lambda: (b.path / "src" / "m8" / "c8").exists(), timeout=10, what="B sees the tree")

        def race(name: str) -> tuple[list[tuple[int, str]], int, int]:
            stop = threading.Event()
            changed, most = [0], [0]

            def writer() -> None:  # on mount B, in m3 only
                i = 0
                while not stop.is_set():
                    d = b.path / "src" / "m3" / f"c{i % 9}"
                    try:
                        with open(d / f"f{i % 20}", "r+b") as f:
                            f.seek(i % 50)
                            f.write(os.urandom(64))
                        if i % 3 == 0:
                            os.rename(d / f"f{(i + 1) % 20}", d / f"r{name}{i}")
                        if i % 5 == 0:
                            os.unlink(d / f"f{(i + 2) % 20}")
                        changed[0] += 1
                    except FileNotFoundError:
                        pass
                    i += 1

            def watch() -> None:  # how many copies are being built at once
                client = redis.Redis.from_url(vol.meta_url)
                while not stop.is_set():
                    most[0] = max(most[0], client.hlen("{fc}detached"))
                    time.sleep(0.002)
                client.close()

            threads = [threading.Thread(target=writer), threading.Thread(target=watch)]
            for t in threads:
                t.start()
            try:
                procs = [_start_clone(src, a.path / name), _start_clone(b.path / "src", b.path / name)]
                results = [_finish(p) for p in procs]
            finally:
                stop.set()
                for t in threads:
                    t.join()
            return results, changed[0], most[0]

        for attempt in range(4):
            results, changed, most = race(f"dst{attempt}")
            assert sorted(rc for rc, _ in results) == [0, 1], results
            loser = next(out for rc, out in results if rc)
            assert "exists" in loser and "Traceback" not in loser, loser
            assert detached(meta) == [], "the losing clone left its copy behind"
            assert changed > 0, "the writer did not run during the clones"
            for d, want in untouched.items():
                assert hashes(a.path / f"dst{attempt}" / d) == want, d
            if most == 2:
                break
        assert most == 2, "the two clones never ran at the same time in 4 tries"
        wait_for(lambda: (b.path / f"dst{attempt}" / "m0").exists(), timeout=10, what="B sees the clone")
        assert hashes(b.path / f"dst{attempt}" / "m0") == untouched["m0"]
        os.sync()
        settled(meta)
        assert_fsck_clean(vol.meta_url)
    finally:
        meta.shutdown()


# --- Redis dying under clones -------------------------------------------------------------


class Redis:
    """The test's own durable redis-server (AOF, appendfsync always), killed and restarted
    on the same port and data directory; the fixture stops whichever process is last."""

    def __init__(self, server: RedisServer) -> None:
        self.first = server
        self.server = server

    def kill(self) -> None:
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait()

    def start(self) -> None:
        self.server = start_redis(port=self.first.port, workdir=self.first.workdir, aof=True)
        self.first.proc = self.server.proc  # the fixture's stop() ends this one

    def kill_and_restart(self, down: float = 0.3) -> None:
        self.kill()
        time.sleep(down)
        self.start()

    def stop_signal(self, sig: int) -> None:
        os.kill(self.server.proc.pid, sig)


@pytest.fixture
def durable(own_redis: RedisServer, tmp_path: Path, s3_server: S3Server,  # noqa: F811
            bucket_url: str) -> Iterator[tuple[Volume, Redis]]:
    v = format_volume(own_redis.url(1), tmp_path, "s3", s3_server, bucket_url, *VOLUME_ARGS)
    r = Redis(own_redis)
    try:
        yield v, r
    finally:
        if r.server.proc.poll() is None:
            r.stop_signal(signal.SIGCONT)
        v.cleanup()


def test_a_clone_survives_a_redis_sigkill_and_fsck_finds_every_count_exact(durable: tuple[Volume, Redis]) -> None:
    vol, server = durable
    aof = server.first.workdir
    m = vol.mount()
    src, copy, snap = m.path / "src", m.path / "copy", m.path / "snap"
    src.mkdir()
    make_tree(src)
    before = hashes(src)
    run_cli("clone", str(src), str(copy), "-q")
    run_cli("snapshot", str(copy), str(snap), "-q")
    # Each side diverges a little, so that counts differ slice by slice.
    with open(copy / "over", "r+b") as f:
        f.write(b"copy side")
    (src / "sub" / "small3").write_bytes(b"source side")
    os.sync()
    want = {"src": hashes(src), "copy": hashes(copy), "snap": hashes(snap)}
    assert want["snap"] == before != want["copy"]
    client = redis.Redis.from_url(vol.meta_url)
    refs_before = client.hgetall("{fc}sliceref")
    client.close()
    assert refs_before, "a clone made no shared slices?"

    server.kill_and_restart()
    assert any(aof.rglob("*.aof*")), "redis wrote no AOF"
    client = redis.Redis.from_url(vol.meta_url)
    try:
        assert client.hgetall("{fc}sliceref") == refs_before, "reference counts changed across the restart"
        assert not client.hlen("{fc}detached")
    finally:
        client.close()
    assert_fsck_clean(vol.meta_url)

    # Every file of all three reads back by hash: through the mount that lived through the
    # restart, then through a fresh one with nothing cached.
    wait_for(lambda: hashes(m.path / "src") == want["src"], timeout=30, what="the old mount works again")
    assert hashes(copy) == want["copy"] and hashes(snap) == want["snap"]
    m.umount()
    fresh = vol.mount()
    run_cli("warmup", str(fresh.path), "--evict", "-q")
    for name, tree in want.items():
        assert hashes(fresh.path / name) == tree, name
    # The counts still work after the restart: dropping the source and the clone keeps the
    # snapshot whole and leaves fsck clean.
    subprocess.run(["rm", "-rf", str(fresh.path / "src"), str(fresh.path / "copy")], check=True)
    os.sync()
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        settled(meta)
    finally:
        meta.shutdown()
    run_cli("warmup", str(fresh.path), "--evict", "-q")
    assert hashes(fresh.path / "snap") == want["snap"]
    assert_fsck_clean(vol.meta_url)


def _start_clone(src: Path, dst: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "clone", str(src), str(dst), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_building(url: str, proc: subprocess.Popen[str]) -> None:
    """Until the clone's detached record exists (it has begun copying)."""
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while not client.hlen("{fc}detached"):
            assert proc.poll() is None, f"the clone ended before it was interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline, "the clone never began"
            time.sleep(0.001)
    finally:
        client.close()


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=GIVE_UP_AFTER * 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the clone hangs after Redis came back") from None
    return proc.returncode, out + err


def _check_failed_cleanly(rc: int, output: str) -> None:
    if rc != 0:
        assert rc == 1 and "Traceback" not in output, output
        assert len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize("interruption", ["sigstop", "sigkill"])
def test_a_clone_interrupted_by_redis_is_completed_by_a_rerun_or_removed_by_fsck(
        durable: tuple[Volume, Redis], interruption: str) -> None:
    from tests.meta.test_clone import describe

    vol, server = durable
    m = vol.mount()
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        src = m.path / "src"
        src.mkdir()
        _wide_tree(meta, src, files=30, copies=9)  # 2,430 files: ten batches and more
        src_ino = meta.lookup(1, b"src").ino
        tree = describe(meta, src_ino)
        assert sum(1 for _ in tree) > 2000
        samples = {d: hashes(src / d) for d in ("leaf", "m0/c0", "m4/c8", "m8/c3")}
        objects = block_objects(vol)
        refs = dict(meta._call(meta._r.hgetall, meta._p + "sliceref"))

        def interrupt(down: float) -> None:
            if interruption == "sigstop":
                server.stop_signal(signal.SIGSTOP)
                time.sleep(down)
                server.stop_signal(signal.SIGCONT)
            else:
                server.kill_and_restart(down)

        # 1. A short interruption, well inside the retry window of every Redis call
        # (docs/data-safety.md): the clone rides it out and is whole.
        proc = _start_clone(src, m.path / "dst")
        _wait_building(vol.meta_url, proc)
        interrupt(1.0)
        rc, output = _finish(proc)
        assert rc == 0 and "no data copied" in output, f"a 1 s Redis {interruption} failed the clone: {output}"
        assert detached(meta) == []
        dst_ino = meta.lookup(1, b"dst").ino
        assert describe(meta, dst_ino) == tree
        wait_for(lambda: (m.path / "dst").exists(), timeout=10, what="the mount sees dst")
        for d, want in samples.items():
            assert hashes(m.path / "dst" / d) == want, d

        # 2. An outage past the bound of every Redis call: the clone fails cleanly, nothing
        # half-done is visible, and a rerun gives a whole clone.
        proc = _start_clone(src, m.path / "dst2")
        _wait_building(vol.meta_url, proc)
        interrupt(GIVE_UP_AFTER + 2)
        rc, output = _finish(proc)
        _check_failed_cleanly(rc, output)
        if rc == 0:
            pytest.fail(f"the clone succeeded across a {GIVE_UP_AFTER + 2:.0f} s Redis outage: {output}")
        assert not (m.path / "dst2").exists()
        with pytest.raises(FsError) as info:
            meta.lookup(1, b"dst2")
        assert info.value.errno == errno.ENOENT
        out = run_cli("clone", str(src), str(m.path / "dst2"), "-q").stdout
        assert "no data copied" in out and detached(meta) == []
        dst2_ino = meta.lookup(1, b"dst2").ino
        assert describe(meta, dst2_ino) == tree
        wait_for(lambda: (m.path / "dst2").exists(), timeout=10, what="the mount sees dst2")
        assert hashes(m.path / "dst2" / "m4" / "c8") == samples["m4/c8"]
        run_cli("snapshot", "--delete", str(m.path / "dst2"), "-q")

        # 3. The clone's process dies while Redis is away: its copy stays detached (never
        # seen), fsck names it and --repair removes it, after which nothing leaks.
        proc = _start_clone(src, m.path / "dst3")
        _wait_building(vol.meta_url, proc)
        if interruption == "sigstop":
            server.stop_signal(signal.SIGSTOP)
        else:
            server.kill()
        time.sleep(1.0)
        proc.kill()
        proc.wait()
        if interruption == "sigstop":
            server.stop_signal(signal.SIGCONT)
        else:
            server.start()
        assert not (m.path / "dst3").exists()
        [half] = detached(meta)
        assert (half.src, half.name) == (src_ino, b"dst3")
        found = fsck(vol.meta_url)
        assert not found["clean"] and any("unfinished clone of /src" in json.dumps(p)
                                          for p in found["problems"]), found
        run_cli("fsck", vol.meta_url, "--repair", "--force", "-q")
        assert detached(meta) == []
        settled(meta)
        assert_fsck_clean(vol.meta_url)
        assert describe(meta, src_ino) == tree and describe(meta, dst_ino) == tree
        assert block_objects(vol) == objects
        # Reference counts: every slice of src is held by twice as many chunks as before
        # dst existed (dst2 and dst3 left nothing behind).
        after = meta._call(meta._r.hgetall, meta._p + "sliceref")
        assert {k: int(v) for k, v in after.items()} == {k: 2 * (int(v) + 1) - 1 for k, v in refs.items()}
    finally:
        meta.shutdown()
