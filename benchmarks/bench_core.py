"""Core filesystem benchmark: fusecache beside juicefs, raw S3 and local disk, in one run.

    .venv/bin/python -m benchmarks.bench_core [--big-mib 1024] [--small 2000] [--meta-ops 10000]
                                              [--before DIR]

Starts its own redis-server and S3 server (tests/servers.py), formats one fusecache and one
juicefs volume on them, runs the same workloads on both mounts, and prints figures with the
ratio fusecache/juicefs, and the metadata rows beside the "FUSE floor": the same operations
on an in-memory pyfuse3 + trio filesystem (fuse_floor.py). `--before DIR` also runs the
fusecache of another checkout (e.g. `git worktree add /tmp/before <commit>`) on the same
servers, for a before/after comparison in one run. Reads are "cold": each read
phase runs on a fresh mount with the kernel page cache of the file dropped. Figures, not a
test: machines here are noisy.
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
from tests.servers import find_tool, redis_and_s3  # noqa: E402

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
    # Past the kernel's 1 s entry/attr caches (fusecache's and juicefs's default), so every
    # stat is a lookup that reaches the filesystem, however fast the creates were.
    time.sleep(1.1)
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

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path, extra: list[str],
                 source: Path = REPO, name: str = "fusecache"):
        self.meta_url, self.workdir, self.extra, self.name = meta_url, workdir, extra, name
        # The code of `source` (this checkout, or an earlier one): imported from there.
        self.env = {**os.environ, **env, "PYTHONPATH": str(source)}
        self.source = source
        self.mnt = workdir / f"{name}-mnt"
        self.mnt.mkdir()
        self.cli = [sys.executable, "-m", "fusecache.cli.main"]
        self._run("format", meta_url, name, "--storage", "s3", "--bucket", bucket)

    def _run(self, *args: str) -> None:
        subprocess.run([*self.cli, *args], check=True, env=self.env, capture_output=True, cwd=self.source)

    def mount(self) -> Path:
        self._run("mount", self.meta_url, str(self.mnt), "-d", "--log", str(self.workdir / f"{self.name}.log"),
                  *self.extra)
        return self.mnt

    def umount(self) -> None:
        self._run("umount", str(self.mnt))
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


class FuseFloor(FsUnderTest):
    """benchmarks/fuse_floor.py: what pyfuse3 + trio allow with no metadata engine behind."""

    name = "floor"

    def __init__(self, workdir: Path):
        self.mnt = workdir / "floor-mnt"
        self.mnt.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> Path:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuse_floor", str(self.mnt)], cwd=REPO)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the FUSE floor filesystem did not mount")
            time.sleep(0.05)
        return self.mnt

    def umount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True, capture_output=True)
        if self.proc is not None:
            self.proc.wait(timeout=20)


def floor_rows(workdir: Path, meta_ops_count: int) -> dict[str, float]:
    floor = FuseFloor(workdir)
    mnt = floor.mount()
    try:
        return {f"{k} ops/s": v for k, v in meta_ops(mnt / "meta", meta_ops_count).items()}
    finally:
        floor.umount()


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
    parser.add_argument("--before", type=Path, help="also run the fusecache of this checkout (before/after)")
    args = parser.parse_args()

    with redis_and_s3() as (redis, s3):
        workdir = Path(tempfile.mkdtemp(prefix="fc-bench-"))
        env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key}
        rows: dict[str, dict[str, float]] = {}
        try:
            if not args.no_reference:
                rows["reference"] = reference_rows(s3, workdir, args.big_mib)
            rows["floor"] = floor_rows(workdir, args.meta_ops)
            if args.before:
                before = Fusecache(redis.url(3), s3.make_bucket("beforebench"), env, workdir, args.fc_opt,
                                   source=args.before.resolve(), name="before")
                rows["before"] = run_workloads(before, args)
            fc = Fusecache(redis.url(1), s3.make_bucket("fcbench"), env, workdir, args.fc_opt)
            rows["fusecache"] = run_workloads(fc, args)
            if not args.no_juicefs and find_tool("juicefs"):
                jfs = Juicefs(redis.url(2), s3.make_bucket("jfsbench"), env, workdir)
                rows["juicefs"] = run_workloads(jfs, args)
        finally:
            for mp in (workdir / "fusecache-mnt", workdir / "before-mnt", workdir / "jfs-mnt", workdir / "floor-mnt"):
                if os.path.ismount(mp):
                    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            time.sleep(1)  # let the clients exit before their servers stop
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nS3 server: {s3.kind} on loopback; big file {args.big_mib} MiB, "
          f"{args.small} files of {args.small_kib} KiB, {args.meta_ops} metadata ops\n")
    for key, value in rows.get("reference", {}).items():
        print(f"  reference {key:<34} {value:10.1f}")
    print()
    fcr, jr, fr, br = rows["fusecache"], rows.get("juicefs", {}), rows.get("floor", {}), rows.get("before", {})
    before_head = f" {'before':>12} {'vs before':>9}" if br else ""
    print(f"  {'workload':<28} {'fusecache':>12}{before_head} {'juicefs':>12} {'ratio':>8} {'FUSE floor':>12} "
          f"{'of floor':>9}")
    for key, value in fcr.items():
        other, floor, old = jr.get(key), fr.get(key), br.get(key)
        ratio = f"{value / other:8.2f}" if other else f"{'-':>8}"
        floor_cols = f"{floor:12.1f} {value / floor:9.2f}" if floor else f"{'-':>12} {'-':>9}"
        before_cols = f" {old:12.1f} {value / old:9.2f}" if old else ""
        print(f"  {key:<28} {value:12.1f}{before_cols} {other if other else float('nan'):12.1f} {ratio} {floor_cols}")
    if br:
        print(f"\n  before: fusecache of {args.before}, on the same servers in the same run")
    print("\n  FUSE floor: benchmarks/fuse_floor.py, an in-memory pyfuse3 + trio filesystem (no metadata engine)")


if __name__ == "__main__":
    main()
