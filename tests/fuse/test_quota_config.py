"""`fusecache quota` and `fusecache config`: directory quotas on a mounted path or a
META_URL, enforced on the mount; settings changed after format, checked, masked, and seen
by a live mount without a remount."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.fuse.helpers import Volume, format_volume, run_cli, wait_for
from tests.fuse.test_cli import assert_clean_failure


def test_quota_on_a_mounted_path_and_on_meta_url(file_volume: Volume, tmp_path: Path) -> None:
    m = file_volume.mount()
    url = file_volume.meta_url
    (m.path / "proj" / "sub").mkdir(parents=True)
    out = run_cli("quota", "set", str(m.path / "proj"), "--capacity", "1M", "--inodes", "10").stdout
    assert "/proj" in out and "1.0MiB" in out
    (m.path / "proj" / "sub" / "a").write_bytes(os.urandom(300_000))
    got = json.loads(run_cli("quota", "get", url, "--path", "/proj", "--json").stdout)
    assert got == {"path": "/proj", "max_bytes": 1 << 20, "used_bytes": 300_000,
                   "max_inodes": 10, "used_inodes": 2}  # sub and a
    # Enforced on the mount: past the byte limit the write fails with EDQUOT.
    with pytest.raises(OSError) as info, open(m.path / "proj" / "big", "wb") as f:
        f.write(os.urandom(2 << 20))
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.EDQUOT
    # Raising only the inode limit keeps the byte limit.
    run_cli("quota", "set", url, "--path", "/proj/", "--inodes", "20")
    got = json.loads(run_cli("quota", "get", str(m.path / "proj"), "--json").stdout)
    assert (got["max_bytes"], got["max_inodes"]) == (1 << 20, 20)
    run_cli("quota", "set", str(m.path / "proj" / "sub"), "--inodes", "5")
    listed = json.loads(run_cli("quota", "list", url, "--json").stdout)
    assert [q["path"] for q in listed] == ["/proj", "/proj/sub"]
    assert "/proj/sub" in run_cli("quota", "list", url).stdout

    # Bad input: one line each, nothing changed.
    (m.path / "file").write_bytes(b"x")
    for args, words in [
        (("get", url, "--path", "/nope"), ("no directory",)),
        (("set", url, "--path", "/file", "--inodes", "3"), ("not a directory",)),
        (("get", str(tmp_path)), ("not inside a fusecache mount",)),
        (("set", str(m.path / "proj"), "--capacity", "lots"), ("--capacity",)),
        (("set", str(m.path / "proj"), "--inodes", "-5"), ("--inodes",)),
        (("set", str(m.path / "proj")), ("--capacity",)),
        (("get", url), ("--path",)),
        (("delete", url, "--path", "/"), ("no quota",)),
        (("get", str(m.path / "proj"), "--capacity", "1G"), ("quota set",)),
    ]:
        assert_clean_failure(run_cli("quota", *args, check=False), *words)
    assert json.loads(run_cli("quota", "get", url, "--path", "/proj", "--json").stdout)["max_inodes"] == 20

    print(run_cli("quota", "delete", str(m.path / "proj")).stdout)
    assert_clean_failure(run_cli("quota", "get", url, "--path", "/proj", check=False), "no quota")
    (m.path / "proj" / "big").write_bytes(os.urandom(2 << 20))  # no limit any more


def test_config_is_checked_masked_and_reaches_a_live_mount(meta_url: str, tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None)
    try:
        m = vol.mount()
        (m.path / "f").write_bytes(os.urandom(3 << 20))
        shown = run_cli("config", meta_url).stdout
        assert "trash_days: 1" in shown and "capacity: unlimited" in shown

        # Below what is used: refused with the numbers, unless --force.
        assert_clean_failure(run_cli("config", meta_url, "--capacity", "1M", check=False), "below", "in use")
        for args, word in [(("--inodes", "-1"), "--inodes"), (("--trash-days", "-2"), "--trash-days"),
                           (("--garbage-delay", "soon"), "--garbage-delay"), (("--capacity", "x"), "--capacity"),
                           (("--credentials-from-env",), "ACCESS_KEY")]:
            assert_clean_failure(run_cli("config", meta_url, *args, check=False, env={"ACCESS_KEY": ""}), word)
        assert "capacity: unlimited" in run_cli("config", meta_url).stdout

        out = run_cli("config", meta_url, "--capacity", "100M", "--trash-days", "0").stdout
        assert "capacity: unlimited -> 100.0MiB" in out and "trash_days: 1 -> 0" in out
        # Capacity applies at once: statfs and writes on the live mount.
        st = os.statvfs(m.path)
        assert st.f_blocks * st.f_frsize == 100 << 20
        run_cli("config", meta_url, "--capacity", "4M", "--force")
        with pytest.raises(OSError) as info, open(m.path / "g", "wb") as f:
            f.write(os.urandom(2 << 20))
            f.flush()
            os.fsync(f.fileno())
        assert info.value.errno == errno.ENOSPC
        os.unlink(m.path / "g")

        # Trash days reach the mount with its next heartbeat: an unlink then skips the trash.
        attempts = iter(range(1000))

        def unlinked_skips_trash() -> bool:
            name = f"t{next(attempts)}"
            (m.path / name).write_bytes(b"t")
            os.unlink(m.path / name)
            return not any(p.name.endswith(f"-{name}") for p in (m.path / ".trash").glob("*/*"))

        wait_for(unlinked_skips_trash, timeout=25, what="trash days 0 on the live mount")

        # Secrets: stored from env, never printed.
        out = run_cli("config", meta_url, "--credentials-from-env",
                      env={"ACCESS_KEY": "AKIDEXAMPLE", "SECRET_KEY": "s3cr3t-value"})
        assert "s3cr3t-value" not in out.stdout + out.stderr and "****" in out.stdout
        assert "s3cr3t-value" not in run_cli("config", meta_url).stdout
        status = json.loads(run_cli("status", meta_url, "--json").stdout)
        assert status["setting"]["secret_key"] == "****"
    finally:
        vol.cleanup()
