"""`fusecache dump` / `load`: a volume's whole metadata out and back, checked by hash in a
second Redis database; a live volume dumps as a snapshot or not at all; load refuses a
place that holds anything and finishes an interrupted load; secrets stay out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from fusecache.meta import open_meta
from fusecache.meta.redis import RedisMeta
from tests.fuse.helpers import CLI, Volume, format_volume, run_cli
from tests.fuse.test_cli import assert_clean_failure
from tests.servers import S3Server


def tree_digest(root: Path) -> dict[str, object]:
    """Everything a user sees of a tree: type, mode, size, content hash, link target, xattrs."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", oct(st.st_mode), sorted(os.listxattr(path)))
            else:
                xattrs = {x: os.getxattr(path, x) for x in sorted(os.listxattr(path))}
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", oct(st.st_mode), st.st_size, st.st_nlink, digest, xattrs)
    return out


def build_tree(root: Path) -> None:
    (root / "data" / "deep").mkdir(parents=True)
    (root / "data" / "deep" / "big").write_bytes(os.urandom(9 << 20))  # several blocks and a chunk boundary
    with open(root / "data" / "sparse", "wb") as f:
        f.seek(70 << 20)  # past the first 64 MiB chunk
        f.write(b"tail")
    with open(root / "data" / "overwritten", "wb") as f:  # several slices in one chunk
        f.write(os.urandom(1 << 20))
        f.seek(4096)
        f.write(b"x" * 10000)
    (root / "small").write_bytes(b"hello\n")
    os.setxattr(root / "small", "user.tag", b"\x00\xffbinary")
    os.link(root / "small", root / "hardlink")
    os.symlink("data/deep/big", root / "link")
    os.chmod(root / "data", 0o750)
    (root / "name \xe9\t\n").write_bytes(b"odd name")
    (root / "trashed").write_bytes(b"in the trash")
    os.unlink(root / "trashed")


def volume_on(url: str, vol: Volume) -> Volume:
    return Volume(url, vol.workdir / "restored", vol.storage, vol.bucket, vol.env)


def test_dump_load_round_trip_by_hash(meta_url: str, second_meta_url: str, tmp_path: Path,
                                      s3_server: S3Server, bucket_url: str) -> None:
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--capacity", "10G")
    restored = volume_on(second_meta_url, vol)
    try:
        m = vol.mount()
        build_tree(m.path)
        meta = open_meta(meta_url)
        assert isinstance(meta, RedisMeta)
        quota_dir = meta.lookup(1, b"data").ino
        meta.set_quota(quota_dir, 1 << 30, 100)
        meta.shutdown()
        before = tree_digest(m.path)
        trash_before = sorted(p.name for p in (m.path / ".trash").glob("*/*"))
        assert trash_before
        dump = tmp_path / "meta.json.gz"
        # Dumped while mounted: the volume is idle, so this is a snapshot.
        result = run_cli("dump", meta_url, str(dump))
        assert "dumped volume 'testvol'" in result.stderr
        assert oct(dump.stat().st_mode & 0o777) == "0o600"
        text = subprocess.run(["zcat", str(dump)], capture_output=True, check=True).stdout.decode()
        doc = json.loads(text)  # one valid JSON document
        assert doc["complete"] is True and doc["key_count"] == len(doc["keys"])
        assert doc["volume"]["secret_key"] == "" and s3_server.secret_key not in text
        assert not any(k["key"] in ("sessions", "sessinfo", "inuse") for k in doc["keys"])
        vol.cleanup()

        # Into another database: the same tree and bytes, quota and trash included.
        result = run_cli("load", second_meta_url, str(dump), env=vol.env)
        assert "loaded volume 'testvol'" in result.stderr
        r = restored.mount()
        assert tree_digest(r.path) == before
        assert sorted(p.name for p in (r.path / ".trash").glob("*/*")) == trash_before
        restored_meta = open_meta(second_meta_url)
        quota = restored_meta.get_quota(quota_dir)
        restored_meta.shutdown()
        assert quota is not None and (quota.max_bytes, quota.max_inodes) == (1 << 30, 100)
        status = json.loads(run_cli("status", second_meta_url, "--json").stdout)
        assert status["usage"]["capacity_bytes"] == 10 << 30
        # The restored volume works for writes as well.
        (r.path / "new").write_bytes(b"after the load")
        assert (r.path / "new").read_bytes() == b"after the load"
        restored.cleanup()
        fsck = run_cli("fsck", second_meta_url, env=vol.env)
        assert "clean" in fsck.stdout, fsck.stdout

        # --keep-secret-key keeps it (the file then grants bucket access).
        kept = json.loads(run_cli("dump", second_meta_url, "--keep-secret-key", "-q", env={}).stdout)
        assert kept["volume"]["secret_key"] == s3_server.secret_key
    finally:
        vol.cleanup()
        restored.cleanup()


def test_load_refuses_a_place_that_is_not_empty_and_resumes(meta_url: str, second_meta_url: str,
                                                             tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None)
    try:
        m = vol.mount()
        (m.path / "f").write_bytes(os.urandom(100_000))
        digest = hashlib.sha256((m.path / "f").read_bytes()).hexdigest()
        vol.cleanup()
        dump = tmp_path / "meta.json"
        run_cli("dump", meta_url, str(dump), "-q")
        client = redis.Redis.from_url(meta_url)
        before = {k: client.dump(k) for k in client.keys("*")}

        # The source itself holds a volume: refused, nothing touched.
        assert_clean_failure(run_cli("load", meta_url, str(dump), check=False), "already holds", "testvol")
        assert {k: client.dump(k) for k in client.keys("*")} == before
        client.close()
        # Keys but no volume under the prefix: refused too.
        other = redis.Redis.from_url(second_meta_url)
        other.set("{fc}stray", b"1")
        assert_clean_failure(run_cli("load", second_meta_url, str(dump), check=False), "not empty")
        assert other.keys("*") == [b"{fc}stray"]
        other.delete("{fc}stray")
        other.close()

        # Bad files: one clear line each, and nothing written.
        junk = tmp_path / "junk.json"
        junk.write_text('{"hello": 1}')
        assert_clean_failure(run_cli("load", second_meta_url, str(junk), check=False), "not a fusecache dump")
        assert_clean_failure(run_cli("load", second_meta_url, str(tmp_path / "missing"), check=False),
                             "cannot read")
        assert_clean_failure(run_cli("dump", meta_url, str(tmp_path / "no" / "dir.json"), check=False),
                             "cannot write")
        assert redis.Redis.from_url(second_meta_url).dbsize() == 0

        # A cut dump: refused after what it held, the volume cannot be mounted, and the
        # same load with the whole file finishes it.
        cut = tmp_path / "cut.json"
        cut.write_text(dump.read_text()[: len(dump.read_text()) * 2 // 3])
        assert_clean_failure(run_cli("load", second_meta_url, str(cut), check=False), "cut short")
        target = volume_on(second_meta_url, vol)
        (tmp_path / "nomount").mkdir()
        result = run_cli("mount", second_meta_url, str(tmp_path / "nomount"), check=False)
        assert_clean_failure(result, "not completely loaded")
        result = run_cli("load", second_meta_url, "-", check=False)  # stdin is empty here
        assert result.returncode != 0
        with open(dump) as src:
            result = subprocess.run([*CLI, "load", second_meta_url, "-"], stdin=src, capture_output=True,
                                    text=True, timeout=60)
        assert result.returncode == 0 and "finished" in result.stderr, result.stderr
        assert hashlib.sha256((target.mount().path / "f").read_bytes()).hexdigest() == digest
        target.cleanup()
    finally:
        vol.cleanup()


def test_dump_of_a_volume_being_written_is_a_snapshot_or_refused(meta_url: str, second_meta_url: str,
                                                                  tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--trash-days", "0")
    writer = None
    try:
        m = vol.mount()
        for i in range(600):
            (m.path / f"f{i}").write_bytes(b"%d" % i)
        # A client that changes attributes without pause: every attempt sees a change.
        writer = subprocess.Popen([sys.executable, "-c", (
            "import os,sys\n"
            "p=sys.argv[1]\n"
            "while True:\n"
            "    for mode in (0o600, 0o644): os.chmod(p, mode)\n"), str(m.path / "f0")])
        out = tmp_path / "live.json"
        result = run_cli("dump", meta_url, str(out), check=False)
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert "cannot make a consistent dump" in last and "Traceback" not in result.stderr
        assert "starting over" in result.stderr
        assert not out.exists() and not list(tmp_path.glob(".fusecache-dump-*"))
        writer.kill()
        writer.wait()
        writer = None
        # Once the writer stops, the mounted volume dumps, and the dump loads and checks clean.
        # A file unlinked while open is kept for its session; no session comes with a load,
        # so load frees it (fsck would call it an orphan otherwise).
        held = open(m.path / "f1", "rb")  # noqa: SIM115
        os.unlink(m.path / "f1")
        assert "dumping keys: 1000" in run_cli("dump", meta_url, str(out)).stderr  # progress
        held.close()
        assert "loading keys: 1000" in run_cli("load", second_meta_url, str(out)).stderr
        vol.cleanup()
        fsck = run_cli("fsck", second_meta_url).stdout
        assert "clean" in fsck and "601 inodes" in fsck, fsck  # 599 files, root, trash; f1 freed
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        vol.cleanup()
