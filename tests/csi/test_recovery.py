"""The node plugin survives its own restarts and repairs mounts after its FUSE client dies."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.mountinfo import mounts_under, top_mount
from tests.csi.harness import NODE_ID, Driver, pid_alive, running_driver
from tests.csi.test_node import create, publish, stage, unpublish, unstage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20


def client_pid(driver: Driver) -> int:
    [record] = driver.client_records()
    return int(record["pid"])  # type: ignore[call-overload]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def broken(path: Path) -> bool:
    try:
        os.listdir(path)
        return False
    except OSError as exc:
        assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED), exc
        return True


def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def kill_client(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10)


class Setup:
    """One volume staged and published twice (read-write and read-only), with a file."""

    def __init__(self, driver: Driver, workdir: Path) -> None:
        self.driver = driver
        self.volume = create(driver, "pvc-recover")
        self.staging = workdir / "staging"
        self.rw = workdir / "pods" / "writer"
        self.ro = workdir / "pods" / "reader"
        (workdir / "pods").mkdir(exist_ok=True)
        stage(driver, self.volume, self.staging)
        publish(driver, self.volume, self.staging, self.rw)
        publish(driver, self.volume, self.staging, self.ro, readonly=True)
        self.data = os.urandom(2 * MiB + 123)
        (self.rw / "data.bin").write_bytes(self.data)
        self.digest = hashlib.sha256(self.data).hexdigest()

    def stats(self) -> pb.NodeGetVolumeStatsResponse:
        return self.driver.s.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=self.volume.volume_id, volume_path=str(self.rw)), timeout=30)

    def assert_works(self) -> None:
        assert sha256(self.rw / "data.bin") == self.digest
        assert sha256(self.ro / "data.bin") == self.digest
        marker = os.urandom(8).hex()
        (self.rw / "after").write_text(marker)
        assert (self.ro / "after").read_text() == marker
        with pytest.raises(OSError) as info:
            (self.ro / "x").write_text("no")
        assert info.value.errno == errno.EROFS

    def tear_down(self) -> None:
        unpublish(self.driver, self.volume.volume_id, self.rw)
        unpublish(self.driver, self.volume.volume_id, self.ro)
        unstage(self.driver, self.volume.volume_id, self.staging)
        assert mounts_under(str(self.staging.parent)) == []
        assert self.driver.client_records() == []


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_plugin_restart_keeps_mounts_and_adopts_the_client(driver: Driver, workdir: Path, how: int) -> None:
    setup = Setup(driver, workdir)
    pid = client_pid(driver)
    driver.stop(how)
    setup.assert_works()  # served by the client while no plugin runs
    driver.start()
    assert client_pid(driver) == pid  # adopted, not restarted
    setup.assert_works()
    assert not setup.stats().volume_condition.abnormal
    setup.tear_down()
    assert not pid_alive(pid)


def test_killed_client_is_reported_and_remounted(driver: Driver, workdir: Path) -> None:
    setup = Setup(driver, workdir)
    pid = client_pid(driver)
    kill_client(pid)
    assert broken(setup.rw) and broken(setup.ro)
    # The checker runs every 60 s here: the stats call sees the damage first, then asks for repair.
    condition = setup.stats().volume_condition
    assert condition.abnormal
    assert "not connected" in condition.message
    wait_until(lambda: not setup.stats().volume_condition.abnormal)
    new_pid = client_pid(driver)
    assert new_pid != pid and pid_alive(new_pid)
    setup.assert_works()  # same target paths, no re-publish: the binds were repaired in place
    assert top_mount(str(setup.ro)).readonly  # type: ignore[union-attr]
    setup.tear_down()


def test_health_checker_repairs_on_its_own(fs_meta_url: str, workdir: Path) -> None:
    with running_driver(workdir / "driver", "--nodeid", NODE_ID, "--meta-url", fs_meta_url,
                        "--check-interval", "1") as driver:
        setup = Setup(driver, workdir)
        kill_client(client_pid(driver))
        wait_until(lambda: not broken(setup.rw) and not broken(setup.ro))
        setup.assert_works()
        setup.tear_down()


def test_client_death_while_the_plugin_is_down_is_repaired_at_start(driver: Driver, workdir: Path) -> None:
    setup = Setup(driver, workdir)
    pid = client_pid(driver)
    driver.stop(signal.SIGKILL)
    kill_client(pid)
    assert broken(setup.rw)
    driver.start()  # re-adoption finds the dead client before serving
    assert not broken(setup.rw)
    assert client_pid(driver) != pid
    setup.assert_works()
    setup.tear_down()
