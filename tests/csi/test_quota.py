"""What a pod sees at a volume's quota when its volume shares a FUSE client with others.

The quota is a directory quota in the metadata engine; the FUSE client checks it when it
commits written data (at the latest on fsync or close), so a write past it fails there with
EDQUOT. Volumes on the same client have their own quotas: one full volume does not stop
another.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from csi_driver._proto import csi_pb2 as pb
from tests.csi.harness import Driver
from tests.csi.test_node import create, fuse_clients, publish, stage, unpublish, unstage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20


def used_bytes(driver: Driver, volume: pb.Volume, path: Path) -> int:
    response = driver.s.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=str(path)), timeout=30)
    [usage] = [u for u in response.usage if u.unit == pb.VolumeUsage.BYTES]
    return usage.used


def write_without_sync(path: Path, total: int) -> str:
    """Write `total` bytes in 1 MiB calls, then close; which step failed ('' = none)."""
    chunk = os.urandom(MiB)
    f = open(path, "wb")  # noqa: SIM115 - close() is one of the steps under test
    try:
        for _ in range(total // MiB):
            f.write(chunk)
            f.flush()  # to the kernel; the FUSE client buffers it
    except OSError as exc:
        f.close()
        return f"write:{errno.errorcode[exc.errno or 0]}"
    try:
        f.close()
    except OSError as exc:
        return f"close:{errno.errorcode[exc.errno or 0]}"
    return ""


def test_write_past_the_quota_fails_with_edquot_on_a_shared_client(driver: Driver, workdir: Path) -> None:
    small = create(driver, "pvc-quota-small", size=4 * MiB)
    roomy = create(driver, "pvc-quota-roomy", size=64 * MiB)
    pods = {}
    for volume in (small, roomy):
        name = volume.volume_id.rsplit(":", 1)[1]
        pods[name] = workdir / "pods" / name
        stage(driver, volume, workdir / "staging" / name)
        publish(driver, volume, workdir / "staging" / name, pods[name])
    assert len(fuse_clients(driver)) == 1  # both volumes are served by one shared client
    small_dir, roomy_dir = pods["pvc-quota-small"], pods["pvc-quota-roomy"]

    # Buffered writes: the client commits at close, and the close reports the quota.
    assert write_without_sync(small_dir / "big", 16 * MiB) == "close:EDQUOT"
    assert (small_dir / "big").stat().st_size <= 4 * MiB  # nothing past the quota was kept
    assert used_bytes(driver, small, small_dir) <= 4 * MiB

    # With fsync, the fsync that crosses the quota fails; what was synced before stays.
    kept = os.urandom(3 * MiB)
    with open(small_dir / "synced", "wb") as f:
        f.write(kept)
        os.fsync(f.fileno())
        f.write(os.urandom(2 * MiB))
        with pytest.raises(OSError) as info:
            os.fsync(f.fileno())
        assert info.value.errno == errno.EDQUOT
        with pytest.raises(OSError):  # the writer stays failed: close reports it again
            f.close()
    assert hashlib.sha256((small_dir / "synced").read_bytes()[:3 * MiB]).digest() == hashlib.sha256(kept).digest()

    # What a shell user sees.
    dd = subprocess.run(["dd", "if=/dev/zero", f"of={small_dir / 'dd.bin'}", "bs=1M", "count=8"],
                        capture_output=True, text=True, timeout=60)
    assert dd.returncode != 0 and "Disk quota exceeded" in dd.stderr, dd.stderr

    # The other volume of the same client is not affected.
    data = os.urandom(8 * MiB)
    (roomy_dir / "fits").write_bytes(data)
    assert hashlib.sha256((roomy_dir / "fits").read_bytes()).digest() == hashlib.sha256(data).digest()

    # Freeing space lets the small volume take writes again.
    for name in os.listdir(small_dir):
        os.unlink(small_dir / name)
    (small_dir / "after").write_bytes(b"x" * MiB)
    assert (small_dir / "after").stat().st_size == MiB

    for volume in (small, roomy):
        name = volume.volume_id.rsplit(":", 1)[1]
        unpublish(driver, volume.volume_id, pods[name])
        unstage(driver, volume.volume_id, workdir / "staging" / name)
    assert fuse_clients(driver) == []


def inode_usage(driver: Driver, volume: pb.Volume, path: Path) -> pb.VolumeUsage:
    response = driver.s.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=str(path)), timeout=30)
    [usage] = [u for u in response.usage if u.unit == pb.VolumeUsage.INODES]
    return usage


def test_modify_volume_changes_the_inode_limit_on_a_mounted_volume(driver: Driver, workdir: Path) -> None:
    """ControllerModifyVolume's maxInodes reaches a volume that pods already use, with no
    node call and no remount: the engine checks the quota on every create."""
    volume = create(driver, "pvc-inode-limit", size=64 * MiB)
    staging, pod = workdir / "staging", workdir / "pods" / "pod"
    stage(driver, volume, staging)
    publish(driver, volume, staging, pod)
    [client] = fuse_clients(driver)
    for i in range(3):
        (pod / f"f{i}").write_bytes(b"x")

    driver.s.controller.ControllerModifyVolume(pb.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={"maxInodes": "5"}), timeout=60)
    usage = inode_usage(driver, volume, pod)
    assert (usage.total, usage.used, usage.available) == (5, 3, 2)
    (pod / "d").mkdir()
    (pod / "d" / "g").write_bytes(b"y")
    with pytest.raises(OSError) as info:
        (pod / "one-too-many").write_bytes(b"z")
    assert info.value.errno == errno.EDQUOT
    with pytest.raises(OSError) as info:
        (pod / "dir-too-many").mkdir()
    assert info.value.errno == errno.EDQUOT

    driver.s.controller.ControllerModifyVolume(pb.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={"maxInodes": "0"}), timeout=60)
    (pod / "now-it-fits").write_bytes(b"z")
    assert inode_usage(driver, volume, pod).total > 5
    assert fuse_clients(driver) == [client]  # the same client all along
    unpublish(driver, volume.volume_id, pod)
    unstage(driver, volume.volume_id, staging)
