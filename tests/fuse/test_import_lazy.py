"""`fusecache import --lazy` on real services: nothing is listed at import time; each
directory is listed from the source the first time a mount looks into it (readdir, or a
lookup by path), two mounts filling at once make each name once, and `--update` later fills
in what was added at the source."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from pathlib import Path

from tests.fuse.helpers import Volume, run_cli, sha256_file
from tests.fuse.test_cli import assert_clean_failure
from tests.fuse.test_import import s3_client, source, source_env, vol  # noqa: F401 (fixtures)
from tests.servers import S3Server, free_port


def walk(root: Path) -> dict[str, int]:
    """Every file under `root`, relative path -> inode number."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.stat().st_ino
    return out


def test_lazy_import_lists_each_directory_on_first_use_once_across_mounts(
        vol: Volume, s3_server: S3Server, source: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:  # noqa: F811
    url, objects = source
    env = source_env(s3_server)
    assert_clean_failure(run_cli("import", vol.meta_url, url, "/train", "--lazy", "--update", env=env, check=False),
                         "--lazy")
    out = run_cli("import", vol.meta_url, url, "/train", "--lazy", env=env).stdout
    assert "each directory is listed from it the first time" in out, out
    # Nothing was listed: the volume holds one directory, no file.
    status = run_cli("fsck", vol.meta_url).stdout
    assert "0 files with data" in status, status

    a = vol.mount()
    b = vol.mount(path=tmp_path / "b")
    # A lookup by path fills each level on the way, without any readdir.
    assert (a.path / "train" / "deep" / "a" / "b" / "c" / "d" / "leaf").read_bytes() == b"leaf"
    # Both mounts walk the whole tree at once; each name is made once (same inodes).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        seen_a, seen_b = pool.map(walk, [a.path / "train", b.path / "train"])
    assert seen_a == seen_b
    assert set(seen_a) == set(objects)
    for key, data in objects.items():
        assert sha256_file(a.path / "train" / key) == hashlib.sha256(data).hexdigest(), key
    assert sorted(os.listdir(a.path / "train")) == sorted({k.split("/")[0] for k in objects})
    assert not [k for k in vol.object_keys() if "/blocks/" in k]  # still no data copied

    # Added at the source after the fill: --update brings it in, for both mounts.
    client = s3_client(s3_server)
    client.put_object(Bucket="dataset", Key="train/class0/late.jpg", Body=b"late")
    client.close()
    assert not (a.path / "train" / "class0" / "late.jpg").exists()
    out = run_cli("import", vol.meta_url, url, "/train", "--update", "-q", env=env).stdout
    assert "imported 1 objects" in out and f"{len(objects)} unchanged" in out, out
    assert (b.path / "train" / "class0" / "late.jpg").read_bytes() == b"late"
    assert run_cli("fsck", vol.meta_url).returncode == 0


def test_warmup_of_a_lazy_import_lists_warms_and_checks_it(
        vol: Volume, s3_server: S3Server, source: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:  # noqa: F811
    from tests.fuse.helpers import client_stats

    url, objects = source
    run_cli("import", vol.meta_url, url, "/w", "--lazy", env=source_env(s3_server))
    port = free_port()
    m = vol.mount("--cache", f"ssd:{tmp_path / 'cache'}:512MiB", "--metrics", f"127.0.0.1:{port}")
    out = run_cli("warmup", str(m.path / "w")).stdout  # the first look into any of it
    assert f"warmed up {len(objects)} files" in out, out
    check = run_cli("warmup", "--check", str(m.path / "w")).stdout
    assert f"{len(objects)} files" in check and "100.0% cached" in check, check
    gets = client_stats(m.path)["store"]["gets"]
    for key, data in objects.items():
        assert sha256_file(m.path / "w" / key) == hashlib.sha256(data).hexdigest(), key
    assert client_stats(m.path)["store"]["gets"] == gets  # every read from the cache
    # The metrics count imported data like any other: its GETs, and the SSD tier holding it.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    got = re.search(r'^fusecache_store_get_requests_total\{volume="testvol"\} (\S+)$', body, re.MULTILINE)
    assert got and float(got.group(1)) == gets, body
    used = re.search(r'^fusecache_cache_used_bytes\{medium="ssd",tier="0",volume="testvol"\} (\S+)$', body,
                     re.MULTILINE)
    assert used and float(used.group(1)) >= sum(len(d) for d in objects.values()), body
    run_cli("warmup", "--evict", str(m.path / "w"))
    check = run_cli("warmup", "--check", str(m.path / "w")).stdout
    assert "0.0% cached" in check, check
