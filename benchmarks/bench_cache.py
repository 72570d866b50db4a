"""Cache benchmark: cold / warm (SSD) / hot (page cache) reads and warmup, beside raw S3 GET,
local-disk reads and juicefs with an equal cache, all measured in one run.

    .venv/bin/python -m benchmarks.bench_cache [--big-mib 1024] [--small 4000] [--small-kib 110]

Starts its own redis-server and S3 server (tests/servers.py). Workloads, for fusecache and
(when installed) juicefs, each with one SSD cache directory of `--cache-mib`:

- cold: a fresh client with an empty cache, reading the data from the store;
- warm: a fresh client whose cache holds the data, with the cache files dropped from the
  kernel page cache (sync + fadvise DONTNEED), so they are read from disk;
- hot:  the same files read again at once through the same client (kernel page cache);
- warmup: `warmup` of everything into an empty cache, then a read that must make no GETs;
- readahead: the cold 1 GiB read again with `--readahead 0`; and, because a loopback store
  answers in microseconds (and this machine is CPU-bound), once more through a proxy that
  adds `--latency-ms` to every request, as a remote store would: default vs `--readahead 0`.

Figures, not a test: the machine is shared and noisy. Targets: warm 1 GiB read ≥ 50 % of the
local-disk read; hot ≥ 1 GB/s; cold ≥ single-stream boto3 GET.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import reference as ref  # noqa: E402
from benchmarks.latency_proxy import LatencyProxy  # noqa: E402
from tests.servers import find_tool, redis_and_s3  # noqa: E402

MiB = 1 << 20
Rows = dict[str, float]


# -- workloads ---------------------------------------------------------------------------------


def write_data(root: Path, big_mib: int, small: int, small_kib: int) -> None:
    block = bytearray(os.urandom(MiB))
    with open(root / "big", "wb") as f:
        for i in range(big_mib):
            block[:8] = i.to_bytes(8, "little")  # every MiB differs
            f.write(block)
    (root / "small").mkdir()
    data = bytearray(os.urandom(small_kib * 1024))
    for i in range(small):
        data[:8] = i.to_bytes(8, "little")
        with open(root / "small" / f"f{i:05d}", "wb") as f:
            f.write(data)


def read_big(root: Path) -> float:
    """MiB/s of one sequential read of the big file in 1 MiB reads."""
    size = (root / "big").stat().st_size
    buf = bytearray(MiB)
    start = time.perf_counter()
    with open(root / "big", "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return size / MiB / (time.perf_counter() - start)


def read_small(root: Path, count: int) -> tuple[float, float]:
    """(files/s, MiB/s) of reading every small file once."""
    total = 0
    start = time.perf_counter()
    for i in range(count):
        with open(root / "small" / f"f{i:05d}", "rb") as f:
            total += len(f.read())
    secs = time.perf_counter() - start
    return count / secs, total / MiB / secs


# -- filesystems -------------------------------------------------------------------------------


class Fusecache:
    name = "fusecache"

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path, cache_mib: int,
                 mem_mib: int) -> None:
        self.meta_url, self.env, self.workdir = meta_url, {**os.environ, **env}, workdir
        self.mnt = workdir / "fc-mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache_dir = workdir / "fc-cache"
        self.cache_mib = cache_mib
        self.tiers = [*(["--cache", f"mem:{mem_mib}MiB"] if mem_mib else []),
                      "--cache", f"ssd:{self.cache_dir}:{cache_mib}MiB"]
        self.cli = [sys.executable, "-m", "fusecache.cli.main"]
        self._run("format", meta_url, "benchvol", "--storage", "s3", "--bucket", bucket)

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self.cli, *args], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"fusecache {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def mount(self, *extra: str) -> Path:
        self._run("mount", self.meta_url, str(self.mnt), "-d", "--log", str(self.workdir / "fc.log"),
                  *self.tiers, *extra)
        return self.mnt

    def umount(self) -> None:
        self._run("umount", str(self.mnt))
        self._wait_client_exit()

    def _wait_client_exit(self) -> None:
        # The client writes its MEM tier down and releases the cache dir after the unmount.
        lock = next(self.cache_dir.glob("*/.lock"), None)
        deadline = time.monotonic() + 120
        while lock is not None and time.monotonic() < deadline:
            pid = lock.read_text().strip()
            if not pid or not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def gets(self) -> int:
        return int(json.loads(self._run("stats", str(self.mnt), "--json"))["store"]["gets"])

    def warmup(self, *paths: Path) -> None:
        self._run("warmup", *map(str, paths), "-p", "16", "-q")


class Juicefs:
    name = "juicefs"

    def __init__(self, redis_url: str, bucket: str, env: dict[str, str], workdir: Path, cache_mib: int) -> None:
        self.jfs = ref.JuiceFSMount(redis_url, bucket, env["ACCESS_KEY"], env["SECRET_KEY"],
                                    workdir=str(workdir / "jfs"), mount_args=["--cache-size", str(cache_mib)])
        self.jfs.format()
        self.cache_dir = self.jfs.cache_dir
        self.mnt = self.jfs.mountpoint

    def mount(self, *extra: str) -> Path:
        return self.jfs.mount()

    def umount(self) -> None:
        self.jfs.umount()

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def gets(self) -> int:
        return -1  # not compared

    def warmup(self, *paths: Path) -> None:
        done = subprocess.run([ref.juicefs_binary(), "warmup", "-p", "16", *map(str, paths)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"juicefs warmup failed: {done.stderr.strip()[-500:]}")

    def cleanup(self) -> None:
        self.jfs.cleanup()


def run_workloads(fs: Fusecache | Juicefs, args: argparse.Namespace) -> Rows:
    rows: Rows = {}
    total_mib = args.big_mib + args.small * args.small_kib / 1024
    mnt = fs.mount()
    write_data(mnt, args.big_mib, args.small, args.small_kib)
    fs.umount()

    # Cold: empty cache, fresh client; best of two runs (the machine is shared and noisy).
    for _ in range(2):
        fs.clear_cache()
        mnt = fs.mount()
        best(rows, "1 GiB cold MiB/s", read_big(mnt))
        files, mib = read_small(mnt, args.small)
        best(rows, "small cold files/s", files)
        best(rows, "small cold MiB/s", mib)
        fs.umount()

    # Warm: the cache holds everything, read from disk by a fresh client; then hot, right
    # away (this VM's DAMON pages out memory idle for a few seconds, page cache included).
    ref.drop_page_cache(fs.cache_dir)
    mnt = fs.mount()
    gets = fs.gets()
    rows["1 GiB warm MiB/s"] = read_big(mnt)
    rows["1 GiB hot MiB/s"] = read_big(mnt)
    rows["small warm files/s"], rows["small warm MiB/s"] = read_small(mnt, args.small)
    rows["small hot files/s"], rows["small hot MiB/s"] = read_small(mnt, args.small)
    if isinstance(fs, Fusecache):
        rows["warm GETs"] = fs.gets() - gets
    fs.umount()

    # Warmup into an empty cache, then a read of it all.
    fs.clear_cache()
    mnt = fs.mount()
    secs = ref.timed(lambda: fs.warmup(mnt / "big", mnt / "small"))
    rows["warmup MiB/s"] = total_mib / secs
    rows["warmup files/s"] = (args.small + 1) / secs
    gets = fs.gets()
    ref.drop_page_cache(fs.cache_dir)
    rows["1 GiB after warmup MiB/s"] = read_big(mnt)
    if isinstance(fs, Fusecache):
        rows["GETs after warmup"] = fs.gets() - gets
    fs.umount()

    # Readahead off: the cold big read again, best of two as well.
    if isinstance(fs, Fusecache):
        for _ in range(2):
            fs.clear_cache()
            mnt = fs.mount("--readahead", "0")
            best(rows, "1 GiB cold, readahead 0 MiB/s", read_big(mnt))
            fs.umount()
    return rows


def best(rows: Rows, key: str, value: float) -> None:
    rows[key] = max(rows.get(key, 0.0), value)


def readahead_with_latency(redis_url: str, s3: object, env: dict[str, str], workdir: Path,
                           args: argparse.Namespace) -> Rows:
    """Cold sequential reads through a store `--latency-ms` away: default vs no readahead."""
    s3.make_bucket("fclatency")  # type: ignore[attr-defined]
    proxy = LatencyProxy(s3.port, 0.0)  # type: ignore[attr-defined]
    bucket = f"http://127.0.0.1:{proxy.port}/fclatency"
    rows: Rows = {}
    try:
        fc = Fusecache(redis_url, bucket, env, workdir / "latency", args.cache_mib, args.mem_mib)
        mnt = fc.mount()
        write_data(mnt, args.big_mib, 0, 0)
        fc.umount()
        proxy.delay = args.latency_ms / 1000
        _, get = ref.boto3_put_get(bucket, s3.access_key, s3.secret_key, threads=1,  # type: ignore[attr-defined]
                                   total=128 * MiB)
        rows["boto3 GET x1 MiB/s"] = get.nbytes / get.seconds / MiB
        for label, flags in (("readahead 0", ["--readahead", "0"]), ("readahead 4 (default)", []),
                             ("readahead 0", ["--readahead", "0"]), ("readahead 4 (default)", [])):
            fc.clear_cache()
            mnt = fc.mount(*flags)
            speed = read_big(mnt)
            fc.umount()
            best(rows, f"1 GiB cold, {label} MiB/s", speed)
    finally:
        proxy.close()
    return rows


def reference_rows(s3: object, workdir: Path, big_mib: int) -> Rows:
    bucket = s3.make_bucket("refbench")  # type: ignore[attr-defined]
    out: Rows = {}
    for threads in (1, 8):
        _, get = ref.boto3_put_get(bucket, s3.access_key, s3.secret_key,  # type: ignore[attr-defined]
                                   threads=threads, total=256 * MiB)
        out[f"boto3 GET x{threads} MiB/s"] = get.nbytes / get.seconds / MiB
    _, read = ref.disk_write_read(workdir, size=big_mib * MiB)
    out["local disk read MiB/s"] = read.nbytes / read.seconds / MiB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=4000)
    parser.add_argument("--small-kib", type=int, default=110)
    parser.add_argument("--cache-mib", type=int, default=0, help="SSD cache size (default: data size + 25 %%)")
    parser.add_argument("--mem-mib", type=int, default=256, help="fusecache MEM tier above the SSD tier (0: none)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="store latency of the readahead test")
    parser.add_argument("--no-juicefs", action="store_true")
    args = parser.parse_args()
    data_mib = args.big_mib + args.small * args.small_kib // 1024
    args.cache_mib = args.cache_mib or int(data_mib * 1.25) + 64

    with redis_and_s3() as (redis, s3):
        workdir = Path(tempfile.mkdtemp(prefix="fc-bench-cache-"))
        env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key}
        results: dict[str, Rows] = {}
        juicefs: Juicefs | None = None
        try:
            results["reference"] = reference_rows(s3, workdir, args.big_mib)
            fc = Fusecache(redis.url(1), s3.make_bucket("fcbench"), env, workdir, args.cache_mib, args.mem_mib)
            results["fusecache"] = run_workloads(fc, args)
            results["latency"] = readahead_with_latency(redis.url(3), s3, env, workdir, args)
            if not args.no_juicefs and find_tool("juicefs"):
                juicefs = Juicefs(redis.url(2), s3.make_bucket("jfsbench"), env, workdir, args.cache_mib)
                results["juicefs"] = run_workloads(juicefs, args)
        finally:
            if juicefs is not None:
                juicefs.cleanup()
            for mp in (workdir / "fc-mnt", workdir / "latency" / "fc-mnt"):
                if os.path.ismount(mp):
                    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            time.sleep(1)  # let the clients exit before their servers stop
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, Rows], args: argparse.Namespace) -> None:
    reference, fc, jfs = results["reference"], results["fusecache"], results.get("juicefs", {})
    print(f"\n1 GiB = {args.big_mib} MiB file; small = {args.small} files of {args.small_kib} KiB; "
          f"SSD cache {args.cache_mib} MiB for both filesystems (fusecache: plus a {args.mem_mib} MiB MEM tier)\n")
    for key, value in reference.items():
        print(f"  reference {key:<32} {value:10.1f}")
    print(f"\n  {'workload':<34} {'fusecache':>11} {'juicefs':>11} {'ratio':>7}")
    for key, value in fc.items():
        other = jfs.get(key)
        ratio = f"{value / other:7.2f}" if other else "      -"
        other_text = f"{other:11.1f}" if other is not None else f"{'-':>11}"
        print(f"  {key:<34} {value:11.1f} {other_text} {ratio}")
    latency = results["latency"]
    print(f"\n  with {args.latency_ms:.0f} ms of store latency (proxy):")
    for key, value in latency.items():
        print(f"  {key:<34} {value:11.1f}")
    checks = [
        ("warm 1 GiB ≥ 50 % of local disk read", fc["1 GiB warm MiB/s"] >= 0.5 * reference["local disk read MiB/s"]),
        ("hot 1 GiB ≥ 1 GB/s", fc["1 GiB hot MiB/s"] * MiB >= 1e9),
        ("cold 1 GiB ≥ single-stream boto3 GET", fc["1 GiB cold MiB/s"] >= reference["boto3 GET x1 MiB/s"]),
        ("readahead speeds up the cold read (loopback store)",
         fc["1 GiB cold MiB/s"] > fc["1 GiB cold, readahead 0 MiB/s"]),
        (f"readahead speeds up the cold read ({args.latency_ms:.0f} ms store)",
         latency["1 GiB cold, readahead 4 (default) MiB/s"] > latency["1 GiB cold, readahead 0 MiB/s"]),
        ("warm reads make no GETs", fc["warm GETs"] == 0),
        ("reads after warmup make no GETs", fc["GETs after warmup"] == 0),
    ]
    print()
    for what, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {what}")


if __name__ == "__main__":
    main()
