"""Node service conformance on real mounts: shared FUSE clients, staging and publish binds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.meta import open_meta
from fusecache.mountinfo import mounts_at, mounts_under, read_mounts, top_mount
from fusecache.types import ROOT_INO
from tests.csi.harness import MOUNT_CAP, NODE_ID, Driver, capability, pid_alive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20
Mode = pb.VolumeCapability.AccessMode
NodeRPC = pb.NodeServiceCapability.RPC


def create(driver: Driver, name: str, size: int = 64 * MiB, params: dict[str, str] | None = None) -> pb.Volume:
    return driver.s.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[MOUNT_CAP], parameters=params or {},
        capacity_range=pb.CapacityRange(required_bytes=size)), timeout=60).volume


def stage(driver: Driver, volume: pb.Volume, staging: Path, cap: pb.VolumeCapability = MOUNT_CAP) -> None:
    driver.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=cap,
        volume_context=volume.volume_context), timeout=120)


def publish(driver: Driver, volume: pb.Volume, staging: Path, target: Path, readonly: bool = False,
            cap: pb.VolumeCapability = MOUNT_CAP) -> None:
    driver.s.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=cap, readonly=readonly, volume_context=volume.volume_context), timeout=120)


def unpublish(driver: Driver, volume_id: str, target: Path) -> None:
    driver.s.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
                                      timeout=120)


def unstage(driver: Driver, volume_id: str, staging: Path) -> None:
    driver.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging)), timeout=120)


def code_of(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=120)
    return info.value.code()


def fuse_clients(driver: Driver) -> list[str]:
    """Mountpoints of FUSE client mounts (not binds) under the driver's state dir."""
    return [m.mountpoint for m in mounts_under(str(driver.state_dir / "mnt")) if m.root == "/"]


@pytest.fixture
def paths(workdir: Path) -> dict[str, Path]:
    (workdir / "pods").mkdir()
    return {"staging": workdir / "staging", "target": workdir / "pods" / "pod-a", "target2": workdir / "pods" / "pod-b"}


def test_capabilities_and_info(driver: Driver) -> None:
    caps = {c.rpc.type for c in driver.s.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities}
    assert caps == {NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.VOLUME_CONDITION,
                    NodeRPC.EXPAND_VOLUME, NodeRPC.SINGLE_NODE_MULTI_WRITER}
    info = driver.s.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == NODE_ID and info.max_volumes_per_node == 0


def test_requests_are_validated(driver: Driver, paths: dict[str, Path]) -> None:
    n = driver.s.node
    volume = create(driver, "pvc-v")
    vid, staging, target = volume.volume_id, str(paths["staging"]), str(paths["target"])
    bad = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(staging_target_path=staging, volume_capability=MOUNT_CAP), bad),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id=vid, volume_capability=MOUNT_CAP), bad),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging), bad),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging,
                                                      volume_capability=capability(block=True)), bad),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path="relative/path",
                                                      volume_capability=MOUNT_CAP), bad),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging,
                                                      volume_capability=capability(flags=("debug",))), bad),
        (n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(staging_target_path=staging), bad),
        (n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid), bad),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(target_path=target, volume_capability=MOUNT_CAP), bad),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id=vid, volume_capability=MOUNT_CAP), bad),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id=vid, target_path=target), bad),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id=vid, target_path=target,
                                                          volume_capability=MOUNT_CAP),
         grpc.StatusCode.FAILED_PRECONDITION),  # no staging path
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id=vid, target_path=target,
                                                          staging_target_path=staging, volume_capability=MOUNT_CAP),
         grpc.StatusCode.FAILED_PRECONDITION),  # not staged yet
        (n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(target_path=target), bad),
        (n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid), bad),
        (n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_path="some/path"), bad),
        (n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_id=vid), bad),
        (n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_id="fake-vol-id-1", volume_path="some/path"),
         grpc.StatusCode.NOT_FOUND),
        (n.NodeExpandVolume, pb.NodeExpandVolumeRequest(volume_path=target), bad),
        (n.NodeExpandVolume, pb.NodeExpandVolumeRequest(volume_id=vid), bad),
        (n.NodeExpandVolume, pb.NodeExpandVolumeRequest(volume_id="fake-vol-id-1", volume_path="some/path"),
         grpc.StatusCode.NOT_FOUND),
    ]
    for call, request, code in cases:
        assert code_of(call, request) == code, request
    # Undoing what was never done is fine.
    unpublish(driver, vid, paths["target"])
    unstage(driver, vid, paths["staging"])
    assert not paths["target"].exists()
    assert fuse_clients(driver) == []


def test_stage_publish_write_read_and_undo(driver: Driver, paths: dict[str, Path]) -> None:
    volume = create(driver, "pvc-life")
    staging, target, target2 = paths["staging"], paths["target"], paths["target2"]
    stage(driver, volume, staging)
    stage(driver, volume, staging)  # idempotent
    publish(driver, volume, staging, target)
    publish(driver, volume, staging, target)  # idempotent
    publish(driver, volume, staging, target2, readonly=True)
    (target / "hello.txt").write_bytes(b"hello from pod a")
    assert (target2 / "hello.txt").read_bytes() == b"hello from pod a"
    assert (staging / "hello.txt").exists()
    with pytest.raises(OSError) as info:
        (target2 / "nope").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    # Only the volume's directory is visible, not the filesystem root.
    [client_mnt] = fuse_clients(driver)
    assert (Path(client_mnt) / "pvc-life" / "hello.txt").exists()
    assert sorted(os.listdir(target)) == ["hello.txt"]
    mounts = {m.mountpoint: m for m in read_mounts()}
    assert mounts[str(target)].root == "/pvc-life" and not mounts[str(target)].readonly
    assert mounts[str(target2)].readonly
    assert {"nosuid", "nodev"} <= mounts[str(target)].options
    assert top_mount(str(staging)).dev == top_mount(client_mnt).dev  # type: ignore[union-attr]
    # conflicting repeats
    assert code_of(driver.s.node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=MOUNT_CAP, readonly=True)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(driver.s.node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging),
        volume_capability=capability(Mode.MULTI_NODE_READER_ONLY))) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(driver.s.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging))) == grpc.StatusCode.FAILED_PRECONDITION
    # undo, twice each
    pid = int(driver.client_records()[0]["pid"])  # type: ignore[call-overload]
    for _ in range(2):
        unpublish(driver, volume.volume_id, target)
        unpublish(driver, volume.volume_id, target2)
    assert not target.exists() and not target2.exists()  # created by the driver, removed by it
    assert pid_alive(pid)
    for _ in range(2):
        unstage(driver, volume.volume_id, staging)
    assert mounts_under(str(driver.workdir.parent)) == []
    assert not pid_alive(pid)
    assert driver.client_records() == []
    assert not staging.exists()  # the driver created it, so it removed it


def test_volumes_share_one_client_per_filesystem_and_settings(driver: Driver, workdir: Path) -> None:
    a, b = create(driver, "pvc-a"), create(driver, "pvc-b")
    c = create(driver, "pvc-c", params={"attrTimeout": "3"})
    for vol in (a, b, c):
        stage(driver, vol, workdir / "st" / vol.volume_id.rsplit(":", 1)[1])
    clients = fuse_clients(driver)
    assert len(clients) == 2
    assert len(driver.client_records()) == 2
    (workdir / "st" / "pvc-a" / "fa").write_bytes(b"a")
    assert not (workdir / "st" / "pvc-b" / "fa").exists()  # same client, separate directories
    unstage(driver, a.volume_id, workdir / "st" / "pvc-a")
    assert len(fuse_clients(driver)) == 2  # pvc-b still uses the shared client
    assert (workdir / "st" / "pvc-b").is_dir() and top_mount(str(workdir / "st" / "pvc-b")) is not None
    unstage(driver, b.volume_id, workdir / "st" / "pvc-b")
    assert len(fuse_clients(driver)) == 1
    unstage(driver, c.volume_id, workdir / "st" / "pvc-c")
    assert fuse_clients(driver) == [] and driver.client_records() == []


def test_mount_flags_and_reader_only_modes(driver: Driver, paths: dict[str, Path]) -> None:
    volume = create(driver, "pvc-flags")
    cap = capability(Mode.MULTI_NODE_MULTI_WRITER, flags=("noexec", "noatime"))
    stage(driver, volume, paths["staging"], cap)
    publish(driver, volume, paths["staging"], paths["target"], cap=cap)
    options = top_mount(str(paths["target"])).options  # type: ignore[union-attr]
    assert {"noexec", "noatime", "nosuid", "nodev"} <= options
    ro = capability(Mode.MULTI_NODE_READER_ONLY)
    publish(driver, volume, paths["staging"], paths["target2"], cap=ro)
    assert top_mount(str(paths["target2"])).readonly  # type: ignore[union-attr]
    unpublish(driver, volume.volume_id, paths["target"])
    unpublish(driver, volume.volume_id, paths["target2"])
    unstage(driver, volume.volume_id, paths["staging"])


def test_stats_follow_the_quota(driver: Driver, paths: dict[str, Path]) -> None:
    volume = create(driver, "pvc-stats", size=64 * MiB)
    stage(driver, volume, paths["staging"])
    publish(driver, volume, paths["staging"], paths["target"])
    n = driver.s.node
    assert code_of(n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path="/some/other/path")) == grpc.StatusCode.NOT_FOUND

    def usage() -> dict[int, pb.VolumeUsage]:
        resp = n.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=volume.volume_id,
                                                                  volume_path=str(paths["target"])))
        assert not resp.volume_condition.abnormal, resp.volume_condition.message
        return {u.unit: u for u in resp.usage}

    before = usage()
    assert before[pb.VolumeUsage.BYTES].total == 64 * MiB
    data = os.urandom(3 * MiB)
    with open(paths["target"] / "blob", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.mkdir(paths["target"] / "dir")
    after = usage()
    grown = after[pb.VolumeUsage.BYTES].used - before[pb.VolumeUsage.BYTES].used
    assert 3 * MiB <= grown <= 3 * MiB + MiB
    assert after[pb.VolumeUsage.BYTES].available == 64 * MiB - after[pb.VolumeUsage.BYTES].used
    assert after[pb.VolumeUsage.INODES].used == before[pb.VolumeUsage.INODES].used + 2
    # the same through the staging path
    staged = n.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=volume.volume_id,
                                                                volume_path=str(paths["staging"])))
    assert {u.unit: u.used for u in staged.usage} == {u.unit: u.used for u in after.values()}
    unpublish(driver, volume.volume_id, paths["target"])
    unstage(driver, volume.volume_id, paths["staging"])


def test_quota_is_enforced_and_expansion_raises_it(driver: Driver, paths: dict[str, Path]) -> None:
    volume = create(driver, "pvc-small", size=4 * MiB)
    stage(driver, volume, paths["staging"])
    publish(driver, volume, paths["staging"], paths["target"])
    chunk = os.urandom(MiB)
    with pytest.raises(OSError) as info, open(paths["target"] / "big", "wb") as f:
        for _ in range(16):
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    os.unlink(paths["target"] / "big")
    grown = driver.s.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id, capacity_range=pb.CapacityRange(required_bytes=32 * MiB)))
    assert grown.capacity_bytes == 32 * MiB
    node_grown = driver.s.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=volume.volume_id, volume_path=str(paths["target"]),
        capacity_range=pb.CapacityRange(required_bytes=32 * MiB)))
    assert node_grown.capacity_bytes == 32 * MiB
    with open(paths["target"] / "big", "wb") as f:  # now it fits
        for _ in range(16):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    assert (paths["target"] / "big").stat().st_size == 16 * MiB
    unpublish(driver, volume.volume_id, paths["target"])
    unstage(driver, volume.volume_id, paths["staging"])


def test_static_volume_shows_a_subdirectory(driver: Driver, fs_meta_url: str, paths: dict[str, Path]) -> None:
    meta = open_meta(fs_meta_url)
    try:
        shared = meta.mkdir(ROOT_INO, b"shared", 0o755, 0, 0)
        meta.mkdir(shared.ino, b"data", 0o777, 0, 0)
    finally:
        meta.shutdown()
    static = pb.Volume(volume_id="static-pv-data", volume_context={"subdir": "/shared/data"})
    stage(driver, static, paths["staging"])
    publish(driver, static, paths["staging"], paths["target"])
    (paths["target"] / "from-static").write_bytes(b"s")
    [client_mnt] = fuse_clients(driver)
    assert (Path(client_mnt) / "shared" / "data" / "from-static").read_bytes() == b"s"
    missing = pb.Volume(volume_id="static-pv-missing", volume_context={"subdir": "/no/such/dir"})
    assert code_of(driver.s.node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=missing.volume_id, staging_target_path=str(paths["staging"].with_name("st2")),
        volume_capability=MOUNT_CAP, volume_context=missing.volume_context)) == grpc.StatusCode.NOT_FOUND
    unpublish(driver, static.volume_id, paths["target"])
    unstage(driver, static.volume_id, paths["staging"])
    assert fuse_clients(driver) == []
    assert mounts_at(str(paths["staging"])) == []


def test_dedicated_client_shows_the_quota_in_df(driver: Driver, workdir: Path) -> None:
    """sharedClient=false: the volume gets its own client rooted at its directory, so statfs
    (df in the pod) reports the quota; a shared client reports the whole filesystem."""
    own = create(driver, "pvc-own", size=48 * MiB, params={"sharedClient": "false"})
    other = create(driver, "pvc-own-2", size=16 * MiB, params={"sharedClient": "false"})
    shared = create(driver, "pvc-shared", size=48 * MiB)
    for vol in (own, other, shared):
        name = vol.volume_id.rsplit(":", 1)[1]
        stage(driver, vol, workdir / "st" / name)
        publish(driver, vol, workdir / "st" / name, workdir / "pods" / name)
    assert len(fuse_clients(driver)) == 3  # one each for the dedicated ones, one shared

    def df_bytes(name: str) -> int:
        st = os.statvfs(workdir / "pods" / name)
        return st.f_blocks * st.f_frsize

    assert df_bytes("pvc-own") == 48 * MiB
    assert df_bytes("pvc-own-2") == 16 * MiB
    assert df_bytes("pvc-shared") > 48 * MiB
    (workdir / "pods" / "pvc-own" / "f").write_bytes(b"own")
    assert sorted(os.listdir(workdir / "pods" / "pvc-own")) == ["f"]
    assert top_mount(str(workdir / "pods" / "pvc-own")).root == "/"  # type: ignore[union-attr]
    for vol in (own, other, shared):
        name = vol.volume_id.rsplit(":", 1)[1]
        unpublish(driver, vol.volume_id, workdir / "pods" / name)
        unstage(driver, vol.volume_id, workdir / "st" / name)
    assert fuse_clients(driver) == []
