"""The test-server helpers clean up after a server that fails to start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.servers import _start, free_port


def test_a_server_that_exits_at_once_leaves_no_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "server"
    workdir.mkdir()
    with pytest.raises(RuntimeError, match="exited early"):
        _start([sys.executable, "-c", "raise SystemExit(3)"], free_port(), workdir)
    assert not workdir.exists()


def test_a_given_data_dir_is_kept(tmp_path: Path) -> None:
    """A restart on an existing data dir (start_s3(port, datadir)) must not lose it."""
    with pytest.raises(RuntimeError):
        _start([sys.executable, "-c", "raise SystemExit(3)"], free_port(), tmp_path, owns_workdir=False)
    assert tmp_path.exists()
