"""The CSI Controller service: volume directories with directory quotas (see volumes.py)."""

from __future__ import annotations

import base64
import binascii
import errno
import logging
from collections.abc import Mapping

import grpc

from fusecache.errors import FsError
from fusecache.meta.base import Meta
from fusecache.types import ROOT_INO

from . import garbage, volumes
from . import settings as mount_settings
from ._proto import csi_pb2 as pb
from ._proto import csi_pb2_grpc as pb_grpc
from .capabilities import capability_problem, check_capabilities, require
from .config import DriverConfig
from .errors import CsiError, aborted, already_exists, failed_precondition, invalid, not_found, out_of_range
from .fsref import Filesystem, resolve
from .metapool import MetaPool
from .rpc import VolumeLocks, rpc
from .volume_id import DynamicId, dir_name, fs_tag, make_id, parse_id

log = logging.getLogger(__name__)

RPC = pb.ControllerServiceCapability.RPC
_TOKEN_PREFIX = "v1:"


def _lock_by_name(request: pb.CreateVolumeRequest) -> str:
    return f"dir:{dir_name(request.name)}" if request.name else ""


def _lock_by_id(request: object) -> str:
    volume_id: str = request.volume_id  # type: ignore[attr-defined]
    parsed = parse_id(volume_id)
    return f"dir:{parsed.dir}" if parsed else volume_id


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


def encode_token(dir_after: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + dir_after).encode()).decode()


def decode_token(token: str) -> str:
    """The directory name a ListVolumes page ended at; ABORTED for a token we never issued."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX) or len(text) == len(_TOKEN_PREFIX):
        raise aborted(f"invalid starting_token {token!r}")
    return text[len(_TOKEN_PREFIX):]


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

    # -- RPCs ------------------------------------------------------------------------------
    @rpc(lock=_lock_by_name)
    def CreateVolume(self, request: pb.CreateVolumeRequest, context: grpc.ServicerContext) -> pb.CreateVolumeResponse:
        require(request.name, "name")
        check_capabilities(request.volume_capabilities)
        if request.HasField("volume_content_source"):
            raise invalid("volume_content_source is not supported: no snapshots or clones")
        if request.mutable_parameters:
            raise invalid("mutable_parameters are not supported")
        mount_settings.check_parameters(request.parameters)
        capacity = requested_capacity(request.capacity_range)
        context_attrs = mount_settings.parse(request.parameters).context()
        fs = self._filesystem(request.secrets, request.parameters)
        meta, fs_settings = self.metas.open_or_format(fs)
        volume_id = make_id(fs_settings.uuid, request.name)
        existing = volumes.find(meta, volume_id.dir)
        if existing is None:
            try:
                existing = volumes.create(meta, volume_id.dir, request.name, capacity, context_attrs)
                log.info("created volume %s (%s bytes) for %r", volume_id, capacity or "unlimited", request.name)
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
        return pb.CreateVolumeResponse(volume=pb.Volume(
            volume_id=str(volume_id), capacity_bytes=existing.capacity, volume_context=context_attrs))

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
        if request.mutable_parameters:
            problems.append("mutable_parameters are not supported")
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
            response.entries.add().volume.CopyFrom(pb.Volume(
                volume_id=str(DynamicId(tag, volume.dir)), capacity_bytes=volume.capacity))
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
        kinds = [RPC.CREATE_DELETE_VOLUME, RPC.EXPAND_VOLUME]
        if self.config.default_meta_url:  # both RPCs carry no secrets: only the default filesystem
            kinds += [RPC.LIST_VOLUMES, RPC.GET_CAPACITY]
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
