"""Redis dying or freezing under a mounted volume: no acknowledged write is lost, no file
turns unreadable, nothing hangs past the documented bound, and recovery needs no remount.

Redis runs with AOF and appendfsync always, the settings docs/data-safety.md asks for."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusecache.meta.connect import GIVE_UP_AFTER, SOCKET_TIMEOUT
from tests.fuse.helpers import Volume, client_stats, format_volume, run_cli, wait_for
from tests.servers import RedisServer, start_redis

# Each file is written in pieces, fsync'd after each; the writer prints a line once the
# file is closed (acknowledged) or failed.
WRITER = """
import hashlib, os, random, sys
root, idx, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    rng = random.Random(idx * 1000 + i)
    data = rng.randbytes(rng.randrange(1, 3 << 20))
    name = os.path.join(root, f"w{idx}-{i}")
    try:
        with open(name, "wb") as f:
            for off in range(0, len(data), 256 << 10):
                f.write(data[off:off + (256 << 10)])
                f.flush()
                os.fsync(f.fileno())
        print("done", name, flush=True)
    except OSError as exc:
        print("failed", name, exc.errno, flush=True)
"""


def expected(name: str) -> bytes:
    idx, i = (int(x) for x in name[1:].split("-"))
    rng = random.Random(idx * 1000 + i)
    return rng.randbytes(rng.randrange(1, 3 << 20))


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis(aof=True)
    yield server
    server.stop()  # thawed first if a test froze it


def _kill_and_restart(server: RedisServer) -> RedisServer:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    time.sleep(0.3)
    return start_redis(port=server.port, workdir=server.workdir, aof=True)


def test_sigkill_of_redis_under_writers_loses_nothing_acknowledged(own_redis: RedisServer, tmp_path: Path) -> None:
    url = own_redis.url(1)
    vol = format_volume(url, tmp_path, "file", None, None, "--block-size", "1M")
    server = own_redis
    try:
        m = vol.mount()
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(m.path), str(i), "12"],
                                    stdout=subprocess.PIPE, text=True) for i in range(3)]
        for _ in range(3):
            time.sleep(1.5)
            server = _kill_and_restart(server)
        outputs = [w.communicate(timeout=240)[0] for w in writers]
        acknowledged = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("done")}
        assert len(acknowledged) >= 12, outputs  # most writes go through despite the kills
        checked = 0
        for path in sorted(m.path.iterdir()):
            want = expected(path.name)
            got = path.read_bytes()  # never EIO
            if str(path) in acknowledged:
                assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), path
            else:
                assert want.startswith(got), f"{path}: not a clean prefix of what was written"
            checked += 1
        assert {str(p) for p in m.path.iterdir()} >= acknowledged, "an acknowledged file is gone"
        # Everything still works on the same mount, without a remount.
        (m.path / "after").write_bytes(b"still fine")
        assert (m.path / "after").read_bytes() == b"still fine"
        vol.cleanup()
        vol.mounts.clear()
        result = run_cli("fsck", url, "-q", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        remount = vol.mount()
        for name in acknowledged:
            target = remount.path / Path(name).name
            assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(expected(target.name)).digest()
        assert checked >= len(acknowledged)
    finally:
        vol.cleanup()
        if server is not own_redis:
            server.proc.kill()
            server.proc.wait()
            own_redis.proc = server.proc


def _timed(fn, *args) -> tuple[float, BaseException | None]:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    try:
        fn(*args)
        return time.monotonic() - start, None
    except OSError as exc:
        return time.monotonic() - start, exc


def test_a_stopped_redis_gives_eio_within_the_bound_and_recovery_needs_no_remount(
        own_redis: RedisServer, tmp_path: Path) -> None:
    url = own_redis.url(1)
    vol: Volume = format_volume(url, tmp_path, "file", None, None)
    try:
        m = vol.mount()
        (m.path / "existing").write_bytes(b"x")
        time.sleep(1.2)  # past the kernel's caches
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        results: dict[str, tuple[float, BaseException | None]] = {}

        def attempt(name: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
            results[name] = _timed(fn, *args)

        ops = {
            "stat": (os.stat, m.path / "existing"),
            "create": (lambda p: p.write_bytes(b"new"), m.path / "created"),
            "mkdir": (os.mkdir, m.path / "dir"),
            "unlink": (os.unlink, m.path / "existing"),
        }
        threads = [threading.Thread(target=attempt, args=(name, *op)) for name, op in ops.items()]
        for t in threads:
            t.start()
        bound = GIVE_UP_AFTER + SOCKET_TIMEOUT + 5  # the non-blocking try, then the blocking one
        for t in threads:
            t.join(timeout=bound + 10)
        assert not any(t.is_alive() for t in threads), f"operations hang on a stopped Redis: {results}"
        for name, (elapsed, exc) in results.items():
            assert elapsed <= bound, f"{name} took {elapsed:.1f}s"
            assert exc is None or exc.errno == 5, f"{name}: {exc}"  # EIO, not something made up
        assert any(exc is not None for _, exc in results.values()), "nothing failed while Redis was stopped?"
        os.kill(own_redis.proc.pid, signal.SIGCONT)
        started = time.monotonic()
        deadline = started + 5
        while True:
            try:
                (m.path / "later").write_bytes(b"works again")
                assert (m.path / "later").read_bytes() == b"works again"
                break
            except OSError:
                assert time.monotonic() < deadline, "no recovery within 5 s of Redis coming back"
                time.sleep(0.1)
        assert time.monotonic() - started <= 5
        os.listdir(m.path)
    finally:
        vol.cleanup()


def test_a_redis_killed_and_restarted_takes_back_the_kernels_long_entries(own_redis: RedisServer,
                                                                          tmp_path: Path) -> None:
    """The kernel holds entries for 60 s on the change feed's word. A Redis killed with -9
    takes the feed with it; the changes made once it is back must reach the other mount's
    kernel as soon as after any other change, not after 60 s."""
    url = own_redis.url(1)
    vol = format_volume(url, tmp_path, "file", None, None)
    server = own_redis
    try:
        a, b = vol.mount(), vol.mount()
        (b.path / "f").write_bytes(b"12345")
        (b.path / "g").write_bytes(b"old")
        wait_for(lambda: client_stats(a.path)["meta_cache"]["live"], what="change feed live")
        assert os.stat(a.path / "f").st_mode & 0o777 == 0o644 and (a.path / "g").read_bytes() == b"old"
        server = _kill_and_restart(server)
        for m in (a, b):
            wait_for(lambda m=m: client_stats(m.path)["meta_cache"]["live"], timeout=30, what="feed back")
        os.chmod(b.path / "f", 0o600)
        os.rename(b.path / "f", b.path / "f2")
        (b.path / "g").write_bytes(b"newer")
        wait_for(lambda: not os.path.exists(a.path / "f"), timeout=5, what="rename seen by a")
        assert os.stat(a.path / "f2").st_mode & 0o777 == 0o600
        wait_for(lambda: (a.path / "g").read_bytes() == b"newer", timeout=5, what="new bytes seen by a")
    finally:
        vol.cleanup()
        if server is not own_redis:
            server.proc.kill()
            server.proc.wait()
            own_redis.proc = server.proc
