"""The CSI Controller service: volume directories with directory quotas (see volumes.py),
snapshots as read-only clones of them (snapshots.py), volumes cloned from either, mutable
parameters that change a volume's quota (mutable.py)."""

from __future__ import annotations

import base64
import binascii
import errno
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fusecache.errors import FsError
from fusecache.importer import SourceSpec
from fusecache.meta.base import Meta
from fusecache.types import ROOT_INO, VolumeSettings

from . import garbage, imports, mutable, snapshots, volumes
from . import settings as mount_settings
from ._proto import csi_pb2 as pb
from ._proto import csi_pb2_grpc as pb_grpc
from .capabilities import capability_problem, check_capabilities, require
from .config import DriverConfig
from .errors import CsiError, aborted, already_exists, failed_precondition, invalid, not_found, out_of_range
from .fsref import Filesystem, resolve
from .metapool import MetaPool
from .rpc import VolumeLocks, lock_wait, rpc
from .volume_id import DynamicId, SnapshotId, dir_name, fs_tag, make_id, make_snapshot_id, parse_id, parse_snapshot_id

log = logging.getLogger(__name__)

RPC = pb.ControllerServiceCapability.RPC
_TOKEN_PREFIX = "v1:"
SNAPSHOT_TOKEN_PREFIX = "s1:"
OK_CONDITION = pb.VolumeCondition(abnormal=False, message="ok")


def _volume_lock(dir_: str) -> str:
    return f"dir:{dir_}"


def _snapshot_lock(dir_: str) -> str:
    return f"snap:{dir_}"


def _lock_by_name(request: pb.CreateVolumeRequest) -> str:
    return _volume_lock(dir_name(request.name)) if request.name else ""


def _lock_by_id(request: object) -> str:
    volume_id: str = request.volume_id  # type: ignore[attr-defined]
    parsed = parse_id(volume_id)
    return _volume_lock(parsed.dir) if parsed else volume_id


def _lock_snapshot_by_name(request: pb.CreateSnapshotRequest) -> str:
    return _snapshot_lock(dir_name(request.name)) if request.name else ""


def _lock_snapshot_by_id(request: pb.DeleteSnapshotRequest) -> str:
    parsed = parse_snapshot_id(request.snapshot_id)
    return _snapshot_lock(parsed.dir) if parsed else request.snapshot_id


def requested_capacity(cap_range: pb.CapacityRange) -> int:
    """The quota for a capacity range: required_bytes, else limit_bytes, else 0 (none)."""
    required, limit = cap_range.required_bytes, cap_range.limit_bytes
    if required < 0 or limit < 0:
        raise invalid("capacity_range values must not be negative")
    if limit and required > limit:
        raise out_of_range(f"required_bytes {required} exceeds limit_bytes {limit}")
    return required or limit


def capacity_fits(capacity: int, cap_range: pb.CapacityRange) -> bool:
    """Does an existing volume of `capacity` bytes (0 = unlimited) satisfy `cap_range`?"""
    required, limit = cap_range.required_bytes, cap_range.limit_bytes
    if capacity == 0:
        return required == 0 and limit == 0
    return (required == 0 or capacity >= required) and (limit == 0 or capacity <= limit)


def encode_token(dir_after: str, prefix: str = _TOKEN_PREFIX) -> str:
    return base64.urlsafe_b64encode((prefix + dir_after).encode()).decode()


def decode_token(token: str, prefix: str = _TOKEN_PREFIX) -> str:
    """The directory name a ListVolumes (or, with SNAPSHOT_TOKEN_PREFIX, ListSnapshots)
    page ended at; ABORTED for a token we never issued."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise aborted(f"invalid starting_token {token!r}")
    return text[len(prefix):]


def requested_source(request: pb.CreateVolumeRequest) -> volumes.ContentSource | None:
    """The content source a CreateVolume asks for; INVALID_ARGUMENT for an empty one."""
    if not request.HasField("volume_content_source"):
        return None
    source = request.volume_content_source
    kind = source.WhichOneof("type")
    if kind == "snapshot":
        require(source.snapshot.snapshot_id, "volume_content_source.snapshot.snapshot_id")
        return volumes.ContentSource("snapshot", source.snapshot.snapshot_id)
    if kind == "volume":
        require(source.volume.volume_id, "volume_content_source.volume.volume_id")
        return volumes.ContentSource("volume", source.volume.volume_id)
    raise invalid("volume_content_source names neither a snapshot nor a volume")


def content_source_pb(source: volumes.ContentSource | None) -> pb.VolumeContentSource | None:
    if source is None:
        return None
    if source.kind == "snapshot":
        return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=source.id))
    return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=source.id))


def snapshot_pb(tag: str, snapshot: snapshots.SnapshotDir) -> pb.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(snapshot.created_ns)
    # Cut synchronously: nothing to upload or process afterwards, so always ready.
    return pb.Snapshot(size_bytes=snapshot.size, snapshot_id=str(SnapshotId(tag, snapshot.dir)),
                       source_volume_id=snapshot.source, creation_time=created, ready_to_use=True)


class ControllerService(pb_grpc.ControllerServicer):
    def __init__(self, config: DriverConfig, metas: MetaPool, volume_locks: VolumeLocks) -> None:
        self.config = config
        self.metas = metas
        self.volume_locks = volume_locks

    # -- helpers ---------------------------------------------------------------------------
    def _filesystem(self, secrets: Mapping[str, str], parameters: Mapping[str, str] | None = None) -> Filesystem:
        return resolve(secrets, parameters, self.config.default_meta_url)

    def _default_meta(self) -> Meta:
        if not self.config.default_meta_url:
            raise failed_precondition("this RPC carries no secrets and needs the driver's --meta-url")
        meta, _ = self.metas.open(self._filesystem({}))
        return meta

    def _volume(self, volume_id: str, secrets: Mapping[str, str], missing: grpc.StatusCode
                ) -> tuple[Meta, DynamicId, volumes.VolumeDir]:
        """The volume a dynamic id names. A static or malformed id, a volume of another
        filesystem and a directory that is no CSI volume fail with `missing`."""
        parsed = parse_id(volume_id)
        if parsed is None:
            raise not_found(f"volume {volume_id!r} was not provisioned by this driver")
        meta, fs_settings = self.metas.open(self._filesystem(secrets))
        if fs_tag(fs_settings.uuid) != parsed.fs:
            raise failed_precondition(
                f"volume {volume_id} belongs to filesystem {parsed.fs}, but the secrets name filesystem "
                f"{fs_tag(fs_settings.uuid)} ({fs_settings.name})")
        found = volumes.find(meta, parsed.dir)
        if found is None or not found.is_volume:
            raise CsiError(missing, f"volume {volume_id} does not exist")
        return meta, parsed, found

    @contextmanager
    def _also_hold(self, key: str, context: grpc.ServicerContext) -> Iterator[None]:
        """A second lock besides the RPC's own (the source of a clone, so that it is not
        deleted while copied); ABORTED when it stays busy up to the call's deadline."""
        with self.volume_locks.hold(key, lock_wait(context)):
            yield

    def _source_tree(self, meta: Meta, tag: str, source: volumes.ContentSource) -> tuple[int, int]:
        """(inode of the tree to clone, its size in bytes) for a CreateVolume content
        source; NOT_FOUND when it does not exist, INVALID_ARGUMENT for another filesystem's."""
        if source.kind == "snapshot":
            snap_id = parse_snapshot_id(source.id)
            if snap_id is None:
                raise not_found(f"snapshot {source.id!r} does not exist")
            if snap_id.fs != tag:
                raise invalid(f"snapshot {source.id} belongs to filesystem {snap_id.fs}, not {tag}")
            snapshot = snapshots.find(meta, snap_id.dir)
            if snapshot is None or not snapshot.is_snapshot:
                raise not_found(f"snapshot {source.id} does not exist")
            return snapshots.data_ino(meta, snapshot), snapshot.size
        volume_id = parse_id(source.id)
        if volume_id is None:
            raise not_found(f"volume {source.id!r} does not exist")
        if volume_id.fs != tag:
            raise invalid(f"volume {source.id} belongs to filesystem {volume_id.fs}, not {tag}")
        volume = volumes.find(meta, volume_id.dir)
        if volume is None or not volume.is_volume:
            raise not_found(f"volume {source.id} does not exist")
        return volume.ino, volumes.used_bytes(meta, volume.ino)

    def _source_lock(self, source: volumes.ContentSource) -> str:
        if source.kind == "snapshot":
            snap_id = parse_snapshot_id(source.id)
            return _snapshot_lock(snap_id.dir) if snap_id else ""
        volume_id = parse_id(source.id)
        return _volume_lock(volume_id.dir) if volume_id else ""

    def _clone_volume(self, meta: Meta, tag: str, volume_id: DynamicId, request: pb.CreateVolumeRequest,
                      capacity: int, max_inodes: int, context_attrs: dict[str, str],
                      source: volumes.ContentSource, context: grpc.ServicerContext) -> volumes.VolumeDir:
        """A new volume as a writable clone of `source`, holding the source's lock so that
        it is not deleted halfway through the copy."""
        key = self._source_lock(source)
        held: AbstractContextManager[None] = self._also_hold(key, context) if key else nullcontext()
        with held:
            source_ino, source_size = self._source_tree(meta, tag, source)
            if capacity and capacity < source_size:
                raise out_of_range(f"capacity {capacity} is smaller than the {source_size} bytes of {source.kind} "
                                   f"{source.id}")
            created = volumes.create_from(meta, volume_id.dir, request.name, capacity, context_attrs, source,
                                          source_ino, max_inodes)
        log.info("created volume %s (%s bytes) for %r from %s %s", volume_id, capacity or "unlimited",
                 request.name, source.kind, source.id)
        return created

    def _import_volume(self, meta: Meta, fs_settings: VolumeSettings, volume_id: DynamicId,
                       request: pb.CreateVolumeRequest, capacity: int, max_inodes: int,
                       context_attrs: dict[str, str], spec: SourceSpec) -> volumes.VolumeDir:
        """A new volume holding the objects of `spec` (no data copied). The source is
        checked first, so a bad one leaves nothing; a large import runs past the
        provisioner's timeout in this thread, and its retries wait, then find it done."""
        imports.check(spec, fs_settings)

        def fill(path: str, ino: int) -> None:
            imports.run(meta, spec, path, fs_settings)
            used = volumes.used_bytes(meta, ino)  # no quota yet: counted by a walk
            if capacity and used > capacity:
                raise out_of_range(f"the {used} bytes of {spec.shown} do not fit the capacity {capacity}")

        created = volumes.create_imported(meta, volume_id.dir, request.name, capacity, context_attrs, spec.shown,
                                          fill, max_inodes)
        log.info("created volume %s (%s bytes) for %r from %s", volume_id, capacity or "unlimited", request.name,
                 spec.shown)
        return created

    # -- RPCs ------------------------------------------------------------------------------
    @rpc(lock=_lock_by_name)
    def CreateVolume(self, request: pb.CreateVolumeRequest, context: grpc.ServicerContext) -> pb.CreateVolumeResponse:
        require(request.name, "name")
        check_capabilities(request.volume_capabilities)
        source = requested_source(request)
        wanted = mutable.parse(request.mutable_parameters)
        mount_settings.check_parameters(request.parameters)
        to_import = imports.requested(request.parameters, request.secrets)
        if to_import is not None and source is not None:
            raise invalid(f"{mount_settings.IMPORT_SOURCE} and a volume_content_source cannot be combined")
        imported = to_import.shown if to_import is not None else None
        capacity = requested_capacity(request.capacity_range)
        max_inodes = wanted.max_inodes or 0
        context_attrs = mount_settings.parse(request.parameters).context()
        fs = self._filesystem(request.secrets, request.parameters)
        meta, fs_settings = self.metas.open_or_format(fs)
        volume_id = make_id(fs_settings.uuid, request.name)
        existing = volumes.find(meta, volume_id.dir)
        if existing is None:
            try:
                if source is not None:
                    existing = self._clone_volume(meta, fs_tag(fs_settings.uuid), volume_id, request, capacity,
                                                  max_inodes, context_attrs, source, context)
                elif to_import is not None:
                    existing = self._import_volume(meta, fs_settings, volume_id, request, capacity, max_inodes,
                                                   context_attrs, to_import)
                else:
                    existing = volumes.create(meta, volume_id.dir, request.name, capacity, context_attrs,
                                              max_inodes)
                    log.info("created volume %s (%s bytes) for %r", volume_id, capacity or "unlimited",
                             request.name)
            except FsError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                existing = volumes.find(meta, volume_id.dir)  # created concurrently elsewhere
                assert existing is not None
        if existing.name != request.name:
            raise already_exists(f"directory /{volume_id.dir} exists and is not the volume {request.name!r}")
        if not capacity_fits(existing.capacity, request.capacity_range):
            raise already_exists(
                f"volume {request.name!r} exists with capacity {existing.capacity or 'unlimited'}, "
                "which does not fit the requested capacity_range")
        if existing.context is not None and existing.context != context_attrs:
            # Its PV carries the settings it was created with; other ones would be a new volume.
            raise already_exists(f"volume {request.name!r} exists with other mount parameters")
        if existing.source != source:
            raise already_exists(f"volume {request.name!r} exists with another content source")
        if existing.imported != imported:
            raise already_exists(f"volume {request.name!r} exists with another {mount_settings.IMPORT_SOURCE}")
        if wanted.conflicts(existing.max_inodes):
            # Only the keys asked for count: a volume modified since keeps its other values.
            raise already_exists(f"volume {request.name!r} exists with {mutable.MAX_INODES} "
                                 f"{existing.max_inodes}, not {wanted.max_inodes}")
        return pb.CreateVolumeResponse(volume=pb.Volume(
            volume_id=str(volume_id), capacity_bytes=existing.capacity, volume_context=context_attrs,
            content_source=content_source_pb(source)))

    @rpc(lock=_lock_by_id)
    def DeleteVolume(self, request: pb.DeleteVolumeRequest, context: grpc.ServicerContext) -> pb.DeleteVolumeResponse:
        require(request.volume_id, "volume_id")
        parsed = parse_id(request.volume_id)
        if parsed is None:
            # Not an id this driver issued (or a static PV's handle): nothing of ours to delete.
            log.info("DeleteVolume: %r is no dynamic volume of this driver; nothing to do", request.volume_id)
            return pb.DeleteVolumeResponse()
        fs = self._filesystem(request.secrets)
        meta, fs_settings = self.metas.open(fs)
        if fs_tag(fs_settings.uuid) != parsed.fs:
            raise failed_precondition(
                f"volume belongs to filesystem {parsed.fs}, the secrets name {fs_tag(fs_settings.uuid)}: "
                "refusing to delete")
        found = volumes.find(meta, parsed.dir)
        if found is not None and not found.is_volume:
            raise failed_precondition(f"/{parsed.dir} is not a CSI volume directory: refusing to delete it")
        if found is not None:
            volumes.delete(meta, parsed.dir)
            log.info("deleted volume %s", request.volume_id)
        try:
            garbage.collect(meta, fs_settings, fs.access_key, fs.secret_key)
        except Exception as exc:  # the volume is gone; its objects wait for the next collector
            log.warning("deleting the objects of volume %s failed: %s", request.volume_id, exc)
        return pb.DeleteVolumeResponse()

    @rpc(lock=_lock_by_id)
    def ValidateVolumeCapabilities(self, request: pb.ValidateVolumeCapabilitiesRequest,
                                   context: grpc.ServicerContext) -> pb.ValidateVolumeCapabilitiesResponse:
        require(request.volume_id, "volume_id")
        require(request.volume_capabilities, "volume_capabilities")
        self._volume(request.volume_id, request.secrets, grpc.StatusCode.NOT_FOUND)
        problems = [p for p in map(capability_problem, request.volume_capabilities) if p]
        try:
            mount_settings.check_parameters(request.parameters)
            mount_settings.parse(request.volume_context)
        except Exception as exc:
            problems.append(str(exc))
        try:
            mutable.parse(request.mutable_parameters)
        except CsiError as exc:
            problems.append(exc.message)
        if problems:
            return pb.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters))

    @rpc()
    def ListVolumes(self, request: pb.ListVolumesRequest, context: grpc.ServicerContext) -> pb.ListVolumesResponse:
        if request.max_entries < 0:
            raise invalid("max_entries must not be negative")
        after = decode_token(request.starting_token) if request.starting_token else ""
        meta = self._default_meta()
        tag = fs_tag(meta.load().uuid)
        response = pb.ListVolumesResponse()
        last_dir = ""
        for volume in volumes.list_volumes(meta, after):
            if request.max_entries and len(response.entries) == request.max_entries:
                # Resuming *after a name* (not an index) stays correct when volumes come and go.
                response.next_token = encode_token(last_dir)
                break
            entry = response.entries.add()
            entry.volume.CopyFrom(pb.Volume(volume_id=str(DynamicId(tag, volume.dir)), capacity_bytes=volume.capacity,
                                            content_source=content_source_pb(volume.source)))
            entry.status.volume_condition.CopyFrom(OK_CONDITION)  # VOLUME_CONDITION asks for it here too
            last_dir = volume.dir
        return response

    @rpc()
    def GetCapacity(self, request: pb.GetCapacityRequest, context: grpc.ServicerContext) -> pb.GetCapacityResponse:
        meta = self._default_meta()
        if any(capability_problem(cap) for cap in request.volume_capabilities):
            return pb.GetCapacityResponse(available_capacity=0)
        return pb.GetCapacityResponse(available_capacity=meta.statfs(ROOT_INO).avail_bytes)

    @rpc(quiet=True)
    def ControllerGetCapabilities(self, request: pb.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext) -> pb.ControllerGetCapabilitiesResponse:
        kinds = [RPC.CREATE_DELETE_VOLUME, RPC.EXPAND_VOLUME, RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS,
                 RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME, RPC.MODIFY_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER]
        if self.config.default_meta_url:  # these RPCs carry no secrets: only the default filesystem
            kinds += [RPC.LIST_VOLUMES, RPC.GET_CAPACITY, RPC.GET_VOLUME, RPC.VOLUME_CONDITION]
        return pb.ControllerGetCapabilitiesResponse(capabilities=[
            pb.ControllerServiceCapability(rpc=RPC(type=kind)) for kind in kinds])

    @rpc(lock=_lock_by_id)
    def ControllerExpandVolume(self, request: pb.ControllerExpandVolumeRequest,
                               context: grpc.ServicerContext) -> pb.ControllerExpandVolumeResponse:
        require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise invalid("capacity_range is required")
        capacity = requested_capacity(request.capacity_range)
        if capacity == 0:
            raise invalid("capacity_range needs required_bytes or limit_bytes")
        if request.HasField("volume_capability"):
            problem = capability_problem(request.volume_capability)
            if problem:
                raise invalid(f"volume_capability: {problem}")
        meta, _, volume = self._volume(request.volume_id, request.secrets, grpc.StatusCode.NOT_FOUND)
        if volume.capacity == 0:
            # No quota: the volume can already grow to any size.
            return pb.ControllerExpandVolumeResponse(capacity_bytes=capacity, node_expansion_required=False)
        limit = request.capacity_range.limit_bytes
        if limit and volume.capacity > limit:
            raise out_of_range(f"volume is already {volume.capacity} bytes, above limit_bytes {limit}")
        if capacity > volume.capacity:
            volumes.set_capacity(meta, volume, capacity)
            log.info("expanded volume %s from %d to %d bytes", request.volume_id, volume.capacity, capacity)
        # The FUSE clients read quotas from the engine: nothing to do on the nodes.
        return pb.ControllerExpandVolumeResponse(capacity_bytes=max(capacity, volume.capacity),
                                                 node_expansion_required=False)

    @rpc(lock=_lock_by_id)
    def ControllerModifyVolume(self, request: pb.ControllerModifyVolumeRequest,
                               context: grpc.ServicerContext) -> pb.ControllerModifyVolumeResponse:
        require(request.volume_id, "volume_id")
        wanted = mutable.parse(request.mutable_parameters)
        meta, _, volume = self._volume(request.volume_id, request.secrets, grpc.StatusCode.NOT_FOUND)
        # Keys not named are left alone (the spec); no key at all changes nothing.
        if wanted.max_inodes is not None and wanted.max_inodes != volume.max_inodes:
            volumes.set_max_inodes(meta, volume, wanted.max_inodes)
            log.info("volume %s: %s %s -> %s", request.volume_id, mutable.MAX_INODES,
                     volume.max_inodes or "unlimited", wanted.max_inodes or "unlimited")
        # The quota lives in the metadata engine, which every FUSE client asks on each create:
        # the nodes have nothing to apply.
        return pb.ControllerModifyVolumeResponse()

    @rpc()
    def ControllerGetVolume(self, request: pb.ControllerGetVolumeRequest,
                            context: grpc.ServicerContext) -> pb.ControllerGetVolumeResponse:
        require(request.volume_id, "volume_id")
        parsed = parse_id(request.volume_id)
        meta = self._default_meta()
        if parsed is None or parsed.fs != fs_tag(meta.load().uuid):
            raise not_found(f"volume {request.volume_id!r} does not exist in this driver's filesystem")
        volume = volumes.find(meta, parsed.dir)
        if volume is None or not volume.is_volume:
            raise not_found(f"volume {request.volume_id} does not exist")
        # Seen from the controller a volume is its directory and quota, which just answered:
        # healthy. What a mount sees, the node's NodeGetVolumeStats reports.
        return pb.ControllerGetVolumeResponse(
            volume=pb.Volume(volume_id=request.volume_id, capacity_bytes=volume.capacity,
                             volume_context=volume.context or {}, content_source=content_source_pb(volume.source)),
            status=pb.ControllerGetVolumeResponse.VolumeStatus(volume_condition=OK_CONDITION))

    # -- snapshots -------------------------------------------------------------------------
    @staticmethod
    def _find_snapshot(meta: Meta, tag: str, snapshot_id: str) -> snapshots.SnapshotDir | None:
        """The snapshot an id names, or None: an id of another driver or filesystem names
        nothing here."""
        parsed = parse_snapshot_id(snapshot_id)
        found = snapshots.find(meta, parsed.dir) if parsed is not None and parsed.fs == tag else None
        return found if found is not None and found.is_snapshot else None

    @rpc(lock=_lock_snapshot_by_name)
    def CreateSnapshot(self, request: pb.CreateSnapshotRequest,
                       context: grpc.ServicerContext) -> pb.CreateSnapshotResponse:
        require(request.name, "name")
        require(request.source_volume_id, "source_volume_id")
        snapshots.check_parameters(request.parameters)
        meta, fs_settings = self.metas.open(self._filesystem(request.secrets))
        tag = fs_tag(fs_settings.uuid)
        snap_id = make_snapshot_id(fs_settings.uuid, request.name)
        existing = snapshots.find(meta, snap_id.dir)
        if existing is None:
            parsed = parse_id(request.source_volume_id)
            if parsed is None:
                raise not_found(f"volume {request.source_volume_id!r} was not provisioned by this driver")
            with self._also_hold(_volume_lock(parsed.dir), context):  # no DeleteVolume mid-copy
                _, _, source = self._volume(request.source_volume_id, request.secrets, grpc.StatusCode.NOT_FOUND)
                try:
                    existing = snapshots.create(meta, snap_id.dir, request.name, request.source_volume_id,
                                                source.ino)
                    log.info("cut snapshot %s of volume %s (%d bytes) for %r", snap_id, request.source_volume_id,
                             existing.size, request.name)
                except FsError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                    existing = snapshots.find(meta, snap_id.dir)  # cut concurrently elsewhere
                    assert existing is not None
        if existing.name != request.name:
            raise already_exists(f"snapshot directory {snap_id.dir} exists and is not the snapshot {request.name!r}")
        if existing.source != request.source_volume_id:
            raise already_exists(f"snapshot {request.name!r} exists with source volume {existing.source}")
        return pb.CreateSnapshotResponse(snapshot=snapshot_pb(tag, existing))

    @rpc(lock=_lock_snapshot_by_id)
    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest,
                       context: grpc.ServicerContext) -> pb.DeleteSnapshotResponse:
        require(request.snapshot_id, "snapshot_id")
        parsed = parse_snapshot_id(request.snapshot_id)
        if parsed is None:
            log.info("DeleteSnapshot: %r is no snapshot of this driver; nothing to do", request.snapshot_id)
            return pb.DeleteSnapshotResponse()
        fs = self._filesystem(request.secrets)
        meta, fs_settings = self.metas.open(fs)
        if fs_tag(fs_settings.uuid) != parsed.fs:
            raise failed_precondition(
                f"snapshot belongs to filesystem {parsed.fs}, the secrets name {fs_tag(fs_settings.uuid)}: "
                "refusing to delete")
        found = snapshots.find(meta, parsed.dir)
        if found is not None and not found.is_snapshot:
            raise failed_precondition(f"{parsed.dir} is not a CSI snapshot: refusing to delete it")
        if found is not None:
            snapshots.delete(meta, parsed.dir)
            log.info("deleted snapshot %s", request.snapshot_id)
        try:  # only what no volume still shares became garbage
            garbage.collect(meta, fs_settings, fs.access_key, fs.secret_key)
        except Exception as exc:  # the snapshot is gone; its objects wait for the next collector
            log.warning("deleting the objects of snapshot %s failed: %s", request.snapshot_id, exc)
        return pb.DeleteSnapshotResponse()

    @rpc()
    def ListSnapshots(self, request: pb.ListSnapshotsRequest,
                      context: grpc.ServicerContext) -> pb.ListSnapshotsResponse:
        if request.max_entries < 0:
            raise invalid("max_entries must not be negative")
        after = decode_token(request.starting_token, SNAPSHOT_TOKEN_PREFIX) if request.starting_token else ""
        meta, fs_settings = self.metas.open(self._filesystem(request.secrets))
        tag = fs_tag(fs_settings.uuid)
        response = pb.ListSnapshotsResponse()
        if request.snapshot_id:
            found = self._find_snapshot(meta, tag, request.snapshot_id)
            if found is not None and (not request.source_volume_id or found.source == request.source_volume_id):
                response.entries.add().snapshot.CopyFrom(snapshot_pb(tag, found))
            return response
        last_dir = ""
        for snapshot in snapshots.list_snapshots(meta, after):
            if request.source_volume_id and snapshot.source != request.source_volume_id:
                continue
            if request.max_entries and len(response.entries) == request.max_entries:
                response.next_token = encode_token(last_dir, SNAPSHOT_TOKEN_PREFIX)
                break
            response.entries.add().snapshot.CopyFrom(snapshot_pb(tag, snapshot))
            last_dir = snapshot.dir
        return response

    @rpc()
    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: grpc.ServicerContext) -> pb.GetSnapshotResponse:
        require(request.snapshot_id, "snapshot_id")
        meta, fs_settings = self.metas.open(self._filesystem(request.secrets))
        tag = fs_tag(fs_settings.uuid)
        found = self._find_snapshot(meta, tag, request.snapshot_id)
        if found is None:
            raise not_found(f"snapshot {request.snapshot_id!r} does not exist")
        return pb.GetSnapshotResponse(snapshot=snapshot_pb(tag, found))
