"""fusecache beside JuiceFS on the workloads users run, in one run on the same servers.

    .venv/bin/python -m benchmarks.parity [--quick] [--wan] [--no-juicefs] [--fc-opt=--writeback]

Starts its own redis-server and S3 server (tests/servers.py), formats a fusecache and a
JuiceFS volume on them and runs the same workloads on both, one filesystem after the other,
with the same cache size (fusecache `--cache ssd:DIR:SIZE`, JuiceFS `--cache-dir DIR
--cache-size SIZE`). Every byte read is checked by hash. Rows:

- seq write of the big file + fsync; the same including the unmount that flushes it;
- cold / warm (SSD cache) / hot (page cache) seq read of the big file;
- random 4 KiB reads on the warm big file: fio, 4 jobs, O_DIRECT (needs `fio`);
- small files (~110 KiB) write; cold and warm read with 1 reader and with 8 forked reader
  processes taking a shuffled list round-robin (what `DataLoader(shuffle=True,
  num_workers=8)` does);
- warmup (`fusecache warmup` / `juicefs warmup`) of the small-file tree and of the big file;
- create / stat / readdir / unlink of empty files;
- peak RSS of the client process and its children, per filesystem.

Beside them: raw boto3 GET/PUT and local disk of the same run, and the FUSE floor
(benchmarks/fuse_floor.py, pyfuse3 + trio with nothing behind) for the metadata rows.
`--wan` puts the S3 server behind benchmarks/latency_proxy.py: +25 ms per request and a
500 Mbit/s link, both filesystems and the raw S3 reference alike. Figures, not a test:
these machines are noisy, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.reference import drop_page_cache, juicefs_binary  # noqa: E402
from tests.servers import find_tool, redis_and_s3  # noqa: E402

MiB = 1 << 20
CACHE_SIZE_MIB = 8192
WAN_DELAY = 0.025  # seconds added to every request (one round trip)
WAN_RATE = 500e6 / 8  # bytes per second each way: 500 Mbit/s


# ------------------------------------------------------------------ memory of the client


def _tree_rss(root_pids: list[int]) -> int:
    """Resident bytes of these processes and all their descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack, seen = 0, list(root_pids), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def pids_serving(mountpoint: Path) -> list[int]:
    """Processes whose command line names this mountpoint (the FUSE client and, for
    JuiceFS, its supervisor)."""
    wanted = str(mountpoint).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if wanted in args:
                found.append(int(entry))
    return found


class PeakRss:
    """Samples the RSS of the processes serving a mountpoint, 20 times a second."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.peak = 0
        self._pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if not self._pids:
                self._pids = pids_serving(self.mountpoint)
            if self._pids:
                self.peak = max(self.peak, _tree_rss(self._pids))

    def new_client(self) -> None:
        self._pids = []  # remounted: find the new process

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# ------------------------------------------------------------------ filesystems


class Filesystem:
    name = ""
    mnt: Path
    cache_dir: Path

    def mount(self, writeback: bool = False) -> Path: ...

    def umount(self) -> None: ...

    def warmup(self, paths: list[Path]) -> None: ...

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def _check(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}… failed ({done.returncode}): {done.stderr[-1500:]}")


class Fusecache(Filesystem):
    name = "fusecache"

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path, extra: list[str]):
        self.meta_url, self.workdir, self.extra = meta_url, workdir, extra
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.mnt = workdir / "fc-mnt"
        self.mnt.mkdir()
        self.cache_dir = workdir / "fc-cache"
        self.cli = [sys.executable, "-m", "fusecache.cli.main"]
        _check([*self.cli, "format", meta_url, "bench", "--storage", "s3", "--bucket", bucket,
                "--trash-days", "0"], self.env, REPO)

    def mount(self, writeback: bool = False) -> Path:
        _check([*self.cli, "mount", self.meta_url, str(self.mnt), "-d", "--log", str(self.workdir / "fc.log"),
                "--cache", f"ssd:{self.cache_dir}:{CACHE_SIZE_MIB}MiB", *(["--writeback"] if writeback else []),
                *self.extra], self.env, REPO)
        return self.mnt

    def umount(self) -> None:
        pids = pids_serving(self.mnt)
        _check([*self.cli, "umount", str(self.mnt)], self.env, REPO)
        _wait_gone(pids)

    def warmup(self, paths: list[Path]) -> None:
        _check([*self.cli, "warmup", "-q", *map(str, paths)], self.env, REPO)


class Juicefs(Filesystem):
    name = "juicefs"

    def __init__(self, meta_url: str, bucket: str, env: dict[str, str], workdir: Path):
        self.meta_url, self.workdir = meta_url, workdir
        self.exe = juicefs_binary()
        self.env = {**os.environ, **env}
        self.mnt = workdir / "jfs-mnt"
        self.mnt.mkdir()
        self.cache_dir = workdir / "jfs-cache"
        _check([self.exe, "format", "--storage", "s3", "--bucket", bucket, "--trash-days", "0", "--no-update",
                meta_url, "benchjfs"], self.env)

    def mount(self, writeback: bool = False) -> Path:
        _check([self.exe, "mount", "-d", "--no-usage-report", "--no-syslog", "--backup-meta", "0",
                *(["--writeback"] if writeback else []),
                "--cache-dir", str(self.cache_dir), "--cache-size", str(CACHE_SIZE_MIB),
                "--log", str(self.workdir / "jfs.log"), self.meta_url, str(self.mnt)], self.env)
        return self.mnt

    def umount(self) -> None:
        pids = pids_serving(self.mnt)
        _check([self.exe, "umount", str(self.mnt)], self.env)
        _wait_gone(pids)

    def warmup(self, paths: list[Path]) -> None:
        _check([self.exe, "warmup", *map(str, paths)], self.env)


def _wait_gone(pids: list[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)


# ------------------------------------------------------------------ workloads


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def big_block(i: int) -> bytes:
    """MiB number i of the big file: distinct, so a misplaced block shows in the hash."""
    return random.Random(i).randbytes(MiB)


def write_big(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb", buffering=0) as f:
        for i in range(mib):
            block = big_block(i % 64)
            digest.update(block)
            f.write(block)
        os.fsync(f.fileno())
    return digest.hexdigest()


def read_whole(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(memoryview(buf)[:n])
    return digest.hexdigest()


def small_contents(count: int, size: int) -> list[bytes]:
    rng = random.Random(7)
    # ~size each, varied like real samples, every one distinct
    return [rng.randbytes(size // 2 + rng.randrange(size)) for _ in range(count)]


def write_small(root: Path, files: list[bytes]) -> None:
    root.mkdir(exist_ok=True)
    for i, data in enumerate(files):
        with open(root / f"s{i:05d}", "wb") as f:
            f.write(data)


def dataloader_read(root: Path, hashes: list[str], readers: int) -> None:
    """`readers` forked processes read a shuffled list of the files round-robin, each file
    checked by hash; raises if any reader saw wrong bytes."""
    order = list(range(len(hashes)))
    random.Random(len(hashes)).shuffle(order)
    children = []
    for k in range(readers):
        pid = os.fork()
        if pid == 0:  # a reader: exit status 0 only if every file matched
            status = 0
            try:
                for i in order[k::readers]:
                    with open(root / f"s{i:05d}", "rb") as f:
                        if sha(f.read()) != hashes[i]:
                            status = 3
            except BaseException:
                status = 4
            os._exit(status)
        children.append(pid)
    bad = [os.waitpid(pid, 0)[1] for pid in children]
    if any(bad):
        raise RuntimeError(f"{root}: a reader saw wrong bytes or failed (statuses {bad})")


def fio_randread(path: Path, seconds: int) -> float:
    """IOPS of 4 KiB random reads, 4 jobs, O_DIRECT, on an existing file."""
    done = subprocess.run(
        ["fio", "--name=randread", f"--filename={path}", "--rw=randread", "--bs=4k", "--direct=1",
         "--numjobs=4", "--ioengine=psync", "--time_based", f"--runtime={seconds}", "--group_reporting",
         "--output-format=json"], capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout)["jobs"][0]["read"]["iops"])


def meta_rows(root: Path, count: int) -> dict[str, float]:
    root.mkdir(exist_ok=True)
    names = [root / f"e{i:05d}" for i in range(count)]
    out: dict[str, float] = {}
    out["create ops/s"] = count / timed(lambda: [os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))
                                                 for n in names])
    time.sleep(1.1)  # past the kernel's 1 s entry/attr caches, so each stat reaches the client
    out["stat ops/s"] = count / timed(lambda: [os.stat(n) for n in names])
    reps = 5

    def listing() -> None:
        for _ in range(reps):
            with os.scandir(root) as it:
                if sum(1 for _ in it) != count:
                    raise RuntimeError("readdir lost entries")
    out["readdir entries/s"] = reps * count / timed(listing)
    out["unlink ops/s"] = count / timed(lambda: [os.unlink(n) for n in names])
    return out


def run_all(fs: Filesystem, args: argparse.Namespace) -> dict[str, float]:
    """Every row, on one filesystem, in an order that leaves each phase's cache state known."""
    res: dict[str, float] = {}
    files = small_contents(args.small, args.small_kib * 1024)
    hashes = [sha(d) for d in files]
    size = args.big_mib * MiB
    fs.clear_cache()
    rss = PeakRss(fs.mnt)

    def remount(clear: bool) -> Path:
        fs.umount()
        if clear:
            fs.clear_cache()
        rss.new_client()
        mnt = fs.mount()
        drop_page_cache(mnt)
        return mnt

    try:
        mnt = fs.mount()
        big = mnt / "big"
        started = time.perf_counter()
        expected = write_big(big, args.big_mib)
        t = time.perf_counter() - started
        res["seq write + fsync MiB/s"] = size / MiB / t
        t_umount = timed(fs.umount)
        res["seq write incl. unmount MiB/s"] = size / MiB / (t + t_umount)
        fs.clear_cache()
        rss.new_client()
        mnt = fs.mount()
        res["small write files/s"] = len(files) / timed(lambda: write_small(mnt / "small", files))
        res.update(meta_rows(mnt / "meta", args.meta_ops))

        # Small files with --writeback: the writes return once staged on disk, and the
        # unmount waits for every upload (the durable figure).
        fs.umount()
        rss.new_client()
        mnt = fs.mount(writeback=True)
        t = timed(lambda: write_small(mnt / "small-wb", files))
        t_umount = timed(fs.umount)
        res["small write writeback files/s"] = len(files) / t
        res["small write wb + unmount files/s"] = len(files) / (t + t_umount)
        fs.clear_cache()  # what the unmount left in the cache must be in the store too
        rss.new_client()
        mnt = fs.mount()
        drop_page_cache(mnt)
        for i in range(0, len(files), 20):
            if sha((mnt / "small-wb" / f"s{i:05d}").read_bytes()) != hashes[i]:
                raise RuntimeError(f"{fs.name}: a file written with writeback read back wrong")

        mnt = remount(clear=True)

        def read_big() -> None:
            if read_whole(mnt / "big") != expected:
                raise RuntimeError(f"{fs.name}: the big file read back wrong")
        res["cold seq read MiB/s"] = size / MiB / timed(read_big)
        mnt = remount(clear=False)
        res["warm seq read MiB/s"] = size / MiB / timed(read_big)
        res["hot seq read MiB/s"] = size / MiB / timed(read_big)
        if shutil.which("fio"):
            res["random 4k read IOPS"] = fio_randread(mnt / "big", args.fio_seconds)

        small = mnt / "small"
        for readers in (1, 8):
            mnt = remount(clear=True)
            res[f"small cold read x{readers} files/s"] = len(files) / timed(
                lambda n=readers: dataloader_read(small, hashes, n))
            mnt = remount(clear=False)
            res[f"small warm read x{readers} files/s"] = len(files) / timed(
                lambda n=readers: dataloader_read(small, hashes, n))

        mnt = remount(clear=True)
        res["warmup small tree files/s"] = len(files) / timed(lambda: fs.warmup([small]))
        res["warmup big file MiB/s"] = size / MiB / timed(lambda: fs.warmup([mnt / "big"]))
        # the warmed tree must now read from the cache, and right
        res["small after warmup x8 files/s"] = len(files) / timed(lambda: dataloader_read(small, hashes, 8))
        fs.umount()
    finally:
        res["peak RSS MiB"] = rss.stop() / MiB
        if os.path.ismount(fs.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(fs.mnt)], capture_output=True)
    return res


# ------------------------------------------------------------------ references


def reference_rows(endpoint_bucket: Callable[[str], str], keys: tuple[str, str], workdir: Path,
                   big_mib: int) -> dict[str, float]:
    from benchmarks import reference as ref

    out: dict[str, float] = {}
    bucket = endpoint_bucket("refbench")
    for threads in (8, 1):
        for t in ref.boto3_put_get(bucket, *keys, threads=threads, total=256 * MiB):
            out[f"{t.name} MiB/s"] = t.nbytes / t.seconds / MiB
    write, read = ref.disk_write_read(workdir, size=big_mib * MiB)
    out["local disk seq write MiB/s"] = write.nbytes / write.seconds / MiB
    out["local disk seq read MiB/s"] = read.nbytes / read.seconds / MiB
    return out


def floor_rows(workdir: Path, count: int, fio_seconds: int, small: list[bytes]) -> dict[str, float]:
    """The rows the FUSE floor can run: metadata, random reads, and the small-file readers
    (its files are in memory, so these are a warm cache that costs nothing)."""
    from benchmarks.bench_core import FuseFloor

    floor = FuseFloor(workdir)
    mnt = floor.mount()
    try:
        rows = meta_rows(mnt / "meta", count)
        hashes = [sha(d) for d in small]
        write_small(mnt / "small", small)
        for readers in (1, 8):
            drop_page_cache(mnt / "small")
            rows[f"small warm read x{readers} files/s"] = len(small) / timed(
                lambda n=readers: dataloader_read(mnt / "small", hashes, n))
        if shutil.which("fio"):
            with open(mnt / "big", "wb", buffering=0) as f:  # the floor keeps sizes, not bytes
                for _ in range(256):
                    f.write(bytes(MiB))
            rows["random 4k read IOPS"] = fio_randread(mnt / "big", fio_seconds)
        return rows
    finally:
        floor.umount()


@contextmanager
def maybe_wan(s3: object, wan: bool) -> Iterator[Callable[[str], str]]:
    """A function bucket name → bucket URL, through the WAN proxy with `wan`."""
    if not wan:
        yield s3.make_bucket  # type: ignore[attr-defined]
        return
    from benchmarks.latency_proxy import LatencyProxy

    proxy = LatencyProxy(s3.port, WAN_DELAY, rate=WAN_RATE)  # type: ignore[attr-defined]

    def bucket(name: str) -> str:
        s3.make_bucket(name)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{proxy.port}/{name}"
    try:
        yield bucket
    finally:
        proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 MiB big file, 1,000 small files")
    parser.add_argument("--wan", action="store_true", help="S3 behind +25 ms per request and 500 Mbit/s")
    parser.add_argument("--big-mib", type=int)
    parser.add_argument("--small", type=int)
    parser.add_argument("--small-kib", type=int, default=110)
    parser.add_argument("--meta-ops", type=int, default=4000)
    parser.add_argument("--fio-seconds", type=int, default=15)
    parser.add_argument("--no-juicefs", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--only", choices=["fusecache", "juicefs"])
    parser.add_argument("--fc-opt", action="append", default=[], help="extra fusecache mount option")
    args = parser.parse_args()
    args.big_mib = args.big_mib or (256 if args.quick else 1024)
    args.small = args.small or (1000 if args.quick else 4000)
    if not shutil.which("fio"):
        print("note: fio is not installed (apt-get install fio): no random-read row", file=sys.stderr)

    rows: dict[str, dict[str, float]] = {}
    with redis_and_s3() as (redis, s3), maybe_wan(s3, args.wan) as bucket:
        workdir = Path(tempfile.mkdtemp(prefix="fc-parity-"))
        env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key}
        try:
            if not args.no_reference:
                rows["reference"] = reference_rows(bucket, (s3.access_key, s3.secret_key), workdir, args.big_mib)
                rows["floor"] = floor_rows(workdir, args.meta_ops, args.fio_seconds,
                                           small_contents(args.small, args.small_kib * 1024))
            if args.only != "juicefs":
                fc = Fusecache(redis.url(1), bucket("fcbench"), env, workdir, args.fc_opt)
                rows["fusecache"] = run_all(fc, args)
            if args.only != "fusecache" and not args.no_juicefs and find_tool("juicefs"):
                jfs = Juicefs(redis.url(2), bucket("jfsbench"), env, workdir)
                rows["juicefs"] = run_all(jfs, args)
        finally:
            for mp in (workdir / "fc-mnt", workdir / "jfs-mnt", workdir / "floor-mnt"):
                if os.path.ismount(mp):
                    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            time.sleep(1)
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, args)


def print_table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    mode = "WAN (+25 ms per request, 500 Mbit/s)" if args.wan else "loopback"
    print(f"\nS3 on {mode}; big file {args.big_mib} MiB, {args.small} small files of ~{args.small_kib} KiB, "
          f"{args.meta_ops} metadata ops; fusecache options: {' '.join(args.fc_opt) or '(defaults)'}\n")
    for key, value in rows.get("reference", {}).items():
        print(f"  reference {key:<36} {value:10.1f}")
    fcr, jr, fl = rows.get("fusecache", {}), rows.get("juicefs", {}), rows.get("floor", {})
    print(f"\n  {'workload':<34} {'fusecache':>11} {'juicefs':>11} {'ratio':>7} {'FUSE floor':>11}")
    for key in fcr or jr:
        a, b, f = fcr.get(key), jr.get(key), fl.get(key)
        lower_is_better = key.startswith("peak RSS")
        ratio = (b / a if lower_is_better else a / b) if a and b else None
        print(f"  {key:<34} {_fmt(a)} {_fmt(b)} {f'{ratio:7.2f}' if ratio else '      -'} {_fmt(f)}")
    print("\n  ratio: fusecache / juicefs (for peak RSS: juicefs / fusecache), higher is better")
    staged, durable = fcr.get("small write writeback files/s"), jr.get("small write files/s")
    if staged and durable:
        print(f"  fusecache small writes with --writeback / juicefs durable small writes: {staged / durable:.2f}x")


def _fmt(value: float | None) -> str:
    return f"{value:11.1f}" if value is not None else f"{'-':>11}"


if __name__ == "__main__":
    main()
