"""End to end, as Kubernetes drives the driver: the test plays external-provisioner (calls the
controller plugin with StorageClass parameters and secrets) and kubelet (stages and publishes
on a node plugin in a separate process), on Redis and a real S3 server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from csi_driver._proto import csi_pb2 as pb
from fusecache.meta import open_meta
from fusecache.mountinfo import mounts_under
from fusecache.types import ROOT_INO
from tests.csi.harness import Driver, capability, pid_alive
from tests.servers import S3Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20
Mode = pb.VolumeCapability.AccessMode

# A pod: writes `size` seeded bytes to a file, or reads one; prints the sha256.
POD = textwrap.dedent("""
    import hashlib, random, sys
    action, path = sys.argv[1], sys.argv[2]
    if action == "write":
        data = random.Random(int(sys.argv[4])).randbytes(int(sys.argv[3]))
        with open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "rb") as f:
            data = f.read()
    print(hashlib.sha256(data).hexdigest())
""")


def pod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", POD, *args], capture_output=True, text=True, timeout=120)


def block_keys(s3: S3Server, bucket: str, volume_name: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{volume_name}/blocks/")
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_kubernetes_lifecycle(plugins: tuple[Driver, Driver], meta_url: str, s3_server: S3Server,
                              bucket_url: str, workdir: Path) -> None:
    controller, node = plugins
    bucket = bucket_url.rsplit("/", 1)[1]
    # The Secret (provisioner, node-stage and controller-expand secret) and the StorageClass.
    secrets = {"metaurl": meta_url, "access-key": s3_server.access_key, "secret-key": s3_server.secret_key}
    storage_class = {"storage": "s3", "bucket": bucket_url, "name": "e2e-fs", "block-size": "1M",
                     # DeleteVolume then frees the objects at once (the default waits 5 min)
                     "garbage-delay": "0s",
                     "readahead": "2", "attrTimeout": "1", "entryTimeout": "1",
                     "csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default"}
    cap = capability(Mode.MULTI_NODE_MULTI_WRITER)

    # external-provisioner: CreateVolume (formats the filesystem on first use)
    volume = controller.s.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-5d4f2a9e-0c3b-4e57-9a61-2b8f0e7c1d42", volume_capabilities=[cap], parameters=storage_class,
        secrets=secrets, capacity_range=pb.CapacityRange(required_bytes=24 * MiB)), timeout=120).volume
    assert volume.capacity_bytes == 24 * MiB

    # kubelet: stage once, publish for two pods, one of them read-only
    staging = workdir / "kubelet" / "plugins" / "kubernetes.io" / "csi" / "globalmount"
    writer = workdir / "kubelet" / "pods" / "writer" / "volumes" / "mount"
    reader = workdir / "kubelet" / "pods" / "reader" / "volumes" / "mount"
    for path in (staging, writer.parent, reader.parent):
        path.mkdir(parents=True)
    node.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging), volume_capability=cap,
        volume_context=volume.volume_context, secrets=secrets), timeout=120)
    for target, readonly in ((writer, False), (reader, True)):
        node.s.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=cap, readonly=readonly, volume_context=volume.volume_context), timeout=120)

    # one pod writes, the other reads; the read-only one cannot write
    wrote = pod("write", str(writer / "payload.bin"), str(5 * MiB + 17), "42")
    assert wrote.returncode == 0, wrote.stderr
    digest = wrote.stdout.strip()
    read = pod("read", str(reader / "payload.bin"))
    assert read.returncode == 0 and read.stdout.strip() == digest
    refused = pod("write", str(reader / "nope.bin"), "10", "1")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    # the quota: 24 MiB capacity, 5 MiB used, 32 MiB more do not fit
    too_big = pod("write", str(writer / "too-big.bin"), str(32 * MiB), "7")
    assert too_big.returncode != 0
    assert "Disk quota exceeded" in too_big.stderr or "No space left" in too_big.stderr
    (writer / "too-big.bin").unlink(missing_ok=True)

    def stats() -> pb.NodeGetVolumeStatsResponse:
        return node.s.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=volume.volume_id, volume_path=str(reader), staging_target_path=str(staging)), timeout=30)

    usage = {u.unit: u for u in stats().usage}
    assert usage[pb.VolumeUsage.BYTES].total == 24 * MiB
    assert 5 * MiB <= usage[pb.VolumeUsage.BYTES].used < 6 * MiB

    # restart the node plugin: the mounts keep working throughout
    [record] = node.client_records()
    client_pid = int(record["pid"])  # type: ignore[call-overload]
    node.stop(signal.SIGTERM)
    assert pod("read", str(reader / "payload.bin")).stdout.strip() == digest
    node.start()
    assert int(node.client_records()[0]["pid"]) == client_pid  # type: ignore[call-overload]
    assert pod("read", str(writer / "payload.bin")).stdout.strip() == digest

    # kill -9 the FUSE client: reported abnormal, then recovered without re-publishing
    os.kill(client_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(client_pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    condition = stats().volume_condition
    assert condition.abnormal, condition
    deadline = time.monotonic() + 60
    while stats().volume_condition.abnormal:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.2)
    assert pod("read", str(reader / "payload.bin")).stdout.strip() == digest
    second = pod("write", str(writer / "second.bin"), str(MiB), "9")
    assert second.returncode == 0 and pod("read", str(reader / "second.bin")).stdout.strip() == second.stdout.strip()
    assert block_keys(s3_server, bucket, "e2e-fs"), "the data should be in the bucket"
    recovered_pid = int(node.client_records()[0]["pid"])  # type: ignore[call-overload]
    assert recovered_pid != client_pid

    # tear down: unpublish, unstage, delete
    for target in (writer, reader):
        node.s.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=str(target)), timeout=120)
    node.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging)), timeout=120)
    controller.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets),
                                         timeout=120)
    assert mounts_under(str(workdir)) == []
    assert node.client_records() == []
    assert not pid_alive(recovered_pid)
    assert block_keys(s3_server, bucket, "e2e-fs") == []
    meta = open_meta(meta_url)
    try:
        assert meta.readdir(ROOT_INO) == []
    finally:
        meta.shutdown()
    for log in (controller.log(), node.log()):
        assert s3_server.secret_key not in log
