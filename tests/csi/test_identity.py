"""Identity service, per-mode service sets, graceful shutdown, per-volume locks."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from csi_driver._proto import csi_pb2 as pb
from csi_driver.errors import CsiError
from csi_driver.rpc import VolumeLocks
from tests.csi.harness import NODE_ID, Driver, running_driver

Service = pb.PluginCapability.Service
Expansion = pb.PluginCapability.VolumeExpansion


def plugin_caps(driver: Driver) -> set[tuple[str, int]]:
    caps = driver.s.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    return {(c.WhichOneof("type"), c.service.type if c.HasField("service") else c.volume_expansion.type)
            for c in caps}


def test_identity(driver: Driver) -> None:
    info = driver.s.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "csi.fusecache.io" and info.vendor_version
    assert plugin_caps(driver) == {("service", Service.CONTROLLER_SERVICE), ("volume_expansion", Expansion.ONLINE)}
    assert driver.s.identity.Probe(pb.ProbeRequest()).ready.value


def test_modes_serve_only_their_services(workdir: Path) -> None:
    with running_driver(workdir / "n", "--mode", "node", "--nodeid", NODE_ID, "--driver-name", "x.example.com") as node:
        assert node.s.identity.GetPluginInfo(pb.GetPluginInfoRequest()).name == "x.example.com"
        assert plugin_caps(node) == {("volume_expansion", Expansion.ONLINE)}
        with pytest.raises(grpc.RpcError) as info:
            node.s.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert node.s.node.NodeGetInfo(pb.NodeGetInfoRequest()).node_id == NODE_ID
    with running_driver(workdir / "c", "--mode", "controller") as controller:
        with pytest.raises(grpc.RpcError) as info:
            controller.s.node.NodeGetInfo(pb.NodeGetInfoRequest())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert ("service", Service.CONTROLLER_SERVICE) in plugin_caps(controller)


def test_sigterm_stops_gracefully(driver: Driver) -> None:
    assert driver.stop(signal.SIGTERM) == 0
    assert not driver.socket.exists()
    assert "shutting down" in driver.log()
    driver.start()  # the fixture's teardown expects a running driver


def test_volume_lock_serialises_and_aborts_after_the_wait() -> None:
    locks = VolumeLocks()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with locks.hold("vol-1", 1):
            order.append("first")
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(5)
    with locks.hold("vol-2", 0.1):  # other volumes are not blocked
        order.append("other")
    started = time.monotonic()
    with pytest.raises(CsiError) as info, locks.hold("vol-1", 0.2):
        pass
    assert info.value.code == grpc.StatusCode.ABORTED and time.monotonic() - started >= 0.2
    release.set()
    thread.join()
    with locks.hold("vol-1", 1):  # free again, and no lock objects pile up
        order.append("second")
    assert order == ["first", "other", "second"]
    assert locks._locks == {}
