"""`fusecache import` on real services: a second bucket filled through boto3 (nested
prefixes, empty objects, sizes across block and chunk boundaries, unicode keys) appears as
files without one byte copied; reads match by hash, warm reads make no GET, a change at
the source is EIO and never mixed bytes, and nothing the volume does touches the source."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from fusecache.units import format_size
from tests.fuse.helpers import Volume, client_stats, format_volume, run_cli, sha256_file
from tests.fuse.test_cache import drop_page_cache
from tests.fuse.test_cli import assert_clean_failure
from tests.servers import S3Server

MiB = 1 << 20


def s3_client(s3: S3Server):  # type: ignore[no-untyped-def]
    config = Config(response_checksum_validation="when_required", request_checksum_calculation="when_required",
                    s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", config=config,
                                          aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key)


def source_objects() -> dict[str, bytes]:
    """Keys under the prefix `train/` and their contents."""
    objects: dict[str, bytes] = {}
    for i in range(120):
        objects[f"class{i % 6}/img{i:04d}.jpg"] = os.urandom(100 + 997 * i)
    for size in (0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 5):
        objects[f"sizes/s{size}"] = os.urandom(size)
    objects["sizes/over-a-chunk"] = os.urandom(64 * MiB + 4097)
    objects["ünïcödé/日本語 ファイル.txt"] = "こんにちは".encode() * 100
    objects["deep/a/b/c/d/leaf"] = b"leaf"
    return objects


# Keys that cannot be file names (both an object and a prefix, over 255 bytes, '.' or '..')
# cannot be stored by a filesystem-backed S3 server either: tests/meta/test_import.py.


@pytest.fixture
def source(s3_server: S3Server) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A bucket of a dataset, under the prefix train/."""
    url = s3_server.make_bucket("dataset")
    client = s3_client(s3_server)
    objects = source_objects()
    for key, data in objects.items():
        client.put_object(Bucket="dataset", Key="train/" + key, Body=data)
    try:
        yield url + "/train", objects
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="dataset"):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket="dataset", Key=item["Key"])
        client.close()


@pytest.fixture
def vol(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> Iterator[Volume]:
    v = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M", "--trash-days", "0")
    try:
        yield v
    finally:
        v.cleanup()


def listing(s3: S3Server) -> dict[str, str]:
    client = s3_client(s3)
    try:
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="dataset"):
            for item in page.get("Contents", ()):
                out[item["Key"]] = item["ETag"]
        return out
    finally:
        client.close()


def source_env(s3: S3Server) -> dict[str, str]:
    return {"SOURCE_ACCESS_KEY": s3.access_key, "SOURCE_SECRET_KEY": s3.secret_key}


def test_import_reads_by_hash_copies_nothing_and_never_touches_the_source(
        vol: Volume, s3_server: S3Server, source: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, objects = source
    env = source_env(s3_server)
    out = run_cli("import", vol.meta_url, url, "/train", env=env).stdout
    files = {k: v for k, v in objects.items() if not k.endswith("/")}
    assert f"imported {len(files)} objects" in out, out
    assert s3_server.secret_key not in out
    assert not [k for k in vol.object_keys() if "/blocks/" in k]  # no data copied into the volume

    m = vol.mount("--cache", f"ssd:{tmp_path / 'cache'}:512MiB")
    train = m.path / "train"
    for key, data in files.items():
        assert sha256_file(train / key) == hashlib.sha256(data).hexdigest(), key
        assert (train / key).stat().st_size == len(data)
    assert not [k for k in vol.object_keys() if "/blocks/" in k]

    # Warm: every read from the cache, none from the source.
    run_cli("warmup", str(m.path / "train"), "-q", "--evict")
    run_cli("warmup", str(m.path / "train"), "-q")
    gets = client_stats(m.path)["store"]["gets"]
    for key, data in files.items():
        assert sha256_file(train / key) == hashlib.sha256(data).hexdigest()
    assert client_stats(m.path)["store"]["gets"] == gets

    # Copy-on-write: a write into an imported file stays in the volume.
    before = listing(s3_server)
    target = train / "sizes" / f"s{3 * MiB + 5}"
    with open(target, "r+b") as f:
        f.seek(MiB - 3)
        f.write(b"written here")
    want = bytearray(files[f"sizes/s{3 * MiB + 5}"])
    want[MiB - 3:MiB + 9] = b"written here"
    os.sync()
    assert sha256_file(target) == hashlib.sha256(want).hexdigest()
    os.truncate(train / "class0" / "img0006.jpg", 10)
    os.rename(train / "deep", train / "moved")
    assert listing(s3_server) == before

    # A change at the source: EIO once the file is read from the source, never mixed bytes.
    changed = f"class1/img{7:04d}.jpg"
    client = s3_client(s3_server)
    replaced = os.urandom(len(files[changed]))
    client.put_object(Bucket="dataset", Key="train/" + changed, Body=replaced)
    client.close()
    run_cli("warmup", str(train / changed), "-q", "--evict")
    drop_page_cache(train / changed)
    with pytest.raises(OSError) as info:
        (train / changed).read_bytes()
    assert info.value.errno == errno.EIO
    assert "changed at its source" in m.log.read_text()
    found = run_cli("fsck", vol.meta_url, check=False)
    assert found.returncode != 0 and f"/train/{changed}: imported data: its source object" in found.stdout
    assert found.stdout.count("imports:") == 1, found.stdout
    # --update gives it the new content, on the mounted client, and fsck is clean again.
    out = run_cli("import", vol.meta_url, url, "/train", "--update", "-q", env=env).stdout
    assert "1 refreshed to a new version" in out, out
    assert (train / changed).read_bytes() == replaced
    assert run_cli("fsck", vol.meta_url).returncode == 0

    # Deleting the imported tree deletes nothing at the source.
    before = listing(s3_server)
    subprocess.run(["rm", "-rf", str(train)], check=True)
    os.sync()
    assert listing(s3_server) == before
    assert run_cli("fsck", vol.meta_url).returncode == 0


def test_import_of_a_local_directory_and_a_rerun(vol: Volume, tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "a" / "b").mkdir(parents=True)
    contents = {"a/one": os.urandom(2 * MiB + 3), "a/b/two": b"two", "top": b""}
    for rel, data in contents.items():
        (src / rel).write_bytes(data)
    out = run_cli("import", vol.meta_url, str(src), "/local").stdout
    assert "imported 3 objects" in out
    again = run_cli("import", vol.meta_url, str(src), "/local").stdout
    assert "imported 0 objects" in again and "3 already there" in again
    m = vol.mount()
    for rel, data in contents.items():
        assert (m.path / "local" / rel).read_bytes() == data
    (src / "a" / "one").write_bytes(os.urandom(10))  # changed in place at the source
    run_cli("warmup", str(m.path / "local"), "-q", "--evict")
    drop_page_cache(m.path / "local" / "a" / "one")
    with pytest.raises(OSError) as info:
        (m.path / "local" / "a" / "one").read_bytes()
    assert info.value.errno == errno.EIO


def test_import_bad_input_is_one_line_and_leaves_nothing(vol: Volume, s3_server: S3Server,
                                                        source: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, _ = source
    env = source_env(s3_server)
    from tests.servers import free_port

    cases = [
        ([f"http://127.0.0.1:{free_port()}/dataset/train"], env, "SOURCE"),
        ([url], {"SOURCE_ACCESS_KEY": "nobody", "SOURCE_SECRET_KEY": "wrong"}, "access denied"),
        ([s3_server.endpoint + "/no-such-bucket/x"], env, "does not exist"),
        ([url + "/no/such/prefix"], env, "has no objects"),
        ([str(tmp_path / "missing")], {}, "is not a directory"),
        (["ftp://host/x"], {}, "http(s)://"),
        ([vol.bucket + "/testvol"], env, "overlaps the volume's own objects"),
    ]
    for source_arg, extra, words in cases:
        result = run_cli("import", vol.meta_url, *source_arg, "/train", env=extra, check=False)
        assert_clean_failure(result, words)
        assert "wrong" not in result.stderr
    m = vol.mount()
    assert not (m.path / "train").exists() or not os.listdir(m.path / "train")
    (m.path / "file").write_bytes(b"x")
    assert_clean_failure(run_cli("import", vol.meta_url, url, "/file", env=env, check=False),
                         "exists and is not a directory")


def test_update_refreshes_adds_and_deletes_beside_a_mount_and_keeps_local_changes(
        vol: Volume, s3_server: S3Server, source: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, objects = source
    env = source_env(s3_server)
    run_cli("import", vol.meta_url, url, "/train", env=env)
    m = vol.mount("--cache", f"ssd:{tmp_path / 'cache'}:512MiB")
    train = m.path / "train"
    # Changes in the volume first: a write into one file, a truncate of another.
    written, truncated = "class2/img0008.jpg", "class3/img0009.jpg"
    with open(train / written, "r+b") as f:
        f.write(b"mine")
    os.truncate(train / truncated, 10)
    old_handle = open(train / "class0/img0000.jpg", "rb")  # noqa: SIM115 (read after the update)
    old_first = old_handle.read(50)

    # Then at the source: replace, add, delete (an empty object, a whole prefix, and the
    # objects of both files changed in the volume).
    client = s3_client(s3_server)
    new = {"class0/img0000.jpg": os.urandom(5 * MiB + 7), "sizes/s1": b"", "added/n/new.bin": os.urandom(MiB + 1),
           written: os.urandom(99), truncated: os.urandom(77)}
    for key, data in new.items():
        client.put_object(Bucket="dataset", Key="train/" + key, Body=data)
    gone = ["sizes/s0", "deep/a/b/c/d/leaf", "class4/img0010.jpg"]
    for key in gone:
        client.delete_object(Bucket="dataset", Key="train/" + key)
    client.close()
    before = listing(s3_server)

    result = run_cli("import", vol.meta_url, url, "/train", "--update", "--delete", "-q", env=env)
    out = result.stdout
    assert f"imported 1 objects ({format_size(MiB + 1)})" in out, out  # added/n/new.bin
    assert "2 refreshed to a new version" in out and "2 changed in the volume and kept" in out, out
    assert "3 files whose object is gone deleted, 5 emptied directories removed" in out, out
    assert listing(s3_server) == before  # nothing at the source changed

    # The mounted client sees it all, without a remount.
    want = {**{k: v for k, v in objects.items() if k not in gone}, **new}
    kept = (written, truncated)
    for key, data in want.items():
        if key not in kept:
            assert sha256_file(train / key) == hashlib.sha256(data).hexdigest(), key
    # The two kept files still hold bytes of their old version, which the source no longer
    # has: once out of the cache they read EIO, never the new version's bytes.
    assert (train / written).stat().st_size == len(objects[written])
    assert (train / truncated).stat().st_size == 10
    for key in kept:
        run_cli("warmup", str(train / key), "-q", "--evict")
        drop_page_cache(train / key)
        with pytest.raises(OSError) as info:
            (train / key).read_bytes()
        assert info.value.errno == errno.EIO
    for key in gone:
        assert not (train / key).exists(), key
    assert not (train / "deep").exists()
    # A handle opened on the old version gives old bytes or EIO, never the new ones.
    try:
        rest = old_handle.read()
        assert old_first + rest == objects["class0/img0000.jpg"]
    except OSError as exc:
        assert exc.errno == errno.EIO
    old_handle.close()

    # Idempotent: a second run changes nothing.
    again = run_cli("import", vol.meta_url, url, "/train", "--update", "--delete", "-q", env=env).stdout
    assert "imported 0 objects" in again and "0 refreshed" in again and "0 files whose object" in again, again
    # fsck names exactly the two files changed in the volume whose source object changed.
    found = run_cli("fsck", vol.meta_url, check=False).stdout
    named = sorted(line.split(": ")[1] for line in found.splitlines() if "imported data" in line)
    assert named == sorted(f"/train/{k}" for k in (written, truncated)), found


def test_delete_needs_update_and_keeps_files_made_in_the_volume(
        vol: Volume, s3_server: S3Server, source: tuple[str, dict[str, bytes]]) -> None:
    url, _ = source
    env = source_env(s3_server)
    assert_clean_failure(run_cli("import", vol.meta_url, url, "/train", "--delete", env=env, check=False),
                         "--delete works with --update only")
    run_cli("import", vol.meta_url, url, "/train", env=env)
    m = vol.mount()
    (m.path / "train" / "sizes" / "_SUCCESS").write_bytes(b"")  # a user's file among imported ones
    client = s3_client(s3_server)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="dataset", Prefix="train/sizes/"):
        for item in page.get("Contents", ()):
            client.delete_object(Bucket="dataset", Key=item["Key"])
    client.close()
    out = run_cli("import", vol.meta_url, url, "/train", "--update", "--delete", "-q", env=env).stdout
    assert "7 files whose object is gone deleted, 0 emptied directories" in out, out
    assert os.listdir(m.path / "train" / "sizes") == ["_SUCCESS"]


def test_an_import_survives_a_redis_sigkill_before_and_during_it(
        s3_server: S3Server, source: tuple[str, dict[str, bytes]], bucket_url: str, tmp_path: Path) -> None:
    from tests.fuse.test_redis_faults import _kill_and_restart
    from tests.servers import start_redis

    url, objects = source
    env = source_env(s3_server)
    server = start_redis(aof=True)
    try:
        v = format_volume(server.url(1), tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M",
                          "--trash-days", "0")
        try:
            # Killed while it runs: one clean line; after the restart a rerun finishes it.
            run = subprocess.Popen([sys.executable, "-m", "fusecache.cli.main", "import", v.meta_url, url, "/train"],
                                   env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            assert run.stderr is not None
            first = run.stderr.readline()  # the first progress line: files are being made
            assert "listing and importing objects" in first, first
            server = _kill_and_restart(server)
            _out, err = run.communicate(timeout=120)
            # Its calls retry across the restart, or it stops with one line.
            errors = [line for line in err.splitlines() if line.startswith("fusecache:")]
            assert "Traceback" not in err and (run.returncode == 0 or len(errors) == 1), err
            run_cli("import", v.meta_url, url, "/train", "-q", env=env)
            # Killed after it: every file is there, reads by hash, fsck is clean.
            server = _kill_and_restart(server)
            m = v.mount()
            for key, data in objects.items():
                assert sha256_file(m.path / "train" / key) == hashlib.sha256(data).hexdigest(), key
            again = run_cli("import", v.meta_url, url, "/train", "--update", "-q", env=env).stdout
            assert "imported 0 objects" in again and f"{len(objects)} unchanged" in again, again
            assert run_cli("fsck", v.meta_url).returncode == 0
        finally:
            v.cleanup()
    finally:
        server.stop()
