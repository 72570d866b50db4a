"""The CSI Node service: request validation in front of manager.NodeManager."""

from __future__ import annotations

import logging
import os

import grpc

from . import imports
from . import settings as mount_settings
from ._proto import csi_pb2 as pb
from ._proto import csi_pb2_grpc as pb_grpc
from .capabilities import check_capability, require, require_capability
from .checker import HealthChecker
from .config import DriverConfig
from .errors import failed_precondition, invalid
from .fsref import resolve
from .manager import NodeManager
from .rpc import VolumeLocks, rpc
from .volume_id import parse_id

log = logging.getLogger(__name__)

NodeRPC = pb.NodeServiceCapability.RPC
Usage = pb.VolumeUsage


def _by_volume(request: object) -> str:
    return str(request.volume_id)  # type: ignore[attr-defined]


def _abs_path(path: str, field: str) -> str:
    if not os.path.isabs(path):
        raise invalid(f"{field} must be an absolute path")
    return os.path.normpath(path)


class NodeService(pb_grpc.NodeServicer):
    def __init__(self, config: DriverConfig, manager: NodeManager, checker: HealthChecker,
                 volume_locks: VolumeLocks) -> None:
        self.config = config
        self.manager = manager
        self.checker = checker
        self.volume_locks = volume_locks

    @rpc(lock=_by_volume)
    def NodeStageVolume(self, request: pb.NodeStageVolumeRequest, context: grpc.ServicerContext
                        ) -> pb.NodeStageVolumeResponse:
        require(request.volume_id, "volume_id")
        require(request.staging_target_path, "staging_target_path")
        staging = _abs_path(request.staging_target_path, "staging_target_path")
        wanted = check_capability(require_capability(request))
        attributes = request.volume_context
        mount_settings.warn_unknown(attributes)
        settings = mount_settings.parse(attributes)
        parsed = parse_id(request.volume_id)
        # A dynamic volume is its own top-level directory; a static PV names one (or the root).
        subdir = parsed.path if parsed else mount_settings.subdir_of(attributes)
        fs = resolve(request.secrets, None, self.config.default_meta_url)
        # A static PV's importSource fills its directory once (a dynamic volume's was
        # imported by CreateVolume, and its context never names one).
        to_import = imports.requested(attributes, request.secrets) if parsed is None else None
        if to_import is not None:
            self.manager.import_static(request.volume_id, fs, to_import, subdir)
        self.manager.stage(request.volume_id, fs, settings, subdir, staging, wanted.readonly,
                           list(wanted.flags), parsed.fs if parsed else None)
        return pb.NodeStageVolumeResponse()

    @rpc(lock=_by_volume)
    def NodeUnstageVolume(self, request: pb.NodeUnstageVolumeRequest, context: grpc.ServicerContext
                          ) -> pb.NodeUnstageVolumeResponse:
        require(request.volume_id, "volume_id")
        require(request.staging_target_path, "staging_target_path")
        self.manager.unstage(request.volume_id, _abs_path(request.staging_target_path, "staging_target_path"))
        return pb.NodeUnstageVolumeResponse()

    @rpc(lock=_by_volume)
    def NodePublishVolume(self, request: pb.NodePublishVolumeRequest, context: grpc.ServicerContext
                          ) -> pb.NodePublishVolumeResponse:
        require(request.volume_id, "volume_id")
        require(request.target_path, "target_path")
        target = _abs_path(request.target_path, "target_path")
        wanted = check_capability(require_capability(request))
        if not request.staging_target_path:
            raise failed_precondition("staging_target_path is required: this driver stages volumes")
        staging = _abs_path(request.staging_target_path, "staging_target_path")
        self.manager.publish(request.volume_id, staging, target, request.readonly or wanted.readonly,
                             list(wanted.flags), wanted.mode)
        return pb.NodePublishVolumeResponse()

    @rpc(lock=_by_volume)
    def NodeUnpublishVolume(self, request: pb.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
                            ) -> pb.NodeUnpublishVolumeResponse:
        require(request.volume_id, "volume_id")
        require(request.target_path, "target_path")
        self.manager.unpublish(request.volume_id, _abs_path(request.target_path, "target_path"))
        return pb.NodeUnpublishVolumeResponse()

    @rpc()  # read-only: never waits behind a slow stage of the same volume
    def NodeGetVolumeStats(self, request: pb.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
                           ) -> pb.NodeGetVolumeStatsResponse:
        require(request.volume_id, "volume_id")
        require(request.volume_path, "volume_path")
        record = self.manager.volume_at(request.volume_id, request.volume_path)
        found = self.manager.stats(record, os.path.normpath(request.volume_path))
        response = pb.NodeGetVolumeStatsResponse(volume_condition=pb.VolumeCondition(
            abnormal=not found.health.ok, message=found.health.message or "ok"))
        if not found.health.ok:
            self.checker.kick()  # repair now rather than at the next interval
        if found.stats is not None:
            stats = found.stats
            response.usage.add(unit=Usage.BYTES, total=stats.total_bytes, available=stats.avail_bytes,
                               used=found.used_bytes)
            response.usage.add(unit=Usage.INODES, total=stats.used_inodes + stats.avail_inodes,
                               available=stats.avail_inodes, used=found.used_inodes)
        return response

    @rpc(lock=_by_volume)
    def NodeExpandVolume(self, request: pb.NodeExpandVolumeRequest, context: grpc.ServicerContext
                         ) -> pb.NodeExpandVolumeResponse:
        require(request.volume_id, "volume_id")
        require(request.volume_path, "volume_path")
        if request.HasField("volume_capability"):
            check_capability(request.volume_capability)
        record = self.manager.volume_at(request.volume_id, request.volume_path)
        # The quota lives in the metadata engine and the FUSE client enforces it as it is:
        # there is nothing to grow on the node, only the size to report.
        capacity = self.manager.capacity(record) or request.capacity_range.required_bytes
        return pb.NodeExpandVolumeResponse(capacity_bytes=capacity)

    @rpc(quiet=True)
    def NodeGetCapabilities(self, request: pb.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
                            ) -> pb.NodeGetCapabilitiesResponse:
        # SINGLE_NODE_MULTI_WRITER: the node takes SINGLE_NODE_SINGLE_WRITER (one target path)
        # and SINGLE_NODE_MULTI_WRITER (any number: every pod of the node writes through the
        # same FUSE client), and still SINGLE_NODE_WRITER for COs that do not know them.
        kinds = [NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.VOLUME_CONDITION,
                 NodeRPC.EXPAND_VOLUME, NodeRPC.SINGLE_NODE_MULTI_WRITER]
        return pb.NodeGetCapabilitiesResponse(capabilities=[
            pb.NodeServiceCapability(rpc=NodeRPC(type=kind)) for kind in kinds])

    @rpc(quiet=True)
    def NodeGetInfo(self, request: pb.NodeGetInfoRequest, context: grpc.ServicerContext) -> pb.NodeGetInfoResponse:
        return pb.NodeGetInfoResponse(node_id=self.config.node_id)
