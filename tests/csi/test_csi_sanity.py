"""The real csi-sanity (kubernetes-csi/csi-test v5) against the driver.

The binary is found through $CSI_SANITY, on PATH, or at /tmp/csi-sanity/csi-sanity (build it
with `go build ./cmd/csi-sanity` in a csi-test checkout). Two runs: with the driver's
default filesystem (no secrets), and with every filesystem named by a secrets file, the way
a StorageClass with provisioner/node-stage/controller-expand secrets works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.csi.harness import NODE_ID, Driver, running_driver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def _sanity_binary() -> str | None:
    for candidate in (os.environ.get("CSI_SANITY", ""), shutil.which("csi-sanity") or "",
                      "/tmp/csi-sanity/csi-sanity"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


SANITY = _sanity_binary()


def run_sanity(driver: Driver, workdir: Path, *extra: str) -> None:
    assert SANITY is not None
    report = workdir / "junit.xml"
    result = subprocess.run(
        [SANITY, f"--csi.endpoint=unix://{driver.socket}", f"--csi.stagingdir={workdir / 'sanity-staging'}",
         f"--csi.mountdir={workdir / 'sanity-mount'}", "--csi.testvolumesize=1073741824",
         f"--ginkgo.junit-report={report}", "--ginkgo.no-color", *extra],
        capture_output=True, text=True, timeout=1200, cwd=workdir)
    summary = "\n".join(line for line in result.stdout.splitlines()
                        if "Ran " in line or "FAIL" in line or "Passed" in line)
    assert result.returncode == 0, f"{summary}\n{result.stdout[-8000:]}\n{driver.log()}"
    assert "Ran " in result.stdout and " 0 Failed" in result.stdout, summary
    print(summary)


@pytest.mark.skipif(SANITY is None, reason="csi-sanity binary not found (set CSI_SANITY)")
def test_csi_sanity_with_default_filesystem(driver: Driver, workdir: Path) -> None:
    run_sanity(driver, workdir)


@pytest.mark.skipif(SANITY is None, reason="csi-sanity binary not found (set CSI_SANITY)")
def test_csi_sanity_with_secrets(fs_meta_url: str, workdir: Path) -> None:
    secrets = workdir / "secrets.yaml"
    lines = [f"{kind}:\n  metaurl: \"{fs_meta_url}\"\n" for kind in (
        "CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret",
        "NodeStageVolumeSecret", "ControllerExpandVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret",
        "ListSnapshotsSecret", "GetSnapshotSecret")]
    secrets.write_text("".join(lines))
    with running_driver(workdir / "driver", "--nodeid", NODE_ID, "--mode", "all") as driver:
        run_sanity(driver, workdir, f"--csi.secrets={secrets}")
