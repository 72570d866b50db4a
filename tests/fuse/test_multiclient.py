"""Several clients and processes on one volume; a client killed mid-write."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fuse.helpers import Volume, sha256_file, wait_pid


def test_close_to_open_between_two_mounts(volume: Volume) -> None:
    a = volume.mount()
    b = volume.mount()
    (a.path / "shared").write_bytes(b"version one")
    assert (b.path / "shared").read_bytes() == b"version one"
    # B reads (and so caches) the file, A rewrites it longer, B opens again: new content.
    data = os.urandom(3 << 20)
    with open(a.path / "shared", "wb") as f:
        f.write(data)
    with open(b.path / "shared", "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    # Directory changes show up within the entry timeout (1 s by default).
    (a.path / "newdir").mkdir()
    deadline = time.monotonic() + 3
    while "newdir" not in os.listdir(b.path):
        assert time.monotonic() < deadline, "directory change not visible on the other mount"
        time.sleep(0.1)


WRITER = """
import hashlib, os, random, sys
root, idx = sys.argv[1], int(sys.argv[2])
rng = random.Random(idx)
out = []
for i in range(20):
    data = rng.randbytes(rng.randrange(1, 600_000))
    name = os.path.join(root, f"p{idx}-{i}")
    with open(name, "wb") as f:
        f.write(data)
    out.append(f"{name} {hashlib.sha256(data).hexdigest()}")
with open(os.path.join(root, "shared.log"), "ab") as f:
    f.write(f"writer {idx}\\n".encode())
print("\\n".join(out))
"""


def test_concurrent_writers_in_several_processes(volume: Volume) -> None:
    a = volume.mount()
    b = volume.mount()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str((a if i % 2 else b).path), str(i)],
                         stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    results = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for text in results:
        for line in text.strip().splitlines():
            name, digest = line.split()
            # Verify through the *other* mount, which did not write it.
            other = a.path if name.startswith(str(b.path)) else b.path
            assert sha256_file(other / os.path.basename(name)) == digest
    assert len([n for n in os.listdir(a.path) if n.startswith("p")]) == 80


KILLED_WRITER = """
import os, sys
root = sys.argv[1]
for i in range(10_000):
    os.makedirs(os.path.join(root, f"d{i % 7}"), exist_ok=True)
    with open(os.path.join(root, f"d{i % 7}", f"f{i}"), "wb") as f:
        f.write(os.urandom(50_000 + i))
    if i % 5 == 0:
        os.rename(os.path.join(root, f"d{i % 7}", f"f{i}"), os.path.join(root, f"r{i}"))
"""


def test_kill_9_mid_write_leaves_consistent_namespace(volume: Volume) -> None:
    m = volume.mount()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(m.path)],
                              stderr=subprocess.DEVNULL)
    time.sleep(3)
    os.kill(m.pid, signal.SIGKILL)  # the fusecache client dies mid-stream
    wait_pid(m.pid)
    writer.kill()
    writer.wait()
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    fresh = volume.mount()
    # Every name resolves, every file reads to its stated size, link counts add up.
    files = 0
    for dirpath, dirnames, filenames in os.walk(fresh.path):
        assert os.stat(dirpath).st_nlink == 2 + len(dirnames)
        for name in filenames:
            path = Path(dirpath) / name
            size = os.stat(path).st_size
            assert len(path.read_bytes()) == size
            files += 1
    assert files > 0
    # The namespace stays usable: create, write, delete everywhere.
    for d in [p for p in fresh.path.iterdir() if p.is_dir()]:
        (d / "after").write_bytes(b"ok")
        assert (d / "after").read_bytes() == b"ok"
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
