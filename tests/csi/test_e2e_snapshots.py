"""Snapshots and clones end to end, on real mounts: the test plays the external-snapshotter
and external-provisioner (controller RPCs) and kubelet (stage and publish on the node
plugin), pods read and write through FUSE; file contents are compared by sha256."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.meta import open_meta
from fusecache.mountinfo import mounts_under
from fusecache.types import ROOT_INO
from tests.csi.harness import NODE_ID, Driver, capability, run_cli, running_driver
from tests.csi.test_e2e import pod

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20
CAP = capability(pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)


@pytest.fixture
def objects(meta_url: str, workdir: Path) -> Path:
    """A filesystem whose dropped data is deleted at once (no garbage delay, no trash), so
    that what the objects directory still holds is what some tree still needs."""
    objects = workdir / "objects"
    run_cli("format", meta_url, "snapfs", "--storage", "file", "--bucket", str(objects), "--garbage-delay", "0s",
            "--trash-days", "0")
    return objects


@pytest.fixture
def driver(objects: Path, meta_url: str, workdir: Path) -> Iterator[Driver]:
    with running_driver(workdir / "driver", "--nodeid", NODE_ID, "--mode", "all", "--meta-url", meta_url,
                        "--check-interval", "60") as running:
        yield running


class Kubelet:
    """Stages and publishes volumes the way kubelet does, one staging path per volume."""

    def __init__(self, driver: Driver, root: Path) -> None:
        self.driver, self.root = driver, root
        self.published: dict[str, tuple[Path, Path]] = {}

    def mount(self, volume: pb.Volume) -> Path:
        key = volume.volume_id.rsplit(":", 1)[-1]
        staging, target = self.root / "staging" / key, self.root / "pods" / key / "mount"
        staging.mkdir(parents=True)
        target.parent.mkdir(parents=True)
        node = self.driver.s.node
        node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=CAP,
            volume_context=volume.volume_context), timeout=120)
        node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=CAP, volume_context=volume.volume_context), timeout=120)
        self.published[volume.volume_id] = (staging, target)
        return target

    def unmount(self, volume_id: str) -> None:
        staging, target = self.published.pop(volume_id)
        node = self.driver.s.node
        node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
                                 timeout=120)
        node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging)),
                               timeout=120)


def written(path: Path, size: int, seed: int) -> str:
    result = pod("write", str(path), str(size), str(seed))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def digest(path: Path) -> str:
    result = pod("read", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def block_files(objects: Path) -> list[Path]:
    return [p for p in objects.rglob("*") if p.is_file() and "blocks" in p.parts]


def test_snapshot_restore_and_clone_on_real_mounts(driver: Driver, objects: Path, meta_url: str,
                                                   workdir: Path) -> None:
    c = driver.s.controller
    kubelet = Kubelet(driver, workdir / "kubelet")

    # A volume with data, written by a pod.
    source = c.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-source", volume_capabilities=[CAP], parameters={"csi.storage.k8s.io/pvc/name": "data"},
        capacity_range=pb.CapacityRange(required_bytes=64 * MiB)), timeout=120).volume
    source_dir = kubelet.mount(source)
    (source_dir / "dir").mkdir()
    original = {"one.bin": written(source_dir / "one.bin", 3 * MiB + 5, 1),
                "dir/two.bin": written(source_dir / "dir" / "two.bin", MiB, 2)}
    assert hashes(source_dir) == original

    # The external-snapshotter cuts a snapshot; a restore and a clone follow.
    snapshot = c.CreateSnapshot(pb.CreateSnapshotRequest(name="snap-e2e", source_volume_id=source.volume_id),
                                timeout=120).snapshot
    assert snapshot.ready_to_use and snapshot.size_bytes == 4 * MiB + 5
    restored = c.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-restored", volume_capabilities=[CAP], capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_content_source=pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))), timeout=120).volume
    cloned = c.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-cloned", volume_capabilities=[CAP], capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_content_source=pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=source.volume_id))), timeout=120).volume
    blocks_before = sorted(block_files(objects))
    assert blocks_before, "the data should be in the object store"
    restored_dir, cloned_dir = kubelet.mount(restored), kubelet.mount(cloned)
    assert hashes(restored_dir) == original == hashes(cloned_dir)
    assert sorted(block_files(objects)) == blocks_before  # nothing was copied

    # The snapshot itself, mounted read-write as a static volume: readable, never changed.
    frozen = pb.Volume(volume_id="static-snapshot-view",
                       volume_context={"subdir": "/.csi-snapshots/snap-e2e/data"})
    frozen_dir = kubelet.mount(frozen)
    assert hashes(frozen_dir) == original
    for attempt in (pod("write", str(frozen_dir / "one.bin"), "10", "9"),
                    pod("write", str(frozen_dir / "new.bin"), "10", "9")):
        assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, attempt.stderr
    for change in (lambda: (frozen_dir / "one.bin").unlink(), lambda: (frozen_dir / "dir").rename(frozen_dir / "x"),
                   lambda: os.chmod(frozen_dir / "one.bin", 0o600), lambda: (frozen_dir / "sub").mkdir()):
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno == 30, info.value  # EROFS

    # Writes to the restored volume and to the clone stay there.
    changed = written(restored_dir / "one.bin", 2 * MiB, 3)
    added = written(restored_dir / "added.bin", 100_000, 4)
    (cloned_dir / "dir" / "two.bin").unlink()
    assert hashes(restored_dir) == {**original, "one.bin": changed, "added.bin": added}
    assert hashes(cloned_dir) == {"one.bin": original["one.bin"]}
    assert hashes(source_dir) == original == hashes(frozen_dir)

    # The source volume goes: the snapshot and the volumes made from it keep their data.
    kubelet.unmount(source.volume_id)
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=source.volume_id), timeout=120)
    assert hashes(frozen_dir) == original
    assert hashes(restored_dir) == {**original, "one.bin": changed, "added.bin": added}
    again = c.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-restored-again", volume_capabilities=[CAP],
        volume_content_source=pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))), timeout=120).volume
    assert hashes(kubelet.mount(again)) == original

    # Everything deleted: no object is left behind.
    for volume_id in list(kubelet.published):
        kubelet.unmount(volume_id)
    for volume in (restored, cloned, again):
        c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=120)
    assert block_files(objects), "the snapshot still holds the original data"
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id), timeout=120)
    assert block_files(objects) == []
    assert mounts_under(str(workdir)) == []
    meta = open_meta(meta_url)
    try:
        assert [e.name for e in meta.readdir(ROOT_INO)] == [b".csi-snapshots"]
        assert meta.readdir(meta.lookup(ROOT_INO, b".csi-snapshots").ino) == []
    finally:
        meta.shutdown()


def test_volume_holding_a_user_snapshot_is_deleted_with_its_objects(driver: Driver, objects: Path,
                                                                      meta_url: str, workdir: Path) -> None:
    """A pod's user cuts a read-only snapshot inside the volume with `fusecache snapshot`;
    nothing can remove that tree through the mount (EROFS), but DeleteVolume removes the
    whole volume, and every object of it goes."""
    c = driver.s.controller
    kubelet = Kubelet(driver, workdir / "kubelet")
    volume = c.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-user-snapshot", volume_capabilities=[CAP],
        capacity_range=pb.CapacityRange(required_bytes=64 * MiB)), timeout=120).volume
    mounted = kubelet.mount(volume)
    (mounted / "data").mkdir()
    original = {"a.bin": written(mounted / "data" / "a.bin", 2 * MiB + 7, 5),
                "b.bin": written(mounted / "data" / "b.bin", 300_000, 6)}
    written(mounted / "top.bin", MiB, 7)
    run_cli("snapshot", str(mounted / "data"), str(mounted / "frozen"))
    assert hashes(mounted / "frozen") == original
    with pytest.raises(OSError) as info:
        (mounted / "frozen" / "a.bin").unlink()
    assert info.value.errno == 30  # EROFS
    (mounted / "data" / "a.bin").unlink()  # its data stays: the snapshot holds it
    assert hashes(mounted / "frozen") == original
    assert block_files(objects)

    kubelet.unmount(volume.volume_id)
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=120)
    assert block_files(objects) == []
    meta = open_meta(meta_url)
    try:
        assert meta.readdir(ROOT_INO) == []
    finally:
        meta.shutdown()
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=120)  # again: OK
