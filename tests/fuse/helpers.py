"""Driving the real `fusecache` CLI in tests: format, mount (-d), umount, with cleanup."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import S3Server

CLI = [sys.executable, "-m", "fusecache.cli.main"]


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                            cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"fusecache {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_mounted(path: str | Path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Mount:
    path: Path
    pid: int
    log: Path

    def umount(self) -> None:
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        wait_pid(self.pid)


def wait_pid(pid: int, timeout: float = 20) -> None:
    """Wait for a mount process we started to exit; kill it if it will not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Volume:
    """A formatted volume and the mounts made of it during one test."""

    meta_url: str
    workdir: Path
    storage: str = "file"
    bucket: str = ""
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)

    def mount(self, *extra: str, path: Path | None = None) -> Mount:
        mp = path or self.workdir / f"mnt{len(self.mounts)}"
        mp.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"mount{len(self.mounts)}.log"
        result = run_cli("mount", self.meta_url, str(mp), "-d", "--log", str(log), *extra, env=self.env)
        match = re.search(r"pid (\d+)", result.stdout)
        assert match, result.stdout
        m = Mount(mp, int(match.group(1)), log)
        self.mounts.append(m)
        assert is_mounted(mp)
        return m

    def object_keys(self, prefix: str = "") -> list[str]:
        """Every object key in the volume's store (read with our own store layer)."""
        from fusecache.object import create_store

        store = create_store(self.storage, self.bucket, self.env.get("ACCESS_KEY", ""), self.env.get("SECRET_KEY", ""))
        try:
            return [o.key for o in store.list_all(prefix)]
        finally:
            store.close()

    def cleanup(self) -> None:
        for m in self.mounts:
            m.umount()


def format_volume(meta_url: str, workdir: Path, storage: str, s3: S3Server | None, bucket_url: str | None,
                  *extra: str, name: str = "testvol") -> Volume:
    env: dict[str, str] = {}
    if storage == "s3":
        assert s3 is not None and bucket_url is not None
        env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key}
        bucket = bucket_url
    else:
        bucket = str(workdir / "objects")
    run_cli("format", meta_url, name, "--storage", storage, "--bucket", bucket, *extra, env=env)
    return Volume(meta_url, workdir, storage, bucket, env)


def client_stats(path: str | Path) -> dict:
    """The figures of the client serving `path` (`fusecache stats --json`)."""
    import json

    return json.loads(run_cli("stats", str(path), "--json").stdout)


def tier_stats(stats: dict, medium: str) -> dict:
    """The first cache tier of this medium in a `client_stats` result."""
    return next(t for t in stats["cache"]["tiers"] if t["medium"] == medium)


def wait_for(predicate, timeout: float = 30, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
