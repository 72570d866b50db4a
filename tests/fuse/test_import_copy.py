"""`fusecache import --copy` on real services: the imported files' data is written into
the volume's own store, so they read back by hash after every source object is deleted,
from a new mount with a cold cache; a copy killed with SIGKILL is finished by a rerun and
leaves nothing gc cannot account for; a source object changed after the import fails its
file with one line (and it reads EIO, never mixed bytes); a user's write survives the copy."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.fuse import test_import
from tests.fuse.helpers import CLI, Volume, run_cli, sha256_file
from tests.fuse.test_cache import drop_page_cache
from tests.fuse.test_import import MiB, s3_client, source_env
from tests.servers import S3Server

# The dataset bucket and the volume of test_import.py, as fixtures of this module too.
source = test_import.source
vol = test_import.vol

Source = tuple[str, dict[str, bytes]]


def blocks(v: Volume) -> list[str]:
    return [k for k in v.object_keys() if "/blocks/" in k]


def delete_source(s3: S3Server) -> None:
    client = s3_client(s3)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="dataset"):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket="dataset", Key=item["Key"])
    finally:
        client.close()


def assert_hashes(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        assert sha256_file(root / key) == hashlib.sha256(data).hexdigest(), key


def gc_report(v: Volume, *extra: str) -> dict:
    return json.loads(run_cli("gc", v.meta_url, "--min-age", "0", "--json", *extra, env=v.env).stdout)


def test_copy_owns_every_file_and_outlives_its_source(vol: Volume, s3_server: S3Server, source: Source,
                                                       tmp_path: Path) -> None:
    url, files = source
    env = {**source_env(s3_server), **vol.env}
    result = run_cli("import", vol.meta_url, url, "/train", "--copy", "-p", "8", env=env)
    total = sum(len(d) for d in files.values())
    with_data = sum(1 for d in files.values() if d)
    assert f"imported {len(files)} objects" in result.stdout, result.stdout
    assert f"copied {with_data} files" in result.stdout and "0 failed" in result.stdout, result.stdout
    assert "copying imported data" in result.stderr  # progress
    assert "Traceback" not in result.stderr
    stored = blocks(vol)
    assert sum(int(k.rsplit("_", 1)[1]) for k in stored) == total  # the volume's bucket has every byte

    # Idempotent: a rerun finds nothing left to copy.
    again = run_cli("import", vol.meta_url, url, "/train", "--copy", env=env).stdout
    assert "copied 0 files" in again and f"{len(files)} already owned" in again, again
    assert blocks(vol) == stored

    delete_source(s3_server)
    m = vol.mount("--cache", f"ssd:{tmp_path / 'cold'}:512MiB")
    assert_hashes(m.path / "train", files)
    checked = run_cli("fsck", vol.meta_url, env=vol.env)
    assert "imports" not in checked.stdout, checked.stdout  # no file depends on the source any more
    report = gc_report(vol)
    assert report["leaked_objects"] == 0 and report["referenced"] == len(stored), report


def test_copy_killed_midway_is_finished_by_a_rerun(vol: Volume, s3_server: S3Server, source: Source,
                                                    meta_url: str, tmp_path: Path) -> None:
    url, files = source
    env = {**os.environ, **source_env(s3_server), **vol.env}
    run_cli("import", vol.meta_url, url, "/train", env=env)
    proc = subprocess.Popen([*CLI, "import", vol.meta_url, url, "/train", "--copy", "-p", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(blocks(vol)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed"

    rerun = run_cli("import", vol.meta_url, url, "/train", "--copy", env=env)
    assert "0 failed" in rerun.stdout, rerun.stdout
    copied = int(re.search(r"copied (\d+) files", rerun.stdout).group(1))  # type: ignore[union-attr]
    assert copied > 0, rerun.stdout  # the kill came mid-way: the rerun had work left

    # Nothing is unaccounted for: the killed run's unfinished objects are spared while its
    # session may be alive, and are leaks gc deletes once it is seen as dead.
    report = gc_report(vol)
    assert report["leaked_objects"] == 0
    assert report["referenced"] + report["in_use"] == len(blocks(vol)), report
    client = redis.Redis.from_url(meta_url)
    for sid in client.zrange("{fc}sessions", 0, -1):
        client.zadd("{fc}sessions", {sid: time.time() - 3600})  # as if its timeout had passed
    client.close()
    deleted = gc_report(vol, "--delete")
    assert deleted["deleted"] == report["in_use"], deleted
    assert gc_report(vol)["leaked_objects"] == 0
    assert gc_report(vol)["referenced"] == len(blocks(vol))

    delete_source(s3_server)
    m = vol.mount("--cache", f"ssd:{tmp_path / 'cold'}:512MiB")
    assert_hashes(m.path / "train", files)
    assert "imports" not in run_cli("fsck", vol.meta_url, env=vol.env).stdout


def test_copy_fails_a_file_changed_at_its_source_with_one_line(vol: Volume, s3_server: S3Server, source: Source,
                                                               tmp_path: Path) -> None:
    url, files = source
    env = {**source_env(s3_server), **vol.env}
    run_cli("import", vol.meta_url, url, "/train", env=env)
    changed = "sizes/s3145733"  # 3 MiB + 5: four blocks, none of which may mix versions
    big = "sizes/over-a-chunk"  # two chunks: failed whole, neither copied
    client = s3_client(s3_server)
    for key in (changed, big):
        client.put_object(Bucket="dataset", Key="train/" + key, Body=os.urandom(len(files[key])))
    client.close()

    result = run_cli("import", vol.meta_url, url, "/train", "--copy", env=env, check=False)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("fusecache")]  # not progress
    assert len(lines) == 2, result.stderr  # one line per file
    for key, line in zip((big, changed), lines, strict=True):
        assert f"/train/{key}: " in line and "changed at its source" in line, lines
    assert "Traceback" not in result.stderr
    assert "2 failed" in result.stdout and f"copied {sum(1 for d in files.values() if d) - 2} files" in result.stdout

    m = vol.mount("--cache", f"ssd:{tmp_path / 'cold'}:512MiB")
    for key in (changed, big):
        drop_page_cache(m.path / "train" / key)
        with pytest.raises(OSError) as info:
            (m.path / "train" / key).read_bytes()
        assert info.value.errno == errno.EIO
    assert_hashes(m.path / "train", {k: d for k, d in files.items() if k not in (changed, big)})
    m.umount()

    # --update gives the files the current version (neither was part copied) and --copy
    # copies them; a copied file is then the volume's own, kept by a later --update.
    fixed = run_cli("import", vol.meta_url, url, "/train", "--update", "--copy", env=env)
    assert "2 refreshed" in fixed.stdout and "copied 2 files" in fixed.stdout and "0 failed" in fixed.stdout
    client = s3_client(s3_server)
    current = {k: client.get_object(Bucket="dataset", Key="train/" + k)["Body"].read() for k in (changed, big)}
    client.close()
    other = "sizes/s1048576"
    client = s3_client(s3_server)
    client.put_object(Bucket="dataset", Key="train/" + other, Body=os.urandom(MiB))
    client.close()
    kept = run_cli("import", vol.meta_url, url, "/train", "--update", env=env).stdout
    assert "0 refreshed" in kept and "changed in the volume and kept" in kept, kept
    delete_source(s3_server)
    m = vol.mount("--cache", f"ssd:{tmp_path / 'cold2'}:512MiB")
    assert_hashes(m.path / "train", {**files, **current})


def test_a_write_made_before_the_copy_survives_it(vol: Volume, s3_server: S3Server, source: Source,
                                                  tmp_path: Path) -> None:
    url, files = source
    env = {**source_env(s3_server), **vol.env}
    run_cli("import", vol.meta_url, url, "/train", env=env)
    m = vol.mount()
    train = m.path / "train"
    want = dict(files)
    big = "sizes/over-a-chunk"
    with open(train / big, "r+b") as f:  # across the chunk boundary
        f.seek(64 * MiB - 5)
        f.write(b"written by a user")
    edited = bytearray(files[big])
    edited[64 * MiB - 5:64 * MiB + 12] = b"written by a user"
    want[big] = bytes(edited)
    os.truncate(train / "class0/img0006.jpg", 10)
    want["class0/img0006.jpg"] = files["class0/img0006.jpg"][:10]
    with open(train / "deep/a/b/c/d/leaf", "ab") as f:
        f.write(b" and more")
    want["deep/a/b/c/d/leaf"] = b"leaf and more"
    m.umount()

    result = run_cli("import", vol.meta_url, url, "/train", "--copy", env=env)
    assert "0 failed" in result.stdout, result.stdout
    delete_source(s3_server)
    fresh = vol.mount("--cache", f"ssd:{tmp_path / 'cold'}:512MiB")
    assert_hashes(fresh.path / "train", want)
    assert (fresh.path / "train" / big).stat().st_size == len(files[big])
