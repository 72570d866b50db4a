"""Node RPC rules of the CSI spec that csi-sanity does not exercise (or only in part), on real
mounts: repeated publishes with other arguments, stage/publish capability mismatches, unstage
while published, paths that belong to another volume, and the single-node access modes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.mountinfo import top_mount
from tests.csi.harness import MOUNT_CAP, Driver, capability
from tests.csi.test_node import code_of, create, fuse_clients, publish, stage, unpublish, unstage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

Mode = pb.VolumeCapability.AccessMode
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def publish_code(driver: Driver, volume: pb.Volume, staging: Path, target: Path, readonly: bool = False,
                 cap: pb.VolumeCapability = MOUNT_CAP) -> grpc.StatusCode:
    return code_of(driver.s.node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=cap, readonly=readonly, volume_context=volume.volume_context))


def stage_code(driver: Driver, volume: pb.Volume, staging: Path, cap: pb.VolumeCapability = MOUNT_CAP
               ) -> grpc.StatusCode:
    return code_of(driver.s.node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=cap,
        volume_context=volume.volume_context))


def writable(path: Path) -> bool:
    try:
        (path / ".probe").write_bytes(b"p")
    except OSError as exc:
        assert exc.errno == errno.EROFS, exc
        return False
    (path / ".probe").unlink()
    return True


@pytest.fixture
def where(workdir: Path) -> dict[str, Path]:
    (workdir / "pods").mkdir()
    return {"staging": workdir / "staging", "staging2": workdir / "staging2",
            "t1": workdir / "pods" / "t1", "t2": workdir / "pods" / "t2"}


def test_second_publish_at_the_same_target_with_other_arguments(driver: Driver, where: dict[str, Path]) -> None:
    """T1=T2, P1!=P2 → ALREADY_EXISTS (readonly, mount flags or access mode); P1=P2 → OK."""
    volume = create(driver, "pvc-republish")
    cap = capability(Mode.MULTI_NODE_MULTI_WRITER)
    stage(driver, volume, where["staging"], cap)
    publish(driver, volume, where["staging"], where["t1"], cap=cap)
    (where["t1"] / "f").write_bytes(b"data")
    assert publish_code(driver, volume, where["staging"], where["t1"], readonly=True, cap=cap) == ALREADY_EXISTS
    assert publish_code(driver, volume, where["staging"], where["t1"],
                        cap=capability(Mode.MULTI_NODE_MULTI_WRITER, flags=("noexec",))) == ALREADY_EXISTS
    assert publish_code(driver, volume, where["staging"], where["t1"],
                        cap=capability(Mode.MULTI_NODE_SINGLE_WRITER)) == ALREADY_EXISTS
    publish(driver, volume, where["staging"], where["t1"], cap=cap)  # the same again: OK
    # None of the refused calls changed the mount.
    assert writable(where["t1"]) and (where["t1"] / "f").read_bytes() == b"data"
    # T1!=T2 with other arguments: fine for a MULTI_NODE volume.
    publish(driver, volume, where["staging"], where["t2"], readonly=True, cap=cap)
    assert not writable(where["t2"]) and (where["t2"] / "f").read_bytes() == b"data"
    for target in ("t1", "t2"):
        unpublish(driver, volume.volume_id, where[target])
    unstage(driver, volume.volume_id, where["staging"])


def test_single_node_writer_may_be_published_for_several_pods_of_the_node(driver: Driver,
                                                                            where: dict[str, Path]) -> None:
    """Kubernetes maps ReadWriteOnce to SINGLE_NODE_WRITER and lets every pod on the node use
    the volume, each with its own target path; refusing the second (the spec's SHOULD for
    non-MULTI_NODE modes) would break that, so the driver allows it."""
    volume = create(driver, "pvc-rwo")
    stage(driver, volume, where["staging"])
    publish(driver, volume, where["staging"], where["t1"])
    publish(driver, volume, where["staging"], where["t2"])
    (where["t1"] / "f").write_bytes(b"shared on the node")
    assert (where["t2"] / "f").read_bytes() == b"shared on the node"
    for target in ("t1", "t2"):
        unpublish(driver, volume.volume_id, where[target])
    unstage(driver, volume.volume_id, where["staging"])


@pytest.mark.parametrize("staged_as", [capability(Mode.MULTI_NODE_READER_ONLY),
                                       capability(Mode.SINGLE_NODE_WRITER, flags=("ro",))],
                         ids=["reader-only-mode", "ro-flag"])
def test_writable_publish_of_a_read_only_staged_volume_is_refused(driver: Driver, where: dict[str, Path],
                                                                   staged_as: pb.VolumeCapability) -> None:
    """The capability of a publish exceeds what the volume was staged with → FAILED_PRECONDITION
    (a bind of a read-only staging mount would otherwise come out writable)."""
    volume = create(driver, "pvc-ro-stage")
    stage(driver, volume, where["staging"], staged_as)
    assert not writable(where["staging"])
    assert publish_code(driver, volume, where["staging"], where["t1"],
                        cap=capability(Mode.SINGLE_NODE_WRITER)) == FAILED_PRECONDITION
    assert top_mount(str(where["t1"])) is None and not where["t1"].exists()
    # Read-only publishes are what such a volume is for.
    publish(driver, volume, where["staging"], where["t1"], readonly=True, cap=capability(Mode.SINGLE_NODE_WRITER))
    publish(driver, volume, where["staging"], where["t2"], cap=capability(Mode.MULTI_NODE_READER_ONLY))
    assert not writable(where["t1"]) and not writable(where["t2"])
    for target in ("t1", "t2"):
        unpublish(driver, volume.volume_id, where[target])
    unstage(driver, volume.volume_id, where["staging"])


def test_unstage_while_published_is_refused_and_keeps_every_mount(driver: Driver, where: dict[str, Path]) -> None:
    volume = create(driver, "pvc-busy")
    stage(driver, volume, where["staging"])
    publish(driver, volume, where["staging"], where["t1"])
    (where["t1"] / "f").write_bytes(b"still here")
    for _ in range(2):
        assert code_of(driver.s.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(where["staging"]))) == FAILED_PRECONDITION
    assert (where["staging"] / "f").read_bytes() == b"still here"
    assert writable(where["t1"]) and (where["t1"] / "f").read_bytes() == b"still here"
    assert len(fuse_clients(driver)) == 1
    unpublish(driver, volume.volume_id, where["t1"])
    unstage(driver, volume.volume_id, where["staging"])
    assert fuse_clients(driver) == []


def test_paths_of_another_volume_are_not_taken_over(driver: Driver, where: dict[str, Path]) -> None:
    """Staging or publishing at a path another volume is staged or published at is refused
    (ALREADY_EXISTS) and leaves that volume's mount alone; unpublishing or unstaging a path
    under the wrong volume id is a no-op."""
    a, b = create(driver, "pvc-owner-a"), create(driver, "pvc-owner-b")
    stage(driver, a, where["staging"])
    publish(driver, a, where["staging"], where["t1"])
    (where["t1"] / "a").write_bytes(b"a")
    assert stage_code(driver, b, where["staging"]) == ALREADY_EXISTS
    assert stage_code(driver, b, where["t1"]) == ALREADY_EXISTS
    stage(driver, b, where["staging2"])
    assert publish_code(driver, b, where["staging2"], where["t1"]) == ALREADY_EXISTS
    assert publish_code(driver, b, where["staging2"], where["staging"]) == ALREADY_EXISTS
    unpublish(driver, b.volume_id, where["t1"])
    unstage(driver, b.volume_id, where["staging"])
    for path in ("staging", "t1"):
        assert (where[path] / "a").read_bytes() == b"a", path
    assert not (where["staging2"] / "a").exists()
    unpublish(driver, a.volume_id, where["t1"])
    for volume, staging in ((a, where["staging"]), (b, where["staging2"])):
        unstage(driver, volume.volume_id, staging)
    assert fuse_clients(driver) == []


def test_single_node_single_writer_is_published_at_one_target(driver: Driver, where: dict[str, Path]) -> None:
    """SINGLE_NODE_SINGLE_WRITER is one workload: a publish at a second target is
    FAILED_PRECONDITION (as csi-sanity checks), in either order of the modes, and leaves
    nothing behind; once the first is unpublished another target may take it."""
    single = capability(Mode.SINGLE_NODE_SINGLE_WRITER)
    volume = create(driver, "pvc-rwop")
    stage(driver, volume, where["staging"], single)
    publish(driver, volume, where["staging"], where["t1"], cap=single)
    publish(driver, volume, where["staging"], where["t1"], cap=single)  # the same again: OK
    (where["t1"] / "f").write_bytes(b"one writer")
    for cap, readonly in ((single, False), (capability(Mode.SINGLE_NODE_MULTI_WRITER), False),
                          (capability(Mode.SINGLE_NODE_READER_ONLY), True)):
        assert publish_code(driver, volume, where["staging"], where["t2"], readonly, cap) == FAILED_PRECONDITION
        assert top_mount(str(where["t2"])) is None and not where["t2"].exists()
    assert writable(where["t1"]) and (where["t1"] / "f").read_bytes() == b"one writer"
    unpublish(driver, volume.volume_id, where["t1"])
    publish(driver, volume, where["staging"], where["t2"], cap=single)
    assert (where["t2"] / "f").read_bytes() == b"one writer"
    # The other way round: a volume with a publish of another mode takes no single-writer one.
    unpublish(driver, volume.volume_id, where["t2"])
    publish(driver, volume, where["staging"], where["t1"], cap=capability(Mode.SINGLE_NODE_MULTI_WRITER))
    assert publish_code(driver, volume, where["staging"], where["t2"], cap=single) == FAILED_PRECONDITION
    assert not where["t2"].exists()
    unpublish(driver, volume.volume_id, where["t1"])
    unstage(driver, volume.volume_id, where["staging"])
    assert fuse_clients(driver) == []


def test_single_node_multi_writer_serves_several_pods_of_the_node(driver: Driver, where: dict[str, Path]) -> None:
    """SINGLE_NODE_MULTI_WRITER: every publish on the node writes through the one FUSE client."""
    multi = capability(Mode.SINGLE_NODE_MULTI_WRITER)
    volume = create(driver, "pvc-rwo-multi")
    stage(driver, volume, where["staging"], multi)
    publish(driver, volume, where["staging"], where["t1"], cap=multi)
    publish(driver, volume, where["staging"], where["t2"], cap=multi)
    (where["t1"] / "from-1").write_bytes(b"one")
    (where["t2"] / "from-2").write_bytes(b"two")
    assert (where["t2"] / "from-1").read_bytes() == b"one" and (where["t1"] / "from-2").read_bytes() == b"two"
    assert len(fuse_clients(driver)) == 1
    for target in ("t1", "t2"):
        unpublish(driver, volume.volume_id, where[target])
    unstage(driver, volume.volume_id, where["staging"])
    assert fuse_clients(driver) == []
