"""Running the real CSI driver (`python -m csi_driver.server`) on a unix socket in tests.

The driver is a separate process so that restarting it, killing it and its FUSE clients
behave as on a node. Cleanup unmounts everything under the test's directory and stops
the FUSE clients the driver started (their pids are in its state files), so a failing
test leaves nothing mounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_driver._proto import csi_pb2 as pb
from csi_driver._proto import csi_pb2_grpc as pb_grpc
from fusecache.mountinfo import mounts_under

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "fusecache.cli.main"]
NODE_ID = "test-node-1"

MOUNT_CAP = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(),
    access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))


def capability(mode: int = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = (),
               block: bool = False, fs_type: str = "") -> pb.VolumeCapability:
    cap = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.fs_type = fs_type
        cap.mount.mount_flags.extend(flags)
    return cap


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    if result.returncode != 0:
        raise AssertionError(f"fusecache {args[0]} failed ({result.returncode}): {result.stderr}")
    return result.stdout


@dataclass
class Stubs:
    channel: grpc.Channel
    identity: pb_grpc.IdentityStub
    controller: pb_grpc.ControllerStub
    node: pb_grpc.NodeStub

    @classmethod
    def connect(cls, socket: Path) -> Stubs:
        channel = grpc.insecure_channel(f"unix://{socket}")
        return cls(channel, pb_grpc.IdentityStub(channel), pb_grpc.ControllerStub(channel),
                   pb_grpc.NodeStub(channel))


@dataclass
class Driver:
    """One driver process; `restart()` replaces it keeping state and socket."""

    workdir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    stubs: Stubs | None = None
    log_path: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "driver.log"

    @property
    def socket(self) -> Path:
        return self.workdir / "csi.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def start(self) -> Driver:
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop("META_PASSWORD", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "csi_driver.server", "--endpoint", f"unix://{self.socket}",
                 "--state-dir", str(self.state_dir), "--log-format", "text", *self.args],
                stdout=log, stderr=log, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + 60
        self.stubs = Stubs.connect(self.socket)
        while True:  # a SIGKILLed predecessor may have left its socket file: ask, don't look
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"driver did not start:\n{self.log()}")
            try:
                ready = self.stubs.identity.Probe(pb.ProbeRequest(), timeout=2, wait_for_ready=True)
            except grpc.RpcError:
                continue
            if ready.ready.value:
                break
            time.sleep(0.1)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.stubs is not None:
            self.stubs.channel.close()
            self.stubs = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def restart(self, sig: int = signal.SIGTERM) -> Driver:
        self.stop(sig)
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def client_records(self) -> list[dict[str, object]]:
        return [json.loads(p.read_text()) for p in (self.state_dir / "clients").glob("*.json")]

    @property
    def s(self) -> Stubs:
        assert self.stubs is not None
        return self.stubs


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def cleanup_mounts(workdir: Path) -> list[str]:
    """Detach every mount under `workdir` (deepest first); returns what was left behind."""
    leftovers = [m.mountpoint for m in mounts_under(str(workdir))]
    for mountpoint in sorted(set(leftovers), key=len, reverse=True):
        for _ in range(10):
            if subprocess.run(["umount", "-l", mountpoint], capture_output=True).returncode != 0:
                break
    return leftovers


def stop_clients(state_dir: Path) -> None:
    """Stop FUSE clients our driver started and left running."""
    for path in (state_dir / "clients").glob("*.json"):
        pid = int(json.loads(path.read_text()).get("pid", 0))
        if pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_driver(workdir: Path, *args: str) -> Iterator[Driver]:
    workdir.mkdir(parents=True, exist_ok=True)
    driver = Driver(workdir, list(args))
    try:
        driver.start()
        yield driver
    finally:
        if driver.proc is not None:
            driver.stop()
        cleanup_mounts(workdir)
        stop_clients(driver.state_dir)


def format_fs(meta_url: str, workdir: Path, name: str = "csivol") -> Path:
    """A fresh filesystem on a local-directory object store; returns the object directory."""
    objects = workdir / "objects"
    run_cli("format", meta_url, name, "--storage", "file", "--bucket", str(objects))
    return objects


def mount_has_cache_flags() -> bool:
    """Does `fusecache mount` take the tiered cache flags (--cache …)?"""
    from fusecache.cli.main import build_parser
    from fusecache.errors import CliError

    try:
        build_parser().parse_args(["mount", "redis://127.0.0.1:6379/1", "/mnt/x", "--cache", "mem:1GiB"])
    except CliError:
        return False
    return True
