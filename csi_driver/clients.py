"""Shared FUSE clients: `fusecache mount` processes the node plugin starts, adopts and stops.

A client runs in the foreground as its own session leader (`start_new_session`): a signal
to the plugin's process group (Ctrl-C, a supervisor stopping the plugin) never reaches
it, and it outlives the plugin. The plugin tells a live client from a dead one by pid *and*
the pid's start time (pids get reused), and a working mount from a broken one by stat-ing
it with a timeout (a dead client's mount fails with ENOTCONN; a hung one never answers).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from fusecache.mountinfo import FUSECACHE_FSTYPE, top_mount

from .fsref import Filesystem
from .mounts import unmount_stack
from .settings import MountSettings
from .state import ClientRecord
from .tools import CliFailed, child_env, run_cli

log = logging.getLogger(__name__)

STAT_TIMEOUT = 5.0
# What the kernel answers for a FUSE mount whose daemon is gone: ENOTCONN once the
# connection is down, ECONNABORTED for requests that were in flight when it went.
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})
STOP_TIMEOUT = 60.0  # a client with writeback flushes before it exits
LOG_KEEP_BYTES = 20 << 20  # a client's log is rotated (one old copy) when it is restarted past this


class ClientStartError(Exception):
    pass


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str = ""
    recoverable: bool = False  # dead (not merely slow): remounting is safe


def pid_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot, 0 if there is no such live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    fields = text.rpartition(")")[2].split()  # the command name may contain spaces
    if not fields or fields[0] in ("Z", "X"):
        return 0
    return int(fields[19])


def stat_with_timeout(path: str, timeout: float = STAT_TIMEOUT) -> OSError | None:
    """None if `path` can be stat-ed within `timeout`; the error (ETIMEDOUT when hung)."""
    result: list[OSError | None] = []

    def probe() -> None:
        try:
            os.stat(path)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    # A stat of a hung FUSE mount blocks uninterruptibly: leave that thread behind.
    worker = threading.Thread(target=probe, name=f"stat {path}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return OSError(errno.ETIMEDOUT, f"{path} does not answer within {timeout:.0f}s")
    return result[0]


def _rotate(log_path: str) -> None:
    try:
        if os.path.getsize(log_path) > LOG_KEEP_BYTES:
            os.replace(log_path, log_path + ".1")
    except OSError:
        pass


class FuseClients:
    def __init__(self, command: list[str], mount_timeout: float) -> None:
        self.command = command
        self.mount_timeout = mount_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, record: ClientRecord, fs: Filesystem, settings: MountSettings) -> ClientRecord:
        """Mount the filesystem at `record.mountpoint`; returns the record with the pid."""
        os.makedirs(record.mountpoint, exist_ok=True)
        _rotate(record.log)
        if top_mount(record.mountpoint) is not None:
            unmount_stack(record.mountpoint, only=(FUSECACHE_FSTYPE,))  # a dead predecessor
        args = ["mount", fs.meta_url, record.mountpoint, *settings.mount_args(cache_subdir=record.key),
                "--log", record.log]
        if record.subdir != "/":
            args += ["--subdir", record.subdir]
        log.info("starting FUSE client %s for %s at %s", record.key, fs.meta_url, record.mountpoint)
        with open(record.log, "ab") as logfile:
            proc = subprocess.Popen(
                [*self.command, *args], stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                env=child_env(fs.env()), start_new_session=True, close_fds=True)
        with self._lock:
            self._children[proc.pid] = proc
        deadline = time.monotonic() + self.mount_timeout
        while True:
            mount = top_mount(record.mountpoint)
            if mount is not None and mount.fstype == FUSECACHE_FSTYPE and stat_with_timeout(record.mountpoint) is None:
                break
            if proc.poll() is not None:
                self.reap()
                raise ClientStartError(f"fusecache mount exited with code {proc.returncode}: "
                                       f"{self._log_tail(record.log)}")
            if time.monotonic() > deadline:
                self._kill(proc.pid)
                raise ClientStartError(f"fusecache mount did not come up within {self.mount_timeout:.0f}s: "
                                       f"{self._log_tail(record.log)}")
            time.sleep(0.05)
        log.info("FUSE client %s is up (pid %d)", record.key, proc.pid)
        return ClientRecord(record.key, record.meta_url, record.settings, record.mountpoint,
                            proc.pid, pid_start_time(proc.pid), record.log, record.subdir)

    def stop(self, record: ClientRecord) -> None:
        """Unmount and wait for the process to finish; escalate to signals if it hangs."""
        path = record.mountpoint
        mount = top_mount(path)
        if mount is not None and mount.fstype == FUSECACHE_FSTYPE:
            try:
                run_cli(self.command, ["umount", path], {}, STOP_TIMEOUT)
            except CliFailed as exc:
                log.warning("clean unmount of %s failed (%s); detaching it", path, exc)
                unmount_stack(path, only=(FUSECACHE_FSTYPE,))
        if not self._wait_exit(record, STOP_TIMEOUT):
            log.warning("FUSE client pid %d did not exit after unmount; terminating it", record.pid)
            self._signal(record, signal.SIGTERM)
            if not self._wait_exit(record, 10):
                self._signal(record, signal.SIGKILL)
                self._wait_exit(record, 10)
        if top_mount(path) is not None:
            unmount_stack(path, only=(FUSECACHE_FSTYPE,))
        try:
            os.rmdir(path)
        except OSError:
            pass
        log.info("FUSE client %s stopped", record.key)

    def terminate(self, record: ClientRecord) -> None:
        """Stop a client that has no mountpoint left: SIGTERM, then SIGKILL."""
        self._signal(record, signal.SIGTERM)
        if not self._wait_exit(record, 10):
            self._signal(record, signal.SIGKILL)
            self._wait_exit(record, 10)

    # -- health ----------------------------------------------------------------------------
    def alive(self, record: ClientRecord) -> bool:
        self.reap()
        return record.pid > 0 and pid_start_time(record.pid) == record.pid_start != 0

    def health(self, record: ClientRecord) -> Health:
        alive = self.alive(record)
        mount = top_mount(record.mountpoint)
        if mount is None or mount.fstype != FUSECACHE_FSTYPE:
            return Health(False, f"filesystem is not mounted at {record.mountpoint}", recoverable=True)
        if not alive:
            return Health(False, f"FUSE client (pid {record.pid}) is gone: transport endpoint is not connected",
                          recoverable=True)
        error = stat_with_timeout(record.mountpoint)
        if error is None:
            return Health(True)
        if error.errno in DEAD_MOUNT_ERRNOS:
            return Health(False, "transport endpoint is not connected", recoverable=True)
        return Health(False, f"mount does not work: {error.strerror or error}", recoverable=False)

    def reap(self) -> None:
        """Collect exit statuses of our own children (no zombies)."""
        with self._lock:
            for pid, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[pid]

    # -- internals -------------------------------------------------------------------------
    def _wait_exit(self, record: ClientRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive(record):
                return True
            time.sleep(0.05)
        return not self.alive(record)

    def _signal(self, record: ClientRecord, signum: int) -> None:
        if self.alive(record):
            try:
                os.kill(record.pid, signum)
            except ProcessLookupError:
                pass

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with self._lock:
            proc = self._children.pop(pid, None)
        if proc is not None:
            proc.wait()

    @staticmethod
    def _log_tail(path: str, limit: int = 600) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace").strip().replace("\n", " | ")
        except OSError:
            return "(no log)"
