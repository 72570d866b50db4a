"""The trash through a real mount: deleted and replaced files wait in /.trash, which only
root can see into; mv restores them; the files that stay look exactly as without trash."""

from __future__ import annotations

import calendar
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.fuse.helpers import Volume, format_volume, wait_for

MiB = 1 << 20


def _trashed(mnt: Path) -> dict[str, Path]:
    """The trashed entries by name. The janitor may remove an hour directory between the
    listing of /.trash and the listing of that hour: a vanished hour holds nothing."""
    found: dict[str, Path] = {}
    for hour in (mnt / ".trash").iterdir():
        try:
            found.update((p.name, p) for p in hour.iterdir())
        except FileNotFoundError:
            continue
    return found


def test_deleted_and_replaced_files_wait_in_the_trash(volume: Volume) -> None:
    m = volume.mount("-o", "allow_other").path
    data = os.urandom(2 * MiB)
    (m / "dir").mkdir()
    (m / "dir" / "keep.bin").write_bytes(data)
    (m / "config").write_bytes(b"old config")
    before_root = os.stat(m)
    assert sorted(os.listdir(m)) == ["config", "dir"]
    os.unlink(m / "dir" / "keep.bin")
    (m / "config.tmp").write_bytes(b"new config")
    os.rename(m / "config.tmp", m / "config")
    assert ".trash" not in os.listdir(m), "the trash is never listed"
    assert os.stat(m).st_nlink == before_root.st_nlink
    trashed = _trashed(m)
    hour = next(iter((m / ".trash").iterdir())).name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d\d", hour)
    assert abs(calendar.timegm(time.strptime(hour, "%Y-%m-%d-%H")) - time.time()) < 7200
    dir_ino = os.stat(m / "dir").st_ino
    names = sorted(trashed)
    assert len(names) == 2 and any(n.startswith(f"{dir_ino}-") and n.endswith("-keep.bin") for n in names)
    assert any(n.endswith("-config") for n in names)
    old = next(p for n, p in trashed.items() if n.endswith("-config"))
    assert old.read_bytes() == b"old config" and (m / "config").read_bytes() == b"new config"
    assert os.stat(old).st_nlink == 0, "a trashed file has no link in the tree"
    # Restore with mv.
    src = next(p for n, p in trashed.items() if n.endswith("-keep.bin"))
    subprocess.run(["mv", str(src), str(m / "dir" / "keep.bin")], check=True)
    assert hashlib.sha256((m / "dir" / "keep.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert os.stat(m / "dir" / "keep.bin").st_nlink == 1
    # Nothing but deletion puts files there.
    for attempt in (lambda: (m / ".trash" / hour / "new").write_bytes(b"x"),
                    lambda: os.rename(m / "config", m / ".trash" / hour / "config")):
        try:
            attempt()
            raise AssertionError("the trash accepted a file")
        except PermissionError:
            pass


def test_only_root_sees_into_the_trash(file_volume: Volume) -> None:
    volume = file_volume
    m = volume.mount("-o", "allow_other").path
    (m / "f").write_bytes(b"secret")
    os.chmod(m, 0o777)
    os.unlink(m / "f")
    code = ("import os, sys\nos.setgid(65534)\nos.setuid(65534)\n"
            "try:\n    os.listdir(sys.argv[1])\n    print('listed')\n"
            "except PermissionError:\n    print('denied')\n")
    result = subprocess.run([sys.executable, "-c", code, str(m / ".trash")], capture_output=True, text=True)
    assert result.stdout.strip() == "denied", result.stderr
    assert len(_trashed(m)) == 1


def test_without_trash_nothing_is_kept(meta_url: str, tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--trash-days", "0", "--garbage-delay", "1s")
    try:
        m = vol.mount().path
        (m / "f").write_bytes(os.urandom(MiB))
        os.unlink(m / "f")
        assert not any((m / ".trash").iterdir())
        wait_for(lambda: vol.object_keys("testvol/blocks/") == [], what="the objects to go")
    finally:
        vol.cleanup()


def test_the_janitor_empties_trash_older_than_trash_days(file_volume: Volume) -> None:
    volume = file_volume
    import redis

    m = volume.mount()
    (m.path / "old").write_bytes(os.urandom(MiB))
    (m.path / "new").write_bytes(b"recent")
    os.unlink(m.path / "old")
    m.umount()
    volume.mounts.clear()
    # Make the hour directory of "old" look two days old, then trash "new" this hour.
    r = redis.Redis.from_url(volume.meta_url)
    trash = f"{{fc}}d{1 << 52}"
    (hour, entry), = r.hgetall(trash).items()
    r.hdel(trash, hour)
    r.hset(trash, time.strftime("%Y-%m-%d-%H", time.gmtime(time.time() - 2 * 86400)).encode(), entry)
    r.close()
    m = volume.mount()
    os.unlink(m.path / "new")
    wait_for(lambda: [p.name.rsplit("-", 1)[1] for p in _trashed(m.path).values()] == ["new"], timeout=30,
             what="the janitor to empty the old hour")
    assert len(list((m.path / ".trash").iterdir())) == 1, "the emptied hour directory is gone too"
