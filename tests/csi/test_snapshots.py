"""Snapshots and clones through the controller (CreateSnapshot, DeleteSnapshot, ListSnapshots,
CreateVolume from a snapshot or a volume, ControllerGetVolume), against the real driver
process on a real redis-server; the results are checked in the metadata engine: what a
snapshot or a clone holds is compared slice by slice with its source."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_driver._proto import csi_pb2 as pb
from csi_driver.volume_id import dir_name, parse_id, parse_snapshot_id
from fusecache.errors import FsError
from fusecache.layout import CHUNK_SIZE
from fusecache.meta import open_meta
from fusecache.meta.base import Meta
from fusecache.types import ROOT_INO, SetAttr
from tests.csi.harness import MOUNT_CAP, Driver, running_driver
from tests.csi.test_controller import code_of, create
from tests.meta.conformance import mkfile, write

GiB = 1 << 30
MARKER = b"trusted.csi.fusecache.io"
RPC = pb.ControllerServiceCapability.RPC


@pytest.fixture
def meta(fs_meta_url: str) -> Iterator[Meta]:
    m = open_meta(fs_meta_url)
    yield m
    m.shutdown()


def snap(driver: Driver, name: str, source_volume_id: str, **kwargs: object) -> pb.Snapshot:
    request = pb.CreateSnapshotRequest(name=name, source_volume_id=source_volume_id, **kwargs)  # type: ignore[arg-type]
    return driver.s.controller.CreateSnapshot(request, timeout=60).snapshot


def from_source(driver: Driver, name: str, *, snapshot_id: str = "", volume_id: str = "",
                required: int = 0) -> pb.Volume:
    return create(driver, name, required=required, volume_content_source=source_of(snapshot_id, volume_id))


def source_of(snapshot_id: str = "", volume_id: str = "") -> pb.VolumeContentSource:
    if snapshot_id:
        return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))
    return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=volume_id))


def listed(driver: Driver, **kwargs: object) -> list[str]:
    response = driver.s.controller.ListSnapshots(pb.ListSnapshotsRequest(**kwargs), timeout=60)  # type: ignore[arg-type]
    return [e.snapshot.snapshot_id for e in response.entries]


def volume_ino(meta: Meta, volume_id: str) -> int:
    parsed = parse_id(volume_id)
    assert parsed is not None
    return meta.lookup(ROOT_INO, parsed.dir.encode()).ino


def snapshot_paths(meta: Meta, snapshot_id: str) -> tuple[int, int]:
    """(wrapper inode, frozen tree inode) of a snapshot."""
    parsed = parse_snapshot_id(snapshot_id)
    assert parsed is not None
    area = meta.lookup(ROOT_INO, b".csi-snapshots").ino
    wrapper = meta.lookup(area, parsed.dir.encode()).ino
    return wrapper, meta.lookup(wrapper, b"data").ino


def fill(meta: Meta, root: int) -> int:
    """A small tree of data: files over two chunks, a subdirectory, a symlink, an xattr.
    Returns the bytes it holds."""
    big = mkfile(meta, root, b"big").ino
    write(meta, big, 0, 1000)
    write(meta, big, CHUNK_SIZE, 5000)
    sub = meta.mkdir(root, b"sub", 0o755, 1000, 1000).ino
    small = mkfile(meta, sub, b"small").ino
    write(meta, small, 0, 77)
    meta.symlink(sub, b"ln", b"../big", 1000, 1000)
    meta.setxattr(small, b"user.tag", b"v1")
    return CHUNK_SIZE + 5000 + 77


def tree_of(meta: Meta, top: int) -> dict[str, tuple[object, ...]]:
    """What is below `top`, by path: mode, size, the slices (shared data has the same slice
    ids), symlink targets and xattrs. Equal trees hold the same bytes."""
    out: dict[str, tuple[object, ...]] = {}
    stack = [(top, "")]
    while stack:
        ino, path = stack.pop()
        for entry in sorted(meta.readdir(ino), key=lambda e: e.name):
            a, p = entry.attr, f"{path}/{entry.name.decode()}"
            data: tuple[object, ...] = ()
            if a.is_file:
                data = tuple(tuple((s.pos, s.id, s.off, s.length) for s in meta.read(a.ino, i))
                             for i in range((a.size + CHUNK_SIZE - 1) // CHUNK_SIZE))
            elif a.is_symlink:
                data = (meta.readlink(a.ino),)
            xattrs = tuple(sorted((n, meta.getxattr(a.ino, n)) for n in meta.listxattr(a.ino)))
            out[p] = (a.mode & 0o7777, a.size, data, xattrs)
            if a.is_dir:
                stack.append((a.ino, p))
    return out


def erofs(call, *args: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as info:
        call(*args)
    assert info.value.errno == errno.EROFS, info.value


# -- capabilities ----------------------------------------------------------------------------
def test_capabilities_include_snapshots_clones_and_get_volume(driver: Driver, meta_url: str, workdir: Path) -> None:
    def caps(d: Driver) -> set[int]:
        return {c.rpc.type for c in d.s.controller.ControllerGetCapabilities(
            pb.ControllerGetCapabilitiesRequest()).capabilities}

    snapshots_and_clones = {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME}
    assert caps(driver) >= snapshots_and_clones | {RPC.GET_VOLUME, RPC.VOLUME_CONDITION}
    # ControllerGetVolume carries no secrets: only with a default filesystem.
    with running_driver(workdir / "no-default", "--mode", "controller") as bare:
        assert caps(bare) & {RPC.GET_VOLUME, RPC.VOLUME_CONDITION} == set()
        assert caps(bare) >= snapshots_and_clones


# -- CreateSnapshot --------------------------------------------------------------------------
def test_create_snapshot_validation(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-src")
    for request in (pb.CreateSnapshotRequest(source_volume_id=volume.volume_id),
                    pb.CreateSnapshotRequest(name="snap"),
                    pb.CreateSnapshotRequest(name="snap", source_volume_id=volume.volume_id,
                                             parameters={"bogus": "1"})):
        assert code_of(c.CreateSnapshot, request) == grpc.StatusCode.INVALID_ARGUMENT
    for missing in ("fake-vol-id", volume.volume_id.replace("pvc-src", "pvc-none")):
        assert code_of(c.CreateSnapshot, pb.CreateSnapshotRequest(
            name="snap", source_volume_id=missing)) == grpc.StatusCode.NOT_FOUND
    assert listed(driver) == []
    # Kubernetes' own keys (--extra-create-metadata) are fine.
    snap(driver, "snap", volume.volume_id, parameters={"csi.storage.k8s.io/volumesnapshot/name": "s"})


def test_snapshot_is_a_frozen_clone_nobody_sees_as_a_volume(driver: Driver, meta: Meta) -> None:
    volume = create(driver, "pvc-data", required=GiB)
    root = volume_ino(meta, volume.volume_id)
    size = fill(meta, root)
    before = tree_of(meta, root)
    snapshot = snap(driver, "snapshot-1", volume.volume_id)
    parsed = parse_snapshot_id(snapshot.snapshot_id)
    assert parsed is not None and parsed.dir == "snapshot-1"
    assert parsed.fs == meta.load().uuid.replace("-", "")
    assert snapshot.source_volume_id == volume.volume_id and snapshot.ready_to_use
    assert snapshot.size_bytes == size
    assert snapshot.creation_time.seconds > 0
    wrapper, data = snapshot_paths(meta, snapshot.snapshot_id)
    assert tree_of(meta, data) == before  # same files, same slices: nothing copied
    marker = json.loads(meta.getxattr(wrapper, MARKER))
    assert (marker["name"], marker["source"], marker["size"]) == ("snapshot-1", volume.volume_id, size)
    assert marker["created_ns"] == snapshot.creation_time.ToNanoseconds()
    area = meta.lookup(ROOT_INO, b".csi-snapshots").ino
    assert [e.name for e in meta.readdir(area)] == [b"snapshot-1"]  # no .csi-creating- leftover
    # Not a volume: ListVolumes shows the source only.
    assert [e.volume.volume_id for e in driver.s.controller.ListVolumes(pb.ListVolumesRequest()).entries] \
        == [volume.volume_id]
    # Every change to the frozen tree is refused, its xattrs included.
    big = meta.lookup(data, b"big").ino
    sub = meta.lookup(data, b"sub").ino
    erofs(meta.mknod, data, b"new", 0o100644, 0, 0)
    erofs(meta.mkdir, sub, b"new", 0o755, 0, 0)
    erofs(meta.unlink, data, b"big", False)
    erofs(meta.rename, data, b"big", data, b"moved", 0)
    erofs(meta.setattr, big, SetAttr(size=0))
    erofs(meta.setattr, data, SetAttr(mode=0o700))
    erofs(meta.setxattr, data, b"user.x", b"1")
    erofs(meta.setxattr, big, b"user.x", b"1")
    erofs(write, meta, big, 0, 10)
    # The source stays writable, and its changes do not reach the snapshot.
    write(meta, meta.lookup(root, b"big").ino, 0, 10)
    meta.unlink(meta.lookup(root, b"sub").ino, b"small", False)
    assert tree_of(meta, data) == before != tree_of(meta, root)


def test_create_snapshot_is_idempotent_by_name(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    first_volume = create(driver, "pvc-one")
    other_volume = create(driver, "pvc-two")
    fill(meta, volume_ino(meta, first_volume.volume_id))
    first = snap(driver, "snap-same", first_volume.volume_id)
    assert snap(driver, "snap-same", first_volume.volume_id) == first
    assert code_of(c.CreateSnapshot, pb.CreateSnapshotRequest(
        name="snap-same", source_volume_id=other_volume.volume_id)) == grpc.StatusCode.ALREADY_EXISTS
    assert listed(driver) == [first.snapshot_id]
    # A maximum-length name gets a hashed directory, and still one snapshot.
    long_name = "snapshot-maxlen-" + "x" * 112
    assert len(long_name) == 128
    long_snap = snap(driver, long_name, first_volume.volume_id)
    assert len(long_snap.snapshot_id) <= 128
    assert snap(driver, long_name, first_volume.volume_id) == long_snap
    parsed = parse_snapshot_id(long_snap.snapshot_id)
    assert parsed is not None and parsed.dir == dir_name(long_name)
    assert sorted(listed(driver)) == sorted([first.snapshot_id, long_snap.snapshot_id])


def test_create_snapshot_finishes_a_crashed_attempt(driver: Driver, meta: Meta) -> None:
    """A wrapper left by a crash is invisible and adopted; its stale clone is cut again."""
    volume = create(driver, "pvc-crash-src")
    root = volume_ino(meta, volume.volume_id)
    fill(meta, root)
    area = meta.mkdir(ROOT_INO, b".csi-snapshots", 0o700, 0, 0).ino
    leftover = meta.mkdir(area, b".csi-creating-snap-crash", 0o700, 0, 0).ino
    stale = meta.mkdir(leftover, b"data", 0o755, 0, 0).ino
    mkfile(meta, stale, b"stale")
    assert listed(driver) == []
    snapshot = snap(driver, "snap-crash", volume.volume_id)
    wrapper, data = snapshot_paths(meta, snapshot.snapshot_id)
    assert wrapper == leftover
    assert tree_of(meta, data) == tree_of(meta, root)
    assert [e.name for e in meta.readdir(area)] == [b"snap-crash"]


# -- ListSnapshots ---------------------------------------------------------------------------
def test_list_snapshots_by_id_by_source_and_in_pages(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    assert listed(driver) == []
    a = create(driver, "pvc-a")
    b = create(driver, "pvc-b")
    of_a = [snap(driver, f"snap-a{i}", a.volume_id).snapshot_id for i in range(3)]
    of_b = [snap(driver, f"snap-b{i}", b.volume_id).snapshot_id for i in range(2)]
    assert sorted(listed(driver)) == sorted(of_a + of_b)
    # By id: that one, or nothing (never an error).
    response = c.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=of_b[1]))
    assert [e.snapshot.snapshot_id for e in response.entries] == [of_b[1]]
    assert response.entries[0].snapshot.source_volume_id == b.volume_id
    assert response.entries[0].snapshot.ready_to_use
    assert listed(driver, snapshot_id="none-exist-id") == []
    assert listed(driver, snapshot_id=of_a[0].replace("snap-a0", "snap-zz")) == []
    assert listed(driver, snapshot_id=of_a[0], source_volume_id=b.volume_id) == []
    # By source volume.
    assert sorted(listed(driver, source_volume_id=a.volume_id)) == sorted(of_a)
    assert listed(driver, source_volume_id=a.volume_id.replace("pvc-a", "pvc-none")) == []
    # Pages of 2; a filter applies across pages.
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = c.ListSnapshots(pb.ListSnapshotsRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        seen += [e.snapshot.snapshot_id for e in page.entries]
        pages += 1
        token = page.next_token
        if not token:
            break
    assert pages == 3 and seen == sorted(of_a + of_b)
    first = c.ListSnapshots(pb.ListSnapshotsRequest(max_entries=2, source_volume_id=a.volume_id))
    rest = c.ListSnapshots(pb.ListSnapshotsRequest(starting_token=first.next_token, source_volume_id=a.volume_id))
    assert [e.snapshot.snapshot_id for e in (*first.entries, *rest.entries)] == sorted(of_a)
    assert not rest.next_token
    # Tokens: never issued, or a ListVolumes one, are ABORTED.
    volume_token = driver.s.controller.ListVolumes(pb.ListVolumesRequest(max_entries=1)).next_token
    for bad in ("invalid-token", volume_token):
        assert code_of(c.ListSnapshots, pb.ListSnapshotsRequest(starting_token=bad)) == grpc.StatusCode.ABORTED
    assert code_of(c.ListSnapshots, pb.ListSnapshotsRequest(max_entries=-1)) == grpc.StatusCode.INVALID_ARGUMENT


# -- GetSnapshot -----------------------------------------------------------------------------
def test_get_snapshot(driver: Driver) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-get-snap")
    snapshot = snap(driver, "snap-get", volume.volume_id)
    snap(driver, "snap-unrelated", volume.volume_id)
    assert c.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=snapshot.snapshot_id)).snapshot == snapshot
    assert code_of(c.GetSnapshot, pb.GetSnapshotRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    for missing in ("none-exist-id", snapshot.snapshot_id.replace("snap-get", "snap-none"),
                    snapshot.snapshot_id.replace(snapshot.snapshot_id.split(":")[1], "f" * 32)):
        assert code_of(c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=missing)) == grpc.StatusCode.NOT_FOUND
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
    assert code_of(c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=snapshot.snapshot_id)) \
        == grpc.StatusCode.NOT_FOUND


# -- DeleteSnapshot --------------------------------------------------------------------------
def test_delete_snapshot(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-del-src")
    fill(meta, volume_ino(meta, volume.volume_id))
    gone = snap(driver, "snap-gone", volume.volume_id)
    kept = snap(driver, "snap-kept", volume.volume_id)
    assert code_of(c.DeleteSnapshot, pb.DeleteSnapshotRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id="reallyfakesnapshotid"))  # not ours: OK
    wrong_fs = gone.snapshot_id.replace(gone.snapshot_id.split(":")[1], "f" * 32)
    assert code_of(c.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=wrong_fs)) \
        == grpc.StatusCode.FAILED_PRECONDITION
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=gone.snapshot_id))
    assert listed(driver) == [kept.snapshot_id]
    area = meta.lookup(ROOT_INO, b".csi-snapshots").ino
    assert [e.name for e in meta.readdir(area)] == [b"snap-kept"]
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=gone.snapshot_id))  # again: OK
    # The source volume lost nothing; deleting it keeps the other snapshot whole.
    root = volume_ino(meta, volume.volume_id)
    before = tree_of(meta, root)
    _, data = snapshot_paths(meta, kept.snapshot_id)
    assert tree_of(meta, data) == before
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert tree_of(meta, data) == before
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=kept.snapshot_id))
    assert meta.readdir(area) == [] and listed(driver) == []


# -- CreateVolume from a snapshot or a volume --------------------------------------------------
def test_volume_from_a_snapshot_and_from_a_volume(driver: Driver, meta: Meta) -> None:
    source = create(driver, "pvc-origin", required=GiB)
    root = volume_ino(meta, source.volume_id)
    size = fill(meta, root)
    original = tree_of(meta, root)
    snapshot = snap(driver, "snap-origin", source.volume_id)
    _, data = snapshot_paths(meta, snapshot.snapshot_id)

    restored = from_source(driver, "pvc-restored", snapshot_id=snapshot.snapshot_id, required=2 * GiB)
    cloned = from_source(driver, "pvc-cloned", volume_id=source.volume_id)
    assert restored.content_source.snapshot.snapshot_id == snapshot.snapshot_id
    assert cloned.content_source.volume.volume_id == source.volume_id
    assert restored.capacity_bytes == 2 * GiB and cloned.capacity_bytes == 0
    restored_root = volume_ino(meta, restored.volume_id)
    cloned_root = volume_ino(meta, cloned.volume_id)
    assert tree_of(meta, restored_root) == original == tree_of(meta, cloned_root)
    # Each is a volume of its own: its marker (not the copied one of the source), its quota.
    marker = json.loads(meta.getxattr(restored_root, MARKER))
    assert (marker["name"], marker["source"]) == ("pvc-restored", {"snapshot": snapshot.snapshot_id})
    assert json.loads(meta.getxattr(cloned_root, MARKER))["source"] == {"volume": source.volume_id}
    quota = meta.get_quota(restored_root)
    assert quota is not None and quota.max_bytes == 2 * GiB and quota.used_bytes == size
    assert meta.get_quota(cloned_root) is None
    assert sorted(e.name for e in meta.readdir(ROOT_INO)) == [
        b".csi-snapshots", b"pvc-cloned", b"pvc-origin", b"pvc-restored"]
    listed_volumes = {e.volume.volume_id: e for e in driver.s.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert listed_volumes[restored.volume_id].volume.content_source == restored.content_source
    assert not listed_volumes[restored.volume_id].status.volume_condition.abnormal

    # Writes to the restored volume and to the clone change neither the snapshot nor the source.
    big = meta.lookup(restored_root, b"big").ino
    write(meta, big, 0, 10)
    meta.setattr(big, SetAttr(size=3))
    mkfile(meta, restored_root, b"new")
    meta.unlink(meta.lookup(cloned_root, b"sub").ino, b"small", False)
    meta.setxattr(restored_root, b"user.x", b"1")  # the restored tree is not frozen
    assert tree_of(meta, data) == original == tree_of(meta, root)
    # The source going away leaves the snapshot and the restored volume whole.
    restored_now = tree_of(meta, restored_root)
    driver.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=source.volume_id))
    assert tree_of(meta, data) == original
    assert tree_of(meta, restored_root) == restored_now
    again = from_source(driver, "pvc-restored-2", snapshot_id=snapshot.snapshot_id)
    assert tree_of(meta, volume_ino(meta, again.volume_id)) == original


def test_volume_from_a_source_idempotency_and_errors(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    source = create(driver, "pvc-base", required=GiB)
    size = fill(meta, volume_ino(meta, source.volume_id))
    other = create(driver, "pvc-other")
    snapshot = snap(driver, "snap-base", source.volume_id)

    def code(name: str, content: pb.VolumeContentSource | None, required: int = 0) -> grpc.StatusCode:
        request = pb.CreateVolumeRequest(name=name, volume_capabilities=[MOUNT_CAP],
                                         capacity_range=pb.CapacityRange(required_bytes=required))
        if content is not None:
            request.volume_content_source.CopyFrom(content)
        return code_of(c.CreateVolume, request)

    # Missing sources are NOT_FOUND; an empty one is INVALID_ARGUMENT; nothing is left behind.
    for missing in (source_of(snapshot_id="non-existing-snapshot-id"),
                    source_of(snapshot_id=snapshot.snapshot_id.replace("snap-base", "snap-none")),
                    source_of(volume_id="fake-vol-id"),
                    source_of(volume_id=source.volume_id.replace("pvc-base", "pvc-none"))):
        assert code("pvc-new", missing) == grpc.StatusCode.NOT_FOUND, missing
    assert code("pvc-new", pb.VolumeContentSource()) == grpc.StatusCode.INVALID_ARGUMENT
    # Smaller than what the source holds: OUT_OF_RANGE.
    assert code("pvc-new", source_of(snapshot_id=snapshot.snapshot_id), required=size - 1) \
        == grpc.StatusCode.OUT_OF_RANGE
    assert code("pvc-new", source_of(volume_id=source.volume_id), required=size - 1) == grpc.StatusCode.OUT_OF_RANGE
    assert sorted(e.name for e in meta.readdir(ROOT_INO)) == [b".csi-snapshots", b"pvc-base", b"pvc-other"]

    first = from_source(driver, "pvc-new", snapshot_id=snapshot.snapshot_id, required=size)
    assert from_source(driver, "pvc-new", snapshot_id=snapshot.snapshot_id, required=size) == first
    # Same name, another (or no) content source: ALREADY_EXISTS, both ways.
    for different in (source_of(volume_id=source.volume_id), source_of(volume_id=other.volume_id), None):
        assert code("pvc-new", different, required=size) == grpc.StatusCode.ALREADY_EXISTS, different
    assert code("pvc-other", source_of(snapshot_id=snapshot.snapshot_id)) == grpc.StatusCode.ALREADY_EXISTS
    # A repeat still succeeds once the source is gone (the volume exists already).
    c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
    assert from_source(driver, "pvc-new", snapshot_id=snapshot.snapshot_id, required=size) == first


def test_volume_from_a_source_replaces_a_crashed_attempt(driver: Driver, meta: Meta) -> None:
    """`.csi-creating-` leftovers that are not what the retry builds are removed, never adopted."""
    source = create(driver, "pvc-seed")
    root = volume_ino(meta, source.volume_id)
    fill(meta, root)
    # A plain CreateVolume finding a clone's leftover starts from an empty directory.
    leftover = meta.mkdir(ROOT_INO, b".csi-creating-pvc-plain", 0o777, 0, 0).ino
    mkfile(meta, leftover, b"from-a-clone")
    plain = create(driver, "pvc-plain")
    assert meta.readdir(volume_ino(meta, plain.volume_id)) == []
    # A clone finding an unrelated leftover clones anew.
    leftover = meta.mkdir(ROOT_INO, b".csi-creating-pvc-copy", 0o777, 0, 0).ino
    mkfile(meta, leftover, b"unrelated")
    copy = from_source(driver, "pvc-copy", volume_id=source.volume_id)
    assert tree_of(meta, volume_ino(meta, copy.volume_id)) == tree_of(meta, root)
    assert not [e for e in meta.readdir(ROOT_INO) if e.name.startswith(b".csi-creating-")]


# -- ControllerGetVolume ---------------------------------------------------------------------
def test_controller_get_volume(driver: Driver, meta: Meta) -> None:
    c = driver.s.controller
    volume = create(driver, "pvc-get", required=GiB, parameters={"readahead": "2"})
    got = c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=volume.volume_id))
    assert got.volume.volume_id == volume.volume_id and got.volume.capacity_bytes == GiB
    assert dict(got.volume.volume_context) == {"readahead": "2"}
    assert not got.status.volume_condition.abnormal and got.status.volume_condition.message == "ok"
    clone = from_source(driver, "pvc-get-clone", volume_id=volume.volume_id)
    got = c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=clone.volume_id))
    assert got.volume.content_source.volume.volume_id == volume.volume_id
    meta.mkdir(ROOT_INO, b"not-a-volume", 0o755, 0, 0)
    parsed = parse_id(volume.volume_id)
    assert parsed is not None
    for missing in ("fake-vol-id", volume.volume_id.replace("pvc-get", "pvc-none"),
                    f"fc1:{parsed.fs}:not-a-volume", f"fc1:{'f' * 32}:pvc-get"):
        assert code_of(c.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=missing)) \
            == grpc.StatusCode.NOT_FOUND, missing
    assert code_of(c.ControllerGetVolume, pb.ControllerGetVolumeRequest()) == grpc.StatusCode.INVALID_ARGUMENT


# -- filesystems named by secrets ------------------------------------------------------------
def test_snapshots_with_secrets_only(fs_meta_url: str, workdir: Path) -> None:
    """No default filesystem: snapshot RPCs find theirs through their secrets, which never
    reach the log."""
    secrets = {"metaurl": fs_meta_url, "secret-key": "wJalrXUtnFEMIsnapshotKEY"}
    with running_driver(workdir / "drv", "--mode", "controller") as driver:
        c = driver.s.controller
        volume = c.CreateVolume(pb.CreateVolumeRequest(name="pvc-sec", volume_capabilities=[MOUNT_CAP],
                                                       secrets=secrets), timeout=60).volume
        snapshot = snap(driver, "snap-sec", volume.volume_id, secrets=secrets)
        assert listed(driver, secrets=secrets) == [snapshot.snapshot_id]
        restored = c.CreateVolume(pb.CreateVolumeRequest(
            name="pvc-sec-restored", volume_capabilities=[MOUNT_CAP], secrets=secrets,
            volume_content_source=source_of(snapshot_id=snapshot.snapshot_id)), timeout=60).volume
        assert restored.content_source.snapshot.snapshot_id == snapshot.snapshot_id
        c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id, secrets=secrets))
        assert listed(driver, secrets=secrets) == []
        log = driver.log()
    assert "wJalrXUtnFEMIsnapshotKEY" not in log
