"""`importSource` on real services: a PV made from a dataset that already lives in a bucket.

The dataset is in a bucket of a second S3 server with credentials of its own (so the
import's keys are the only way to read it, and their values can be looked for in logs);
the filesystem's own bucket is on the session's S3 server. The test plays the provisioner
(CreateVolume with StorageClass parameters and the Secret) and kubelet (stage, publish on a
real FUSE mount)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from csi_driver import imports, volumes
from csi_driver._proto import csi_pb2 as pb
from csi_driver.volume_id import dir_name
from fusecache.importer import import_tree, parse_source
from fusecache.meta import clone, open_meta
from fusecache.meta.redis import RedisMeta
from fusecache.types import ROOT_INO
from tests.csi.harness import Driver, capability
from tests.fuse.test_import import s3_client
from tests.servers import S3Server, _start, find_tool, free_port, stop_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

MiB = 1 << 20
Mode = pb.VolumeCapability.AccessMode
SOURCE_ACCESS = "srcAccessKey7f3a"
SOURCE_SECRET = "srcSecretKey-9c1e44b2d8"
SOURCE_BUCKET = "dataset"


def dataset_objects() -> dict[str, bytes]:
    """Keys under the prefix train/ and their contents: nested prefixes, an empty object,
    sizes across the 1 MiB block boundary, a unicode key."""
    objects = {f"class{i % 4}/img{i:03d}.jpg": os.urandom(100 + 7919 * i) for i in range(24)}
    for size in (0, 1, MiB - 1, MiB + 1, 3 * MiB + 5):
        objects[f"sizes/s{size}"] = os.urandom(size)
    objects["ünïcödé/日本語.txt"] = "こんにちは".encode() * 50
    objects["deep/a/b/leaf"] = b"leaf"
    return objects


@pytest.fixture(scope="module")
def source_s3() -> Iterator[S3Server]:
    """A second S3 server, with keys the filesystem's own server does not know."""
    exe = find_tool("rclone")
    if exe is None:
        pytest.skip("rclone is not installed")
    port = free_port()
    datadir = Path(tempfile.mkdtemp(prefix="fc-s3-src-"))
    proc = _start([exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{SOURCE_ACCESS},{SOURCE_SECRET}",
                   "--config", "/dev/null", str(datadir)], port, datadir, dict(os.environ))
    server = S3Server(port, proc, datadir, "rclone", SOURCE_ACCESS, SOURCE_SECRET)
    try:
        yield server
    finally:
        stop_process(proc)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(source_s3: S3Server) -> dict[str, bytes]:
    """The bucket `dataset`, its objects under train/ (and one more prefix, which the
    import of train/ must not show)."""
    source_s3.make_bucket(SOURCE_BUCKET)
    c = s3_client(source_s3)
    objects = dataset_objects()
    for key, data in objects.items():
        c.put_object(Bucket=SOURCE_BUCKET, Key="train/" + key, Body=data)
    c.put_object(Bucket=SOURCE_BUCKET, Key="val/other", Body=b"not part of train/")
    c.close()
    return objects


def listing(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, tuple[str, int]]:
    """Every object of a bucket: key -> (ETag, size)."""
    c = s3_client(s3)
    try:
        return {item["Key"]: (item["ETag"], item["Size"])
                for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", ())}
    finally:
        c.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fs_secrets(meta_url: str, s3: S3Server, bucket_url: str, name: str) -> dict[str, str]:
    """The provisioner Secret: the filesystem (formatted on first use on `bucket_url`) and
    the dataset's credentials."""
    return {"metaurl": meta_url, "access-key": s3.access_key, "secret-key": s3.secret_key, "storage": "s3",
            "bucket": bucket_url, "name": name, "block-size": "1M", "garbage-delay": "0s",
            imports.SECRET_ACCESS_KEY: SOURCE_ACCESS, imports.SECRET_SECRET_KEY: SOURCE_SECRET}


def create(controller: Driver, name: str, params: dict[str, str], secrets: dict[str, str],
           **extra: Any) -> pb.Volume:
    return controller.s.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[capability(Mode.MULTI_NODE_MULTI_WRITER)], parameters=params,
        secrets=secrets, **extra), timeout=120).volume


def create_fails(controller: Driver, name: str, params: dict[str, str], secrets: dict[str, str],
                 **extra: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        create(controller, name, params, secrets, **extra)
    return info.value


def full_logs(*drivers: Driver) -> str:
    """Every log the drivers and their FUSE clients wrote."""
    texts = []
    for driver in drivers:
        for path in [driver.log_path, *driver.state_dir.rglob("*.log")]:
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def root_names(meta_url: str) -> list[str]:
    meta = open_meta(meta_url)
    try:
        return sorted(e.name.decode() for e in meta.readdir(ROOT_INO))
    finally:
        meta.shutdown()


def stage(node: Driver, volume_id: str, staging: Path, cap: pb.VolumeCapability, context: Any,
          secrets: dict[str, str]) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    node.s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap, volume_context=context,
        secrets=secrets), timeout=120)


def publish(node: Driver, volume_id: str, staging: Path, target: Path, cap: pb.VolumeCapability,
            readonly: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    node.s.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), target_path=str(target), volume_capability=cap,
        readonly=readonly), timeout=120)


def unpublish_unstage(node: Driver, volume_id: str, staging: Path, *targets: Path) -> None:
    for target in targets:
        node.s.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
                                        timeout=120)
    node.s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging)),
                                  timeout=120)


def assert_read_only(path: Path) -> None:
    with pytest.raises(OSError) as info:
        path.write_bytes(b"x")
    assert info.value.errno == errno.EROFS


def test_dynamic_volume_from_a_bucket_prefix(plugins: tuple[Driver, Driver], meta_url: str, s3_server: S3Server,
                                             bucket_url: str, source_s3: S3Server, dataset: dict[str, bytes],
                                             workdir: Path) -> None:
    controller, node = plugins
    own_bucket = bucket_url.rsplit("/", 1)[1]
    secrets = fs_secrets(meta_url, s3_server, bucket_url, "imp-fs")
    params = {imports.IMPORT_SOURCE: source_s3.bucket_url(SOURCE_BUCKET) + "/train", "readahead": "2",
              "csi.storage.k8s.io/pvc/name": "imagenet", "csi.storage.k8s.io/pvc/namespace": "default"}
    source_before = listing(source_s3, SOURCE_BUCKET)
    name = "pvc-0b6e7c3a-5d1f-4e2a-9c8b-7a6d5e4f3c21"

    volume = create(controller, name, params, secrets)
    # The PV carries mount settings only: no source, no credentials.
    assert dict(volume.volume_context) == {"readahead": "2"}
    assert not [k for k in listing(s3_server, own_bucket) if "/blocks/" in k]  # no data copied
    # A repeated CreateVolume (the provisioner's retry) answers the same volume; another
    # source under the same name is another volume.
    assert create(controller, name, params, secrets) == volume
    other = {**params, imports.IMPORT_SOURCE: source_s3.bucket_url(SOURCE_BUCKET) + "/val"}
    assert create_fails(controller, name, other, secrets).code() == grpc.StatusCode.ALREADY_EXISTS
    without = {k: v for k, v in params.items() if k != imports.IMPORT_SOURCE}
    assert create_fails(controller, name, without, secrets).code() == grpc.StatusCode.ALREADY_EXISTS

    # kubelet: one staging, a read-only publish (a training job) and a read-write one.
    cap = capability(Mode.MULTI_NODE_MULTI_WRITER)
    staging = workdir / "kubelet" / "plugins" / "globalmount"
    reader = workdir / "kubelet" / "pods" / "train" / "mount"
    writer = workdir / "kubelet" / "pods" / "eval" / "mount"
    stage(node, volume.volume_id, staging, cap, volume.volume_context, secrets)
    publish(node, volume.volume_id, staging, reader, cap, readonly=True)
    publish(node, volume.volume_id, staging, writer, cap, readonly=False)

    found = sorted(str(p.relative_to(reader)) for p in reader.rglob("*") if p.is_file())
    assert found == sorted(dataset)
    for key, data in dataset.items():
        assert sha((reader / key).read_bytes()) == sha(data), key
    assert_read_only(reader / "results.txt")
    assert_read_only(reader / "class0" / "img000.jpg")

    # The job writes its results beside the data; the reader sees them, the source stays.
    results = os.urandom(2 * MiB + 3)
    (writer / "results").mkdir()
    (writer / "results" / "metrics.bin").write_bytes(results)
    with open(writer / "class1" / "img001.jpg", "r+b") as f:  # copy-on-write into an imported file
        f.write(b"edited")
    os.sync()
    assert sha((reader / "results" / "metrics.bin").read_bytes()) == sha(results)
    assert (reader / "class1" / "img001.jpg").read_bytes()[:6] == b"edited"
    assert listing(source_s3, SOURCE_BUCKET) == source_before
    assert [k for k in listing(s3_server, own_bucket) if "/blocks/" in k]  # the results went there

    unpublish_unstage(node, volume.volume_id, staging, reader, writer)
    controller.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets),
                                         timeout=120)
    assert listing(source_s3, SOURCE_BUCKET) == source_before  # deleting it deletes nothing there
    assert not [k for k in listing(s3_server, own_bucket) if "/blocks/" in k]

    logs = full_logs(controller, node)
    assert "created volume" in logs and "imported" in logs
    for secret in (SOURCE_SECRET, SOURCE_ACCESS, s3_server.secret_key):
        assert secret not in logs


def test_a_retried_create_volume_finishes_an_import_cut_short(
        plugins: tuple[Driver, Driver], meta_url: str, s3_server: S3Server, bucket_url: str, source_s3: S3Server,
        dataset: dict[str, bytes]) -> None:
    controller, _ = plugins
    secrets = fs_secrets(meta_url, s3_server, bucket_url, "resume-fs")
    source_url = source_s3.bucket_url(SOURCE_BUCKET) + "/train"
    params = {imports.IMPORT_SOURCE: source_url}
    name = "pvc-resumed"
    # Format the filesystem (a plain volume), then leave what a controller killed halfway
    # through an import leaves: the marked staging directory with part of the files.
    plain = create(controller, "pvc-plain", {}, secrets)
    staging = volumes.CREATING_PREFIX + dir_name(name)
    meta = open_meta(meta_url)
    try:
        assert isinstance(meta, RedisMeta)
        spec = parse_source(source_url, SOURCE_ACCESS, SOURCE_SECRET)
        attr = meta.mkdir(ROOT_INO, staging.encode(), volumes.DIR_MODE, 0, 0)
        meta.setxattr(attr.ino, volumes.MARKER, volumes._marker_json(name, {}, None, spec.shown))
        import_tree(meta, spec, "/" + staging, meta.load())
        dropped = ("class2", "sizes")
        for part in dropped:
            clone.remove_tree(meta, attr.ino, part.encode())
        left = {e.name.decode() for e in meta.readdir(attr.ino)}
        assert left and not left & set(dropped)
    finally:
        meta.shutdown()
    volume = create(controller, name, params, secrets)
    assert "resuming the import" in controller.log_path.read_text()
    meta = open_meta(meta_url)
    try:
        found = volumes.find(meta, dir_name(name))
        assert found is not None and found.is_volume and found.imported == spec.shown
        for key, data in dataset.items():
            ino = found.ino
            for part in key.split("/"):
                ino = meta.lookup(ino, part.encode()).ino
            assert meta.getattr(ino).size == len(data), key
        assert volumes.find(meta, staging) is None
    finally:
        meta.shutdown()
    # The provisioner's own timeout cutting a call short: the import goes on in the
    # driver, and the retry (waiting for the volume's lock) answers the finished volume.
    with pytest.raises(grpc.RpcError) as info:
        controller.s.controller.CreateVolume(pb.CreateVolumeRequest(
            name="pvc-timed-out", volume_capabilities=[capability(Mode.MULTI_NODE_MULTI_WRITER)],
            parameters=params, secrets=secrets), timeout=0.01)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    retried = create(controller, "pvc-timed-out", params, secrets)
    names = root_names(meta_url)
    assert dir_name("pvc-timed-out") in names and not [n for n in names if n.startswith(volumes.CREATING_PREFIX)]
    for volume_id in (volume.volume_id, plain.volume_id, retried.volume_id):
        controller.s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id, secrets=secrets),
                                             timeout=120)


def test_bad_sources_get_clear_codes_and_leave_no_volume(
        plugins: tuple[Driver, Driver], meta_url: str, s3_server: S3Server, bucket_url: str, source_s3: S3Server,
        dataset: dict[str, bytes]) -> None:
    controller, _ = plugins
    secrets = fs_secrets(meta_url, s3_server, bucket_url, "bad-fs")
    good = source_s3.bucket_url(SOURCE_BUCKET) + "/train"
    create(controller, "pvc-first", {}, secrets)  # formats the filesystem
    wrong_keys = {**secrets, imports.SECRET_ACCESS_KEY: "nobodyKey", imports.SECRET_SECRET_KEY: "wrongSecret1"}
    invalid, precondition = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    cases: list[tuple[str, dict[str, str], grpc.StatusCode, str]] = [
        ("ftp://host/bucket/x", secrets, invalid, "http(s)://host:port/bucket"),
        ("/data/local-dataset", secrets, invalid, "http(s)://host:port/bucket"),
        (source_s3.endpoint, secrets, invalid, "http(s)://host:port/bucket"),
        (bucket_url + "/bad-fs", secrets, invalid, "overlaps the volume's own objects"),
        (f"http://127.0.0.1:{free_port()}/dataset/train", secrets, precondition, "importSource"),
        (good, wrong_keys, precondition, "importAccessKey"),
        (source_s3.bucket_url("no-such-bucket") + "/x", secrets, precondition, "importSource"),
        (good + "/no/such/prefix", secrets, precondition, "has no objects"),
    ]
    for n, (url, case_secrets, code, words) in enumerate(cases):
        error = create_fails(controller, f"pvc-bad-{n}", {imports.IMPORT_SOURCE: url}, case_secrets)
        assert (error.code(), n) == (code, n), error.details()
        assert words in error.details(), error.details()
        assert "Traceback" not in error.details() and "wrongSecret1" not in error.details()
    # An import that does not fit the capacity is removed after the fact.
    error = create_fails(controller, "pvc-small", {imports.IMPORT_SOURCE: good}, secrets,
                         capacity_range=pb.CapacityRange(required_bytes=MiB))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE, error.details()
    # With a content source as well: one or the other.
    error = create_fails(controller, "pvc-both", {imports.IMPORT_SOURCE: good}, secrets,
                         volume_content_source=pb.VolumeContentSource(
                             volume=pb.VolumeContentSource.VolumeSource(volume_id="fc1:" + "0" * 32 + ":x")))
    assert error.code() == invalid
    # Credentials are the Secret's, never parameters.
    error = create_fails(controller, "pvc-param", {imports.IMPORT_SOURCE: good, imports.SECRET_SECRET_KEY: "x"},
                         secrets)
    assert error.code() == invalid
    assert root_names(meta_url) == ["pvc-first"]  # no volume, no half-made directory
    assert "wrongSecret1" not in full_logs(controller) and SOURCE_SECRET not in full_logs(controller)


def test_static_pv_imports_once_at_stage_and_mounts_read_only(
        plugins: tuple[Driver, Driver], meta_url: str, s3_server: S3Server, bucket_url: str, source_s3: S3Server,
        dataset: dict[str, bytes], workdir: Path) -> None:
    controller, node = plugins
    secrets = fs_secrets(meta_url, s3_server, bucket_url, "static-fs")
    create(controller, "pvc-formats", {}, secrets)  # an existing filesystem, as a static PV expects
    source_url = source_s3.bucket_url(SOURCE_BUCKET) + "/train"
    attributes = {"subdir": "/datasets/train", imports.IMPORT_SOURCE: source_url}
    cap = capability(Mode.MULTI_NODE_READER_ONLY)
    staging = workdir / "kubelet" / "static" / "globalmount"
    target = workdir / "kubelet" / "pods" / "job" / "mount"
    source_before = listing(source_s3, SOURCE_BUCKET)

    stage(node, "imagenet-static", staging, cap, attributes, secrets)
    publish(node, "imagenet-static", staging, target, cap, readonly=True)
    for key, data in dataset.items():
        assert sha((target / key).read_bytes()) == sha(data), key
    assert_read_only(target / "new.txt")
    assert_read_only(staging / "new.txt")  # MULTI_NODE_READER_ONLY stages read-only too
    unpublish_unstage(node, "imagenet-static", staging, target)

    meta = open_meta(meta_url)
    try:
        ino = ROOT_INO
        for part in ("datasets", "train"):
            ino = meta.lookup(ino, part.encode()).ino
        record = json.loads(meta.getxattr(ino, imports.DONE_XATTR))
        assert record == {"sources": [parse_source(source_url).shown]}
        # A node that died halfway: part of the files, no record. The next stage finishes.
        meta.removexattr(ino, imports.DONE_XATTR)
        clone.remove_tree(meta, ino, b"deep")  # type: ignore[arg-type]
    finally:
        meta.shutdown()
    stage(node, "imagenet-static", staging, cap, attributes, secrets)
    assert (staging / "deep" / "a" / "b" / "leaf").read_bytes() == b"leaf"
    unpublish_unstage(node, "imagenet-static", staging)
    # Done: a restage reads the record and imports nothing.
    imported = node.log_path.read_text().count("imported ")
    stage(node, "imagenet-static", staging, cap, attributes, secrets)
    assert node.log_path.read_text().count("imported ") == imported
    unpublish_unstage(node, "imagenet-static", staging)

    # Bad credentials on the node: a clear code, no mount.
    bad = {**secrets, imports.SECRET_SECRET_KEY: "wrongSecret1"}
    with pytest.raises(grpc.RpcError) as info:
        stage(node, "other-static", workdir / "kubelet" / "other", cap,
              {"subdir": "/datasets/other", imports.IMPORT_SOURCE: source_url}, bad)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert listing(source_s3, SOURCE_BUCKET) == source_before
    logs = full_logs(controller, node)
    for secret in (SOURCE_SECRET, "wrongSecret1", s3_server.secret_key):
        assert secret not in logs
