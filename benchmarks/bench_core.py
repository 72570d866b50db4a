"""Core filesystem benchmark: fusecache beside juicefs, raw S3 and local disk, in one run.

    .venv/bin/python -m benchmarks.bench_core [--big-mib 1024] [--small 2000] [--meta-ops 10000]

Starts its own redis-server and S3 server (tests/servers.py), formats one fusecache and one
juicefs volume on them, runs the same workloads on both mounts, and prints figures with the
ratio fusecache/juicefs. Reads are "cold": each read phase runs on a fresh mount with the
kernel page cache of the file dropped. Figures, not a test: machines here are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.reference import drop_page_cache, juicefs_binary, timed  # noqa: E402
from tests.servers import find_tool, start_redis, start_s3  # noqa: E402

MiB = 1 << 20


@dataclass
class Result:
    name: str
    unit: str
    value: float


def seq_write(path: Path, mib: int) -> float:
    block = os.urandom(MiB)

    def run() -> None:
        with open(path, "wb") as f:
            for i in range(mib):
                f.write(block[i % 64 :] + block[: i % 64])
    return mib / timed(run)


def seq_read(path: Path) -> float:
    size = path.stat().st_size

    def run() -> None:
        with open(path, "rb", buffering=0) as f:
            while f.read(MiB):
                pass
    return size / MiB / timed(run)


def small_write(root: Path, count: int, size: int) -> float:
    root.mkdir(exist_ok=True)
    data = os.urandom(size)

    def run() -> None:
        for i in range(count):
            with open(root / f"f{i:05d}", "wb") as f:
                f.write(data)
    return count / timed(run)


def small_read(root: Path, count: int) -> float:
    def run() -> None:
        for i in range(count):
            with open(root / f"f{i:05d}", "rb") as f:
                f.read()
    return count / timed(run)


def meta_ops(root: Path, count: int) -> dict[str, float]:
    root.mkdir(exist_ok=True)
    names = [root / f"e{i:05d}" for i in range(count)]
    out = {}

    def create() -> None:
        for n in names:
            os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))

    out["create"] = count / timed(create)
    out["stat"] = count / timed(lambda: [os.stat(n) for n in names])
    out["unlink"] = count / timed(lambda: [os.unlink(n) for n in names])
    return out


class FsUnderTest:
    name = ""

    def mount(self) -> Path: ...

    def umount(self) -> None: ...


def run_workloads(fs: FsUnderTest, args: argparse.Namespace) -> dict[str, float]:
    res: dict[str, float] = {}
    mnt = fs.mount()
    res["seq write MiB/s"] = seq_write(mnt / "big", args.big_mib)
    res["small write files/s"] = small_write(mnt / "small", args.small, args.small_kib * 1024)
    ops = meta_ops(mnt / "meta", args.meta_ops)
    res.update({f"{k} ops/s": v for k, v in ops.items()})
    fs.umount()
    mnt = fs.mount()  # cold: fresh client, empty caches
    drop_page_cache(mnt / "big")
    res["seq read cold MiB/s"] = seq_read(mnt / "big")
    res["small read cold files/s"] = small_read(mnt / "small", args.small)
    fs.umount()
    return res


class Fusecache(FsUnderTest):
    name = "fusecache"

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path, extra: list[str]):
        self.meta_url, self.env, self.workdir, self.extra = meta_url, env, workdir, extra
        self.mnt = workdir / "fc-mnt"
        self.mnt.mkdir()
        self.cli = [sys.executable, "-m", "fusecache.cli.main"]
        subprocess.run([*self.cli, "format", meta_url, "benchvol", "--storage", "s3", "--bucket", bucket],
                       check=True, env={**os.environ, **env}, capture_output=True)

    def mount(self) -> Path:
        subprocess.run([*self.cli, "mount", self.meta_url, str(self.mnt), "-d", "--log",
                        str(self.workdir / "fc.log"), *self.extra], check=True, env={**os.environ, **self.env},
                       capture_output=True)
        return self.mnt

    def umount(self) -> None:
        subprocess.run([*self.cli, "umount", str(self.mnt)], check=True, capture_output=True)
        time.sleep(0.5)  # let the client process exit


class Juicefs(FsUnderTest):
    name = "juicefs"

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path):
        self.meta_url, self.workdir = meta_url, workdir
        self.exe = juicefs_binary()
        self.mnt = workdir / "jfs-mnt"
        self.mnt.mkdir()
        self.cache = workdir / "jfs-cache"
        subprocess.run([self.exe, "format", "--storage", "s3", "--bucket", bucket,
                        "--access-key", env["ACCESS_KEY"], "--secret-key", env["SECRET_KEY"],
                        "--no-update", meta_url, "benchjfs"], check=True, capture_output=True)

    def mount(self) -> Path:
        if self.cache.exists():
            shutil.rmtree(self.cache)  # cold reads: juicefs keeps a disk cache by default
        subprocess.run([self.exe, "mount", "-d", "--no-usage-report", "--cache-dir", str(self.cache),
                        "--log", str(self.workdir / "jfs.log"), self.meta_url, str(self.mnt)],
                       check=True, capture_output=True)
        return self.mnt

    def umount(self) -> None:
        subprocess.run([self.exe, "umount", str(self.mnt)], check=True, capture_output=True)


def reference_rows(s3: object, workdir: Path, big_mib: int) -> dict[str, float]:
    """Raw boto3 GET/PUT (8 streams and 1) and local-disk sequential I/O, in MiB/s."""
    from benchmarks import reference as ref

    bucket = s3.make_bucket("refbench")  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for threads in (8, 1):
        put, get = ref.boto3_put_get(bucket, s3.access_key, s3.secret_key,  # type: ignore[attr-defined]
                                     threads=threads, total=256 * MiB)
        for t in (put, get):
            out[f"{t.name} MiB/s"] = t.nbytes / t.seconds / MiB
    write, read = ref.disk_write_read(workdir, size=big_mib * MiB)
    out["local disk seq write MiB/s"] = write.nbytes / write.seconds / MiB
    out["local disk seq read MiB/s"] = read.nbytes / read.seconds / MiB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=110)
    parser.add_argument("--meta-ops", type=int, default=10000)
    parser.add_argument("--no-juicefs", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--fc-opt", action="append", default=[], help="extra fusecache mount option")
    args = parser.parse_args()

    redis = start_redis()
    s3 = start_s3()
    workdir = Path(tempfile.mkdtemp(prefix="fc-bench-"))
    env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key}
    rows: dict[str, dict[str, float]] = {}
    try:
        if not args.no_reference:
            rows["reference"] = reference_rows(s3, workdir, args.big_mib)
        fc = Fusecache(redis.url(1), s3.make_bucket("fcbench"), env, workdir, args.fc_opt)
        rows["fusecache"] = run_workloads(fc, args)
        if not args.no_juicefs and find_tool("juicefs"):
            jfs = Juicefs(redis.url(2), s3.make_bucket("jfsbench"), env, workdir)
            rows["juicefs"] = run_workloads(jfs, args)
    finally:
        for mp in (workdir / "fc-mnt", workdir / "jfs-mnt"):
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        time.sleep(1)
        s3.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nS3 server: {s3.kind} on loopback; big file {args.big_mib} MiB, "
          f"{args.small} files of {args.small_kib} KiB, {args.meta_ops} metadata ops\n")
    for key, value in rows.get("reference", {}).items():
        print(f"  reference {key:<34} {value:10.1f}")
    print()
    fcr, jr = rows["fusecache"], rows.get("juicefs", {})
    print(f"  {'workload':<28} {'fusecache':>12} {'juicefs':>12} {'ratio':>8}")
    for key, value in fcr.items():
        other = jr.get(key)
        ratio = f"{value / other:8.2f}" if other else "       -"
        print(f"  {key:<28} {value:12.1f} {other if other else float('nan'):12.1f} {ratio}")


if __name__ == "__main__":
    main()
