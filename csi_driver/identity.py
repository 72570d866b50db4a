"""The CSI Identity service."""

from __future__ import annotations

import threading

import grpc
from google.protobuf import wrappers_pb2

import fusecache

from ._proto import csi_pb2 as pb
from ._proto import csi_pb2_grpc as pb_grpc
from .config import DriverConfig
from .rpc import VolumeLocks, rpc

Service = pb.PluginCapability.Service
Expansion = pb.PluginCapability.VolumeExpansion


class IdentityService(pb_grpc.IdentityServicer):
    def __init__(self, config: DriverConfig, ready: threading.Event) -> None:
        self.config = config
        self.ready = ready
        self.volume_locks = VolumeLocks()  # unused: identity RPCs name no volume

    @rpc(quiet=True)
    def GetPluginInfo(self, request: pb.GetPluginInfoRequest,
                      context: grpc.ServicerContext) -> pb.GetPluginInfoResponse:
        return pb.GetPluginInfoResponse(name=self.config.driver_name, vendor_version=fusecache.__version__,
                                        manifest={"mode": self.config.mode})

    @rpc(quiet=True)
    def GetPluginCapabilities(self, request: pb.GetPluginCapabilitiesRequest,
                              context: grpc.ServicerContext) -> pb.GetPluginCapabilitiesResponse:
        caps = [pb.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE))]
        if self.config.serves_controller:
            caps.insert(0, pb.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)))
        return pb.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc(quiet=True)
    def Probe(self, request: pb.ProbeRequest, context: grpc.ServicerContext) -> pb.ProbeResponse:
        # Ready once start-up (re-adopting FUSE clients) is done. Deliberately no Redis ping:
        # a liveness probe failing on a metadata outage would restart the node plugin, and a
        # restart is exactly what a shared FUSE client should not have to live through.
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=self.ready.is_set()))
