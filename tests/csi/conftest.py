"""Fixtures: a formatted filesystem and the driver serving it as its default (like a
cluster with one shared volume), started fresh for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.csi.harness import NODE_ID, Driver, cleanup_mounts, format_fs, running_driver, stop_clients


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The test's directory; whatever a failing test left mounted in it is detached after."""
    yield tmp_path
    leftovers = cleanup_mounts(tmp_path)
    for state_dir in tmp_path.glob("**/state"):
        stop_clients(state_dir)
    assert not leftovers, f"mounts left behind: {leftovers}"


@pytest.fixture
def fs_meta_url(meta_url: str, workdir: Path) -> str:
    """The META_URL of a freshly formatted filesystem."""
    format_fs(meta_url, workdir)
    return meta_url


@pytest.fixture
def driver(fs_meta_url: str, workdir: Path) -> Iterator[Driver]:
    with running_driver(workdir / "driver", "--nodeid", NODE_ID, "--mode", "all",
                        "--meta-url", fs_meta_url, "--check-interval", "60") as running:
        yield running


@pytest.fixture
def plugins(workdir: Path) -> Iterator[tuple[Driver, Driver]]:
    """A controller plugin and a node plugin, without any default filesystem."""
    with running_driver(workdir / "controller", "--mode", "controller") as controller, \
            running_driver(workdir / "node", "--mode", "node", "--nodeid", NODE_ID, "--check-interval", "300") as node:
        yield controller, node
