"""`fusecache destroy META_URL UUID`: everything of one volume goes, nothing of another
volume in the same bucket or the same Redis database; a wrong UUID, live clients or a dead
store change nothing; an interrupted destroy keeps every client away and a rerun finishes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import redis

from fusecache.meta import destroy as plan
from fusecache.meta import open_meta
from fusecache.meta.dump import is_runtime
from fusecache.meta.redis import RedisMeta
from tests.fuse.helpers import Volume, format_volume, run_cli, sha256_file, wait_pid
from tests.fuse.test_cli import assert_clean_failure
from tests.servers import S3Server, free_port


def uuid_of(volume: Volume) -> str:
    return json.loads(run_cli("status", volume.meta_url, "--json").stdout)["setting"]["uuid"]


def keys(url: str, prefix: str = "fc") -> set[bytes]:
    client = redis.Redis.from_url(url.split("?")[0])
    try:
        return set(client.scan_iter(match="{" + prefix + "}*"))
    finally:
        client.close()


def durable(names: set[bytes], prefix: str = "fc") -> set[bytes]:
    """Keys that are not clients' runtime state (sessions, open notes, tokens, leases)."""
    tag = ("{" + prefix + "}").encode()
    return {k for k in names if not is_runtime(k[len(tag):].decode())}


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}?prefix={prefix}"


def test_destroy_leaves_another_volume_in_the_same_bucket_and_database(
        meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> None:
    url_a, url_b = with_prefix(meta_url, "a"), with_prefix(meta_url, "b")
    vol_a = format_volume(url_a, tmp_path / "a", "s3", s3_server, bucket_url, name="vol-a")
    vol_b = format_volume(url_b, tmp_path / "b", "s3", s3_server, bucket_url, name="vol-b")
    try:
        mounts = [vol_a.mount(), vol_b.mount()]
        for m, size in zip(mounts, (5 << 20, 3 << 20), strict=True):
            data = os.urandom(size)
            (m.path / "f").write_bytes(data)
        digest_b = hashlib.sha256(data).hexdigest()
        for m in mounts:  # both at once: a client takes a while to finish
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
        for m in mounts:
            wait_pid(m.pid)
        vol_b.mounts.clear()
        before_b = keys(meta_url, "b")
        objects_b = sorted(k for k in vol_b.object_keys() if k.startswith("vol-b/"))
        assert objects_b and any(k.startswith("vol-a/") for k in vol_a.object_keys())

        result = run_cli("destroy", url_a, uuid_of(vol_a), env=vol_a.env)
        assert "destroyed" in result.stdout and "vol-a" in result.stdout
        assert "deleting objects" in result.stderr  # progress

        assert sorted(vol_b.object_keys()) == objects_b  # the whole bucket: only vol-b's objects
        assert keys(meta_url, "a") == set()
        assert keys(meta_url, "b") == before_b
        assert_clean_failure(run_cli("status", url_a, check=False), "not formatted")
        assert sha256_file(vol_b.mount().path / "f") == digest_b
    finally:
        vol_a.cleanup()
        vol_b.cleanup()


def test_wrong_uuid_and_live_clients_delete_nothing_and_force_does(meta_url: str, tmp_path: Path) -> None:
    # No trash: its janitor would take a lease key a few seconds after mounting.
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--trash-days", "0")
    try:
        m = vol.mount()
        (m.path / "f").write_bytes(os.urandom(1 << 20))
        os.sync()
        before_keys, before_objects = keys(meta_url), vol.object_keys()
        uuid = uuid_of(vol)

        wrong = run_cli("destroy", meta_url, "0" * 8 + uuid[8:], check=False)
        assert_clean_failure(wrong, "not the uuid", "nothing was deleted")
        assert wrong.returncode == 2
        refused = run_cli("destroy", meta_url, uuid, check=False)
        assert_clean_failure(refused, "mounted by 1 client", str(m.path), f"pid {m.pid}", "--force",
                             "nothing was deleted")
        assert vol.object_keys() == before_objects
        # The mark was taken back. (Open-file notes are runtime state: the client drops the
        # note of a closed file a moment later, whenever that happens to be.)
        assert durable(keys(meta_url)) == durable(before_keys)
        assert (m.path / "f").stat().st_size == 1 << 20  # still served

        forced = run_cli("destroy", meta_url, uuid, "--force", "-q")
        assert "warning" in forced.stderr and str(m.path) in forced.stderr
        assert "destroyed" in forced.stdout
        assert vol.object_keys() == []
        assert keys(meta_url) == set()
        assert not (tmp_path / "objects" / "testvol").exists()  # empty directories go too
    finally:
        vol.cleanup()


def test_an_interrupted_destroy_keeps_clients_away_and_a_rerun_finishes(file_volume: Volume) -> None:
    vol = file_volume
    m = vol.mount()
    (m.path / "f").write_bytes(os.urandom(6 << 20))
    m.umount()
    vol.mounts.clear()
    uuid = uuid_of(vol)
    # The state a destroy stopped after its first deletes leaves: marked, objects partly gone.
    meta = open_meta(vol.meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        plan.mark(meta)
    finally:
        meta.shutdown()
    first = sorted(vol.object_keys())[0]
    os.unlink(Path(vol.bucket) / first)

    mp = vol.workdir / "mp"
    mp.mkdir()
    for refused in (run_cli("mount", vol.meta_url, str(mp), "-d", check=False),
                    run_cli("fsck", vol.meta_url, "-q", check=False),
                    run_cli("format", vol.meta_url, "testvol", "--bucket", vol.bucket, "--force", check=False)):
        assert_clean_failure(refused, "being destroyed", uuid)
    assert "being destroyed" in run_cli("status", vol.meta_url).stdout

    run_cli("destroy", vol.meta_url, uuid, "-q")
    assert vol.object_keys() == [] and keys(vol.meta_url) == set()
    assert_clean_failure(run_cli("destroy", vol.meta_url, uuid, check=False), "nothing to destroy")


def test_a_dead_store_or_no_volume_changes_nothing(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                    bucket_url: str) -> None:
    assert_clean_failure(run_cli("destroy", meta_url, "some-uuid", check=False), "not formatted",
                         "nothing to destroy")
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url)
    client = redis.Redis.from_url(meta_url)
    try:
        doc = json.loads(client.get("{fc}setting"))
        doc["bucket"] = f"http://127.0.0.1:{free_port()}/bucket"  # nothing listens there
        client.set("{fc}setting", json.dumps(doc))
        before = keys(meta_url)
        started = time.monotonic()
        result = run_cli("destroy", meta_url, doc["uuid"], env=vol.env, check=False)
        assert time.monotonic() - started < 15
        assert_clean_failure(result, "cannot reach", "refused", "nothing was deleted")
        assert keys(meta_url) == before
        assert "destroying" not in json.loads(client.get("{fc}setting"))["extra"]
    finally:
        client.close()


def test_a_session_of_a_destroyed_volume_does_not_register_again(meta_url: str, tmp_path: Path) -> None:
    """A client still mounted under `destroy --force` finds its session gone at the next
    heartbeat; it must not write it back (keys of a volume that no longer exists)."""
    format_volume(meta_url, tmp_path, "file", None, None)
    meta = open_meta(meta_url)
    assert isinstance(meta, RedisMeta)
    try:
        meta.load()
        sid = meta.new_session("host", os.getpid(), "/mnt", "test")
        plan.mark(meta)
        redis.Redis.from_url(meta_url).delete("{fc}sessions", "{fc}sessinfo")
        meta.heartbeat(sid)
        assert meta.list_sessions() == []
    finally:
        meta.shutdown()


def test_a_client_silent_for_less_than_the_garbage_delay_still_counts(meta_url: str, tmp_path: Path) -> None:
    """A session judged dead keeps what it had open for one garbage delay more; destroy
    waits as long (or is forced). Older silent sessions do not stop it."""
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--garbage-delay", "5m")
    meta = open_meta(meta_url)
    assert isinstance(meta, RedisMeta)
    client = redis.Redis.from_url(meta_url)
    try:
        meta.load()
        sid = meta.new_session("frozen-host", 4242, "/mnt/frozen", "test")
        now = float(client.time()[0])
        client.zadd("{fc}sessions", {str(sid): now - 120})  # silent for 2 min: stale, not yet safe
        uuid = uuid_of(vol)
        refused = run_cli("destroy", meta_url, uuid, check=False)
        assert_clean_failure(refused, "frozen-host:/mnt/frozen", "may come back", "--force", "nothing was deleted")
        client.zadd("{fc}sessions", {str(sid): now - 400})  # past 60 s + the garbage delay
        run_cli("destroy", meta_url, uuid, "-q")
        assert keys(meta_url) == set()
    finally:
        client.close()
        meta.shutdown()
