"""`mount --memory-budget`: block data in the client's memory stays within the budget, also
when the object store stops answering and writers pile up; what does not fit is refused."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

from tests.fuse.helpers import Volume, format_volume, run_cli, sha256_file
from tests.lossy_proxy import LossyProxy
from tests.servers import S3Server

MiB = 1 << 20


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_writers_stalled_by_the_store_stay_within_the_budget(
        meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> None:
    proxy = LossyProxy(s3_server.port)
    bucket = bucket_url.replace(f":{s3_server.port}/", f":{proxy.port}/")
    volume = format_volume(meta_url, tmp_path, "s3", s3_server, bucket, "--block-size", "1M")
    budget = 16 * MiB
    try:
        m = volume.mount("--memory-budget", "16MiB", "--cache", "mem:2MiB")
        (m.path / "warm").write_bytes(os.urandom(MiB))  # libraries and pools in use: the idle size
        idle = _rss(m.pid)
        rng = random.Random(5)
        blobs = {f"w{i}": rng.randbytes(12 * MiB) for i in range(4)}
        proxy.hold()  # the store stops answering: every written block has to wait in memory
        writers = [threading.Thread(target=(m.path / name).write_bytes, args=(data,)) for name, data in blobs.items()]
        for t in writers:
            t.start()
        peak = idle
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak = max(peak, _rss(m.pid))
            time.sleep(0.02)
        proxy.release()
        for t in writers:
            t.join(60)
        # Four files each fill one block of their own on top of the budget (memory.py).
        assert peak - idle <= budget + 4 * MiB + 8 * MiB, f"grew {(peak - idle) / MiB:.1f} MiB"
        for name, data in blobs.items():
            assert sha256_file(m.path / name) == hashlib.sha256(data).hexdigest()
    finally:
        proxy.release()
        volume.cleanup()
        proxy.close()


def test_a_mem_tier_larger_than_the_budget_allows_is_refused(file_volume: Volume) -> None:
    meta_url, mnt = file_volume.meta_url, file_volume.workdir / "m"
    mnt.mkdir()
    done = run_cli("mount", meta_url, str(mnt), "--memory-budget", "256MiB", "--cache", "mem:200MiB", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fusecache: the mem cache tier (200.0MiB) may use at most half of the memory budget (256.0MiB): "
        "raise --memory-budget or shrink the tier"]
    done = run_cli("mount", meta_url, str(mnt), "--memory-budget", "lots", check=False)
    assert done.returncode == 2 and "--memory-budget" in done.stderr and "Traceback" not in done.stderr
