"""Controller service conformance (the csi-sanity controller checks and more), against the real
driver process and a real Redis-backed filesystem; results are checked in the engine."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_driver._proto import csi_pb2 as pb
from csi_driver.volume_id import dir_name, parse_id
from csi_driver.volumes import tree_engine
from fusecache.errors import FsError
from fusecache.meta import clone as tree
from fusecache.meta import open_meta
from fusecache.meta.base import Meta
from fusecache.types import ROOT_INO
from tests.csi.harness import MOUNT_CAP, NODE_ID, Driver, capability, running_driver
from tests.meta.conformance import drain_garbage, mkfile, write

GiB = 1 << 30
RPC = pb.ControllerServiceCapability.RPC


@pytest.fixture
def meta(fs_meta_url: str) -> Iterator[Meta]:
    m = open_meta(fs_meta_url)
    yield m
    m.shutdown()


def create(driver: Driver, name: str, required: int = 0, limit: int = 0, **kwargs: object) -> pb.Volume:
    request = pb.CreateVolumeRequest(name=name, volume_capabilities=[MOUNT_CAP],
                                     capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit),
                                     **kwargs)  # type: ignore[arg-type]
    return driver.s.controller.CreateVolume(request, timeout=60).volume


def code_of(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=60)
    return info.value.code()


def listed(driver: Driver, **kwargs: object) -> list[str]:
    return [e.volume.volume_id for e in driver.s.controller.ListVolumes(pb.ListVolumesRequest(**kwargs)).entries]  # type: ignore[arg-type]


# -- capabilities ----------------------------------------------------------------------------
def test_capabilities_with_a_default_filesystem(driver: Driver) -> None:
    caps = {c.rpc.type for c in driver.s.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    assert caps == {RPC.CREATE_DELETE_VOLUME, RPC.EXPAND_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY,
                    RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME,
                    RPC.GET_VOLUME, RPC.VOLUME_CONDITION, RPC.MODIFY_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER}


def test_unsupported_rpcs_are_unimplemented(driver: Driver) -> None:
    c = driver.s.controller
    assert code_of(c.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(volume_id="v", node_id=NODE_ID)) \
        == grpc.StatusCode.UNIMPLEMENTED


# -- CreateVolume ----------------------------------------------------------------------------
@pytest.mark.parametrize("request_", [
    pb.CreateVolumeRequest(volume_capabilities=[MOUNT_CAP]),  # no name
    pb.CreateVolumeRequest(name="v"),  # no capabilities
    pb.CreateVolumeRequest(name="v", volume_capabilities=[capability(block=True)]),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[capability(pb.VolumeCapability.AccessMode.UNKNOWN)]),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], parameters={"bogus": "1"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], parameters={"cacheLow": "7"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], volume_content_source=pb.VolumeContentSource()),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP],
                           capacity_range=pb.CapacityRange(required_bytes=-1)),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], mutable_parameters={"XXX_FakeKey": "x"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], mutable_parameters={"readahead": "2"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], mutable_parameters={"maxInodes": "-1"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP], mutable_parameters={"maxInodes": "1e6"}),
    pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP],
                           mutable_parameters={"maxInodes": str((1 << 53) + 1)}),
], ids=["no-name", "no-caps", "block", "unknown-mode", "unknown-param", "bad-param", "empty-content-source",
        "negative-size", "unknown-mutable", "mount-setting-as-mutable", "negative-inodes", "float-inodes",
        "too-many-inodes"])
def test_create_rejects_invalid_requests(driver: Driver, meta: Meta, request_: pb.CreateVolumeRequest) -> None:
    assert code_of(driver.s.controller.CreateVolume, request_) == grpc.StatusCode.INVALID_ARGUMENT
    assert [e.name for e in meta.readdir(ROOT_INO)] == []  # nothing half-made


def test_create_required_above_limit_is_out_of_range(driver: Driver) -> None:
    request = pb.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT_CAP],
                                     capacity_range=pb.CapacityRange(required_bytes=2 * GiB, limit_bytes=GiB))
    assert code_of(driver.s.controller.CreateVolume, request) == grpc.StatusCode.OUT_OF_RANGE


def test_create_makes_a_directory_with_a_quota_and_a_marker(driver: Driver, meta: Meta) -> None:
    volume = create(driver, "pvc-abc", required=GiB, parameters={"readahead": "2", "attrTimeout": "5"})
    assert volume.capacity_bytes == GiB
    assert dict(volume.volume_context) == {"readahead": "2", "attrTimeout": "5"}
    parsed = parse_id(volume.volume_id)
    assert parsed is not None and parsed.dir == "pvc-abc"
    assert parsed.fs == meta.load().uuid.replace("-", "")
    attr = meta.lookup(ROOT_INO, b"pvc-abc")
    assert attr.is_dir and attr.mode & 0o777 == 0o777
    quota = meta.get_quota(attr.ino)
    assert quota is not None and quota.max_bytes == GiB
    assert json.loads(meta.getxattr(attr.ino, b"trusted.csi.fusecache.io"))["name"] == "pvc-abc"
    assert [e.name for e in meta.readdir(ROOT_INO)] == [b"pvc-abc"]  # no .csi-creating- leftover
    assert meta.statfs(attr.ino).total_bytes == GiB


def test_create_is_idempotent_and_rejects_a_different_size(driver: Driver, meta: Meta) -> None:
    first = create(driver, "pvc-twice", required=GiB, limit=GiB)
    again = create(driver, "pvc-twice", required=GiB, limit=GiB)
    assert again == first
    assert code_of(driver.s.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-twice", volume_capabilities=[MOUNT_CAP],
        capacity_range=pb.CapacityRange(required_bytes=2 * GiB, limit_bytes=2 * GiB))) == grpc.StatusCode.ALREADY_EXISTS
    quota = meta.get_quota(meta.lookup(ROOT_INO, b"pvc-twice").ino)
    assert quota is not None and quota.max_bytes == GiB  # unchanged



def test_create_again_with_other_mount_parameters_is_already_exists(driver: Driver, meta: Meta) -> None:
    """The spec's idempotency covers parameters too: the PV carries the settings the volume was
    created with, so a repeat asking for others is another volume of the same name."""
    params = {"readahead": "2", "csi.storage.k8s.io/pvc/name": "data"}
    first = create(driver, "pvc-params", required=GiB, parameters=params)
    # Kubernetes' own keys and an order change are not a difference.
    assert create(driver, "pvc-params", required=GiB,
                  parameters={"csi.storage.k8s.io/pvc/name": "other", "readahead": "2"}) == first
    for other in ({"readahead": "3"}, {}, {"readahead": "2", "sharedClient": "false"}):
        assert code_of(driver.s.controller.CreateVolume, pb.CreateVolumeRequest(
            name="pvc-params", volume_capabilities=[MOUNT_CAP], parameters=other,
            capacity_range=pb.CapacityRange(required_bytes=GiB))) == grpc.StatusCode.ALREADY_EXISTS, other
    marker = json.loads(meta.getxattr(meta.lookup(ROOT_INO, b"pvc-params").ino, b"trusted.csi.fusecache.io"))
    assert marker["context"] == {"readahead": "2"}
    # A volume whose marker predates the recorded context accepts any settings.
    ino = meta.lookup(ROOT_INO, b"pvc-params").ino
    meta.setxattr(ino, b"trusted.csi.fusecache.io", json.dumps({"name": "pvc-params"}).encode())
    assert create(driver, "pvc-params", required=GiB, parameters={"readahead": "3"}).volume_context["readahead"] == "3"

def test_create_without_capacity_has_no_quota(driver: Driver, meta: Meta) -> None:
    volume = create(driver, "pvc-unlimited")
    assert volume.capacity_bytes == 0
    assert meta.get_quota(meta.lookup(ROOT_INO, b"pvc-unlimited").ino) is None
    assert code_of(driver.s.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-unlimited", volume_capabilities=[MOUNT_CAP],
        capacity_range=pb.CapacityRange(required_bytes=GiB))) == grpc.StatusCode.ALREADY_EXISTS


def test_create_with_a_maximum_length_name(driver: Driver, meta: Meta) -> None:
    name = "sanity-controller-create-maxlen-" + "x" * 96
    assert len(name) == 128
    volume = create(driver, name, required=GiB)
    assert len(volume.volume_id) <= 128
    assert create(driver, name, required=GiB).volume_id == volume.volume_id
    assert meta.lookup(ROOT_INO, dir_name(name).encode()).is_dir


def test_create_refuses_a_directory_that_is_not_its_volume(driver: Driver, meta: Meta) -> None:
    meta.mkdir(ROOT_INO, b"pvc-user-data", 0o755, 0, 0)
    assert code_of(driver.s.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-user-data", volume_capabilities=[MOUNT_CAP])) == grpc.StatusCode.ALREADY_EXISTS


def test_concurrent_creates_of_one_name_make_one_volume(driver: Driver, meta: Meta) -> None:
    results: list[str] = []
    errors: list[Exception] = []

    def one() -> None:
        try:
            results.append(create(driver, "pvc-race", required=GiB).volume_id)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and len(results) == 6
    assert [e.name for e in meta.readdir(ROOT_INO)] == [b"pvc-race"]


def test_create_resumes_after_a_crash_mid_creation(driver: Driver, meta: Meta) -> None:
    """A `.csi-creating-` directory left by a crashed controller is adopted, not duplicated."""
    leftover = meta.mkdir(ROOT_INO, b".csi-creating-pvc-crash", 0o777, 0, 0)
    meta.set_quota(leftover.ino, 5, 0)
    volume = create(driver, "pvc-crash", required=GiB)
    attr = meta.lookup(ROOT_INO, b"pvc-crash")
    assert attr.ino == leftover.ino
    quota = meta.get_quota(attr.ino)
    assert volume.capacity_bytes == GiB and quota is not None and quota.max_bytes == GiB
    assert [e.name for e in meta.readdir(ROOT_INO)] == [b"pvc-crash"]


# -- DeleteVolume ----------------------------------------------------------------------------
def test_delete_validation_and_unknown_ids(driver: Driver) -> None:
    c = driver.s.controller
    assert code_of(c.DeleteVolume, pb.DeleteVolumeRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id="fake-vol-id"))  # not ours: OK
    volume = create(driver, "pvc-gone")
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id.replace("gone", "never")))  # no such dir: OK


def test_delete_removes_the_tree_and_is_idempotent(driver: Driver, meta: Meta) -> None:
    volume = create(driver, "pvc-del", required=GiB)
    root = meta.lookup(ROOT_INO, b"pvc-del")
    sub = meta.mkdir(root.ino, b"a", 0o755, 0, 0)
    deeper = meta.mkdir(sub.ino, b"b", 0o755, 0, 0)
    for parent in (root.ino, sub.ino, deeper.ino):
        meta.mknod(parent, b"f", 0o100644, 0, 0)
    meta.symlink(deeper.ino, b"l", b"../f", 0, 0)
    other = create(driver, "pvc-keep")
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
    names = [e.name for e in meta.readdir(ROOT_INO)]
    assert names == [b"pvc-keep"]
    assert meta.get_quota(root.ino) is None
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))  # again: OK
    assert listed(driver) == [other.volume_id]


def frozen_volume(driver: Driver, meta: Meta, name: str) -> tuple[pb.Volume, int, int]:
    """A volume holding data and, inside it, a read-only snapshot of part of it (what
    `fusecache snapshot` makes on a mount). Returns (volume, root inode, snapshot inode)."""
    volume = create(driver, name, required=GiB)
    root = meta.lookup(ROOT_INO, name.encode()).ino
    data = meta.mkdir(root, b"data", 0o755, 0, 0).ino
    deeper = meta.mkdir(data, b"deeper", 0o755, 0, 0).ino
    for parent, size in ((data, 1000), (deeper, 5000)):
        write(meta, mkfile(meta, parent, b"f").ino, 0, size)
    meta.symlink(deeper, b"l", b"../f", 0, 0)
    frozen = tree.clone(tree_engine(meta), data, root, b"snapshot", read_only=True)
    with pytest.raises(FsError) as info:  # what made the old file-by-file delete fail
        meta.unlink(frozen.ino, b"f", False)
    assert info.value.errno == errno.EROFS
    return volume, root, frozen.ino


def slices_of(meta: Meta) -> set[int]:
    """Slice ids some file of the filesystem holds."""
    found: set[int] = set()
    stack = [ROOT_INO]
    while stack:
        for entry in meta.readdir(stack.pop()):
            if entry.attr.is_dir:
                stack.append(entry.attr.ino)
            elif entry.attr.is_file:
                found |= {s.id for s in meta.read(entry.attr.ino, 0)}
    return found


def test_delete_removes_frozen_snapshot_trees(driver: Driver, meta: Meta) -> None:
    """A volume holding a read-only snapshot tree deletes cleanly, and what only it held
    goes to the garbage collector (slices another volume still holds stay)."""
    volume, root, _ = frozen_volume(driver, meta, "pvc-frozen")
    keep = create(driver, "pvc-keep")
    kept_file = mkfile(meta, meta.lookup(ROOT_INO, b"pvc-keep").ino, b"k").ino
    _, kept_slice = write(meta, kept_file, 0, 300)
    doomed = slices_of(meta) - {kept_slice.id}
    assert len(doomed) == 2  # the snapshot shares them with the files it was cut from
    meta.garbage_delay = 0.0  # this engine sees what waits out the filesystem's delay
    assert drain_garbage(meta) == set()
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    assert [e.name for e in meta.readdir(ROOT_INO)] == [b"pvc-keep"]
    assert meta.get_quota(root) is None
    assert slices_of(meta) == {kept_slice.id}
    # Each slice reaches the garbage list once, when its last holder went (the driver's own
    # collector left them there: the filesystem's garbage delay is the default 5 min).
    assert {slice_id for slice_id, _ in drain_garbage(meta)} == doomed
    assert listed(driver) == [keep.volume_id]


def test_delete_resumes_a_removal_cut_short(driver: Driver, meta: Meta) -> None:
    """A controller that died mid-delete left the marked root, no quota and half a frozen
    tree: the retry finishes it."""
    volume, root, frozen = frozen_volume(driver, meta, "pvc-half")
    meta.del_quota(root)  # the first thing a delete does
    tree.remove_tree(tree_engine(meta), frozen, b"deeper")  # then part of the tree went
    assert listed(driver) == [volume.volume_id]  # still a volume: the marker is on the root
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    assert meta.readdir(ROOT_INO) == [] and slices_of(meta) == set()
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)


def test_delete_refuses_foreign_directories_and_filesystems(driver: Driver, meta: Meta) -> None:
    volume = create(driver, "pvc-mine")
    parsed = parse_id(volume.volume_id)
    assert parsed is not None
    meta.mkdir(ROOT_INO, b"home", 0o755, 0, 0)
    c = driver.s.controller
    assert code_of(c.DeleteVolume, pb.DeleteVolumeRequest(volume_id=f"fc1:{parsed.fs}:home")) \
        == grpc.StatusCode.FAILED_PRECONDITION
    wrong_fs = f"fc1:{'f' * 32}:pvc-mine"
    assert code_of(c.DeleteVolume, pb.DeleteVolumeRequest(volume_id=wrong_fs)) == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(e.name for e in meta.readdir(ROOT_INO)) == [b"home", b"pvc-mine"]


# -- ValidateVolumeCapabilities ----------------------------------------------------------------
def test_validate(driver: Driver) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-val")
    assert code_of(c.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
        volume_capabilities=[MOUNT_CAP])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id)) == grpc.StatusCode.INVALID_ARGUMENT
    for missing in ("fake-vol-id-123", volume.volume_id.replace("pvc-val", "pvc-none")):
        assert code_of(c.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
            volume_id=missing, volume_capabilities=[MOUNT_CAP])) == grpc.StatusCode.NOT_FOUND
    ok = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[
            MOUNT_CAP, capability(pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)]))
    assert len(ok.confirmed.volume_capabilities) == 2
    refused = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[MOUNT_CAP, capability(block=True)]))
    assert not refused.HasField("confirmed") and "block" in refused.message


# -- ListVolumes / GetCapacity ----------------------------------------------------------------
def test_list_volumes_with_pagination(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    assert listed(driver) == []
    ids = [create(driver, f"pvc-{i}", required=GiB).volume_id for i in range(5)]
    meta.mkdir(ROOT_INO, b"not-a-volume", 0o755, 0, 0)
    assert sorted(listed(driver)) == sorted(ids)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = c.ListVolumes(pb.ListVolumesRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        assert all(e.volume.capacity_bytes == GiB for e in page.entries)
        seen += [e.volume.volume_id for e in page.entries]
        pages += 1
        if pages == 1:
            # The last volume of a page goes away: the next page still starts right after it.
            c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=seen[-1]))
        token = page.next_token
        if not token:
            break
    assert pages == 3 and seen == sorted(ids)
    assert code_of(c.ListVolumes, pb.ListVolumesRequest(starting_token="invalid-token")) == grpc.StatusCode.ABORTED
    assert code_of(c.ListVolumes, pb.ListVolumesRequest(max_entries=-1)) == grpc.StatusCode.INVALID_ARGUMENT


def test_get_capacity(driver: Driver) -> None:
    c = driver.s.controller
    assert c.GetCapacity(pb.GetCapacityRequest()).available_capacity > 0
    assert c.GetCapacity(pb.GetCapacityRequest(volume_capabilities=[capability(block=True)])).available_capacity == 0


# -- ControllerExpandVolume ------------------------------------------------------------------
def test_expand(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-grow", required=GiB)
    assert code_of(c.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
        capacity_range=pb.CapacityRange(required_bytes=GiB))) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id.replace("grow", "gone"),
        capacity_range=pb.CapacityRange(required_bytes=GiB))) == grpc.StatusCode.NOT_FOUND
    grown = c.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id, capacity_range=pb.CapacityRange(required_bytes=3 * GiB)))
    assert grown.capacity_bytes == 3 * GiB and not grown.node_expansion_required
    ino = meta.lookup(ROOT_INO, b"pvc-grow").ino
    quota = meta.get_quota(ino)
    assert quota is not None and quota.max_bytes == 3 * GiB
    # Never shrinks: a smaller request reports the current size.
    assert c.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id, capacity_range=pb.CapacityRange(required_bytes=GiB))).capacity_bytes == 3 * GiB
    assert listed(driver)[0] == volume.volume_id
    assert c.ListVolumes(pb.ListVolumesRequest()).entries[0].volume.capacity_bytes == 3 * GiB


# -- mutable parameters: CreateVolume and ControllerModifyVolume -------------------------------
def quota_of(meta: Meta, dir_: bytes) -> tuple[int, int] | None:
    """(max_bytes, max_inodes) of a volume directory's quota; None without one."""
    quota = meta.get_quota(meta.lookup(ROOT_INO, dir_).ino)
    return None if quota is None else (quota.max_bytes, quota.max_inodes)


def modify(driver: Driver, volume_id: str, **params: str) -> pb.ControllerModifyVolumeResponse:
    return driver.s.controller.ControllerModifyVolume(pb.ControllerModifyVolumeRequest(
        volume_id=volume_id, mutable_parameters=params), timeout=60)


def edquot(call, *args: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as info:
        call(*args)
    assert info.value.errno == errno.EDQUOT, info.value


def test_create_applies_mutable_parameters(driver: Driver, meta: Meta) -> None:
    """maxInodes is the quota's inode limit from the start, with or without a capacity; a
    repeat is idempotent on the keys it names."""
    sized = create(driver, "pvc-inodes", required=GiB, mutable_parameters={"maxInodes": "3"})
    assert sized.capacity_bytes == GiB and quota_of(meta, b"pvc-inodes") == (GiB, 3)
    root = meta.lookup(ROOT_INO, b"pvc-inodes").ino
    sub = meta.mkdir(root, b"d", 0o755, 0, 0)
    meta.mknod(root, b"f", 0o100644, 0, 0)
    meta.symlink(sub.ino, b"l", b"../f", 0, 0)
    edquot(meta.mknod, sub.ino, b"one-too-many", 0o100644, 0, 0)  # the engine enforces it for every client
    unsized = create(driver, "pvc-inodes-only", mutable_parameters={"maxInodes": "5"})
    assert unsized.capacity_bytes == 0 and quota_of(meta, b"pvc-inodes-only") == (0, 5)
    # Repeats: the same key and value, or no mutable parameters, find the volume; another value does not.
    assert create(driver, "pvc-inodes", required=GiB, mutable_parameters={"maxInodes": "3"}) == sized
    assert create(driver, "pvc-inodes", required=GiB) == sized
    assert code_of(driver.s.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-inodes", volume_capabilities=[MOUNT_CAP], capacity_range=pb.CapacityRange(required_bytes=GiB),
        mutable_parameters={"maxInodes": "4"})) == grpc.StatusCode.ALREADY_EXISTS
    assert quota_of(meta, b"pvc-inodes") == (GiB, 3)
    # maxInodes "0" is no limit: no quota at all for a volume without a capacity.
    create(driver, "pvc-no-limits", mutable_parameters={"maxInodes": "0"})
    assert quota_of(meta, b"pvc-no-limits") is None


def test_modify_volume_validation(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-mod-val", required=GiB)

    def code(volume_id: str, params: dict[str, str]) -> grpc.StatusCode:
        return code_of(c.ControllerModifyVolume, pb.ControllerModifyVolumeRequest(
            volume_id=volume_id, mutable_parameters=params))

    assert code("", {"maxInodes": "10"}) == grpc.StatusCode.INVALID_ARGUMENT
    assert code("non-existing-volume-id", {"maxInodes": "10"}) == grpc.StatusCode.NOT_FOUND
    assert code(volume.volume_id.replace("mod-val", "mod-none"), {"maxInodes": "10"}) == grpc.StatusCode.NOT_FOUND
    meta.mkdir(ROOT_INO, b"home", 0o755, 0, 0)
    parsed = parse_id(volume.volume_id)
    assert parsed is not None
    assert code(f"fc1:{parsed.fs}:home", {"maxInodes": "10"}) == grpc.StatusCode.NOT_FOUND  # not a CSI volume
    assert meta.get_quota(meta.lookup(ROOT_INO, b"home").ino) is None
    for bad in ({"XXX_FakeKey": "XXX_FakeValue"}, {"maxInodes": "10", "cache": "mem:1GiB"},
                {"maxInodes": ""}, {"maxInodes": "ten"}, {"maxInodes": "-5"}, {"maxInodes": "٣"}):
        assert code(volume.volume_id, bad) == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert quota_of(meta, b"pvc-mod-val") == (GiB, 0)  # nothing was changed by a refused call


def test_modify_volume_sets_the_inode_limit(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-mod", required=GiB)
    root = meta.lookup(ROOT_INO, b"pvc-mod").ino
    for name in (b"a", b"b", b"c"):
        meta.mknod(root, name, 0o100644, 0, 0)
    modify(driver, volume.volume_id, maxInodes="4")
    assert quota_of(meta, b"pvc-mod") == (GiB, 4)  # the capacity stays
    modify(driver, volume.volume_id, maxInodes="4")  # idempotent
    meta.mknod(root, b"d", 0o100644, 0, 0)
    edquot(meta.mknod, root, b"e", 0o100644, 0, 0)
    # No key: nothing changes (the spec: never modify on the absence of a key).
    modify(driver, volume.volume_id)
    assert quota_of(meta, b"pvc-mod") == (GiB, 4)
    # Below what the volume holds: accepted; no new entries until some go.
    modify(driver, volume.volume_id, maxInodes="2")
    edquot(meta.mkdir, root, b"dir", 0o755, 0, 0)
    meta.unlink(root, b"a", False)
    quota = meta.get_quota(root)
    assert quota is not None and quota.used_inodes == 3 and quota.max_inodes == 2
    # Expansion keeps the inode limit; "0" lifts it and keeps the byte limit.
    c.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id, capacity_range=pb.CapacityRange(required_bytes=2 * GiB)))
    assert quota_of(meta, b"pvc-mod") == (2 * GiB, 2)
    modify(driver, volume.volume_id, maxInodes="0")
    assert quota_of(meta, b"pvc-mod") == (2 * GiB, 0)
    meta.mkdir(root, b"dir", 0o755, 0, 0)
    # A volume without a capacity: the inode limit is its whole quota, and lifting it drops it.
    unsized = create(driver, "pvc-mod-unsized")
    assert quota_of(meta, b"pvc-mod-unsized") is None
    modify(driver, unsized.volume_id, maxInodes="7")
    assert quota_of(meta, b"pvc-mod-unsized") == (0, 7)
    listed_sizes = {e.volume.volume_id: e.volume.capacity_bytes for e in c.ListVolumes(pb.ListVolumesRequest()).entries}
    assert listed_sizes[unsized.volume_id] == 0  # still unlimited in bytes
    modify(driver, unsized.volume_id, maxInodes="0")
    assert quota_of(meta, b"pvc-mod-unsized") is None


def test_validate_checks_mutable_parameters(driver: Driver) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-val-mut")
    ok = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[MOUNT_CAP], mutable_parameters={"maxInodes": "9"}))
    assert ok.HasField("confirmed")
    refused = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[MOUNT_CAP], mutable_parameters={"iops": "9"}))
    assert not refused.HasField("confirmed") and "iops" in refused.message


# -- filesystems named by secrets ------------------------------------------------------------
def test_secrets_name_the_filesystem_and_can_format_it(meta_url: str, workdir: Path) -> None:
    """No default filesystem: every request names one through its secrets; the first
    CreateVolume formats it from the parameters; secrets never reach the log."""
    secrets = {"metaurl": meta_url, "access-key": "AKIDEXAMPLEKEY", "secret-key": "wJalrXUtnFEMIsecretKEY"}
    params = {"storage": "file", "bucket": str(workdir / "objects"), "name": "fresh-fs", "readahead": "1"}
    with running_driver(workdir / "drv", "--mode", "controller") as driver:
        c = driver.s.controller
        caps = {cap.rpc.type for cap in c.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()).capabilities}
        # ListVolumes, GetCapacity and ControllerGetVolume carry no secrets: they need a default fs.
        assert caps == {RPC.CREATE_DELETE_VOLUME, RPC.EXPAND_VOLUME, RPC.CREATE_DELETE_SNAPSHOT,
                        RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME, RPC.MODIFY_VOLUME,
                        RPC.SINGLE_NODE_MULTI_WRITER}
        assert code_of(c.CreateVolume, pb.CreateVolumeRequest(name="pvc-s", volume_capabilities=[MOUNT_CAP])) \
            == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(c.CreateVolume, pb.CreateVolumeRequest(
            name="pvc-s", volume_capabilities=[MOUNT_CAP], secrets={"metaurl": meta_url})) \
            == grpc.StatusCode.FAILED_PRECONDITION  # not formatted, and no way to format it given
        volume = c.CreateVolume(pb.CreateVolumeRequest(
            name="pvc-s", volume_capabilities=[MOUNT_CAP], parameters=params, secrets=secrets,
            capacity_range=pb.CapacityRange(required_bytes=GiB)), timeout=120).volume
        assert dict(volume.volume_context) == {"readahead": "1"}
        m = open_meta(meta_url)
        try:
            assert m.load().name == "fresh-fs"
            assert m.lookup(ROOT_INO, b"pvc-s").is_dir
            c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets))
            assert m.readdir(ROOT_INO) == []
        finally:
            m.shutdown()
        log = driver.log()
    assert "wJalrXUtnFEMIsecretKEY" not in log and "AKIDEXAMPLEKEY" not in log
    assert "'secret-key': '****'" in log
