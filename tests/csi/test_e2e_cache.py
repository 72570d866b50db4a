"""End to end with a StorageClass that sets the tiered cache: the shared FUSE client runs with
exactly the cache flags the parameters name, pods write and read through it (with writeback
the blocks go to the ssd tier first and reach S3 in the background), and a static PV of the
same filesystem and settings in another namespace shares that client and its cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.mountinfo import mounts_under
from tests.csi.harness import Driver, capability, mount_has_cache_flags
from tests.csi.test_e2e import block_keys, pod
from tests.servers import S3Server

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
    pytest.mark.skipif(not mount_has_cache_flags(), reason="`fusecache mount` has no tiered cache flags yet"),
]

MiB = 1 << 20
Mode = pb.VolumeCapability.AccessMode


def client_argv(node: Driver) -> list[str]:
    [record] = node.client_records()
    with open(f"/proc/{record['pid']}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_volume_with_tiered_cache_settings(plugins: tuple[Driver, Driver], meta_url: str,
                                           s3_server: S3Server, bucket_url: str, workdir: Path) -> None:
    controller, node = plugins
    bucket = bucket_url.rsplit("/", 1)[1]
    ssd = workdir / "ssd-cache"
    secrets = {"metaurl": meta_url, "access-key": s3_server.access_key, "secret-key": s3_server.secret_key}
    storage_class = {"storage": "s3", "bucket": bucket_url, "name": "cache-fs", "block-size": "1M",
                     # DeleteVolume then frees the objects at once (the default waits 5 min)
                     "garbage-delay": "0s",
                     "cache": f"mem:16MiB;ssd:{ssd}:256MiB", "cacheLow": "0.5", "cacheHigh": "0.9",
                     "cacheFreeRatio": "0.01", "readahead": "2", "writeback": "true"}
    cap = capability(Mode.MULTI_NODE_MULTI_WRITER)
    volume = controller.s.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-cached", volume_capabilities=[cap], parameters=storage_class, secrets=secrets,
        capacity_range=pb.CapacityRange(required_bytes=64 * MiB)), timeout=120).volume
    assert dict(volume.volume_context) == {
        "cache": f"mem:16MiB;ssd:{ssd}:256MiB", "cacheLow": "0.5", "cacheHigh": "0.9", "cacheFreeRatio": "0.01",
        "readahead": "2", "writeback": "true"}

    staging, writer, reader = workdir / "staging", workdir / "pods" / "writer", workdir / "pods" / "reader"
    (workdir / "pods").mkdir()
    node.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=cap,
        volume_context=volume.volume_context, secrets=secrets), timeout=120)
    for target, readonly in ((writer, False), (reader, True)):
        node.s.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=cap, readonly=readonly, volume_context=volume.volume_context), timeout=120)

    # The client runs with exactly the flags of the parameters (its ssd directory is its own
    # below the configured one).
    argv = client_argv(node)
    key = str(node.client_records()[0]["key"])
    assert flag_values(argv, "--cache") == ["mem:16MiB", f"ssd:{ssd}/{key}:256MiB"]
    assert (flag_values(argv, "--cache-low"), flag_values(argv, "--cache-high")) == (["0.5"], ["0.9"])
    assert flag_values(argv, "--cache-free-ratio") == ["0.01"] and flag_values(argv, "--readahead") == ["2"]
    assert "--writeback" in argv

    # A pod writes, another reads through the read-only publish; the blocks pass the ssd tier.
    wrote = pod("write", str(writer / "data.bin"), str(6 * MiB + 123), "5")
    assert wrote.returncode == 0, wrote.stderr
    read = pod("read", str(reader / "data.bin"))
    assert read.returncode == 0 and read.stdout == wrote.stdout
    assert files_under(ssd / key), "the ssd tier holds the written blocks"
    deadline = time.monotonic() + 60
    while len(block_keys(s3_server, bucket, "cache-fs")) < 7:  # 6 MiB + 123 bytes in 1 MiB blocks
        assert time.monotonic() < deadline, "writeback uploads did not reach the bucket"
        time.sleep(0.2)

    # A static PV of the same filesystem (another namespace's view of the same directory),
    # with the same settings: served by the same client, so it reads from the same cache.
    static = workdir / "static-staging"
    node.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id="team-b-data", staging_target_path=str(static), volume_capability=cap, secrets=secrets,
        volume_context={**volume.volume_context, "subdir": "/pvc-cached"}), timeout=120)
    assert len(node.client_records()) == 1
    assert pod("read", str(static / "data.bin")).stdout == wrote.stdout

    node.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id="team-b-data", staging_target_path=str(static)), timeout=120)
    for target in (writer, reader):
        node.s.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=str(target)), timeout=120)
    node.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging)), timeout=120)
    assert mounts_under(str(workdir)) == [] and node.client_records() == []
    controller.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets),
                                         timeout=120)
    assert block_keys(s3_server, bucket, "cache-fs") == []


def test_dedicated_clients_get_their_own_ssd_directories(driver: Driver, workdir: Path) -> None:
    """sharedClient=false starts one client per volume with the same cache settings; a cache
    directory serves one process only, so each client gets its own below the configured one."""
    ssd = workdir / "ssd-cache"
    params = {"cache": f"mem:8MiB;ssd:{ssd}:64MiB", "writeback": "true", "sharedClient": "false"}
    volumes = [driver.s.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[capability()], parameters=params,
        capacity_range=pb.CapacityRange(required_bytes=32 * MiB)), timeout=60).volume for name in ("pvc-d1", "pvc-d2")]
    digests = {}
    for n, volume in enumerate(volumes):
        staging = workdir / "staging" / str(n)
        driver.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=capability(),
            volume_context=volume.volume_context), timeout=120)
        wrote = pod("write", str(staging / "f.bin"), str(3 * MiB), str(n))
        assert wrote.returncode == 0, wrote.stderr
        digests[n] = wrote.stdout
    keys = sorted(str(r["key"]) for r in driver.client_records())
    assert len(keys) == 2
    assert sorted(p.name for p in ssd.iterdir()) == keys
    for key in keys:
        assert files_under(ssd / key), f"client {key} does not use its ssd directory"
        log = (driver.state_dir / "logs" / f"{key}.log").read_text()
        assert "in use by process" not in log
    for n, volume in enumerate(volumes):
        staging = workdir / "staging" / str(n)
        assert pod("read", str(staging / "f.bin")).stdout == digests[n]
        driver.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging)), timeout=120)
    assert driver.client_records() == []
