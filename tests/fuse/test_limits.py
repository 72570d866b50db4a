"""Volume limits through a real mount: capacity and inode count, reported by df."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.fuse.helpers import format_volume

MiB = 1 << 20


def _empty_trash(mnt: Path) -> None:
    for hour in (mnt / ".trash").iterdir():
        for entry in hour.iterdir():
            entry.unlink()


def test_capacity_limit_gives_enospc_and_df_shows_it(meta_url: str, tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--capacity", "8M", "--block-size", "1M")
    try:
        m = vol.mount()
        st = os.statvfs(m.path)
        assert st.f_blocks * st.f_frsize == 8 * MiB
        (m.path / "fits").write_bytes(os.urandom(5 * MiB))
        with pytest.raises(OSError) as info, open(m.path / "too-big", "wb") as f:
            f.write(os.urandom(6 * MiB))
        assert info.value.errno == errno.ENOSPC
        # What was within the limit is intact, and space can be reclaimed and reused: a
        # deleted file waits in the trash (still using its space) until removed from there.
        assert len((m.path / "fits").read_bytes()) == 5 * MiB
        os.unlink(m.path / "fits")
        assert os.statvfs(m.path).f_bavail * st.f_frsize <= 3 * MiB
        _empty_trash(m.path)
        (m.path / "now-fits").write_bytes(os.urandom(6 * MiB))
        assert os.statvfs(m.path).f_bavail * st.f_frsize <= 2 * MiB
    finally:
        vol.cleanup()


def test_inode_limit_gives_enospc(meta_url: str, tmp_path: Path) -> None:
    vol = format_volume(meta_url, tmp_path, "file", None, None, "--inodes", "5")
    try:
        m = vol.mount()
        for i in range(5):
            (m.path / f"f{i}").write_bytes(b"")
        with pytest.raises(OSError) as info:
            (m.path / "one-too-many").write_bytes(b"")
        assert info.value.errno == errno.ENOSPC
        assert os.statvfs(m.path).f_ffree == 0
        os.unlink(m.path / "f0")
        assert os.statvfs(m.path).f_ffree == 0, "a trashed file keeps its inode"
        _empty_trash(m.path)
        (m.path / "again").mkdir()
    finally:
        vol.cleanup()
