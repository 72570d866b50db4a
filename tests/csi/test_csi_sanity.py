"""The real csi-sanity (kubernetes-csi/csi-test v5) against the driver.

The binary is found through $CSI_SANITY, on PATH, or at /tmp/csi-sanity/csi-sanity (build it
with `go build ./cmd/csi-sanity` in a csi-test checkout). Two runs: with the driver's
default filesystem (no secrets), and with every filesystem named by a secrets file, the way
a StorageClass with provisioner/node-stage/controller-expand secrets works. Both pass a
mutable-parameters file (`--csi.testvolumemutableparameters`), which the ModifyVolume specs
and CreateVolume's "volume attribute class" specs send as `mutable_parameters`.
"""

from __future__ import annotations

import os
import re
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


# A VolumeAttributesClass's parameters: an inode limit for the volume's quota.
MUTABLE_PARAMETERS = 'maxInodes: "100000"\n'


def run_sanity(driver: Driver, workdir: Path, *extra: str, least_passed: int) -> None:
    """Run csi-sanity; fail unless it passes, with at least `least_passed` specs run and
    passed (fewer means a feature stopped being advertised and its specs were skipped)."""
    assert SANITY is not None
    report = workdir / "junit.xml"
    mutable = workdir / "mutable-parameters.yaml"
    mutable.write_text(MUTABLE_PARAMETERS)
    result = subprocess.run(
        [SANITY, f"--csi.endpoint=unix://{driver.socket}", f"--csi.stagingdir={workdir / 'sanity-staging'}",
         f"--csi.mountdir={workdir / 'sanity-mount'}", "--csi.testvolumesize=1073741824",
         f"--csi.testvolumemutableparameters={mutable}", f"--ginkgo.junit-report={report}",
         "--ginkgo.no-color", *extra],
        capture_output=True, text=True, timeout=1200, cwd=workdir)
    summary = "\n".join(line for line in result.stdout.splitlines()
                        if "Ran " in line or "FAIL" in line or "Passed" in line)
    assert result.returncode == 0, f"{summary}\n{result.stdout[-8000:]}\n{driver.log()}"
    assert "Ran " in result.stdout and " 0 Failed" in result.stdout, summary
    passed = re.search(r"(\d+) Passed", result.stdout)
    assert passed is not None and int(passed.group(1)) >= least_passed, summary
    print(summary)


@pytest.mark.skipif(SANITY is None, reason="csi-sanity binary not found (set CSI_SANITY)")
def test_csi_sanity_with_default_filesystem(driver: Driver, workdir: Path) -> None:
    # 96 specs: 16 skipped (ControllerPublish and the lifecycle that needs it 10, group
    # snapshots 6), 1 pending (csi-test's own).
    run_sanity(driver, workdir, least_passed=79)


@pytest.mark.skipif(SANITY is None, reason="csi-sanity binary not found (set CSI_SANITY)")
def test_csi_sanity_with_secrets(fs_meta_url: str, workdir: Path) -> None:
    secrets = workdir / "secrets.yaml"
    lines = [f"{kind}:\n  metaurl: \"{fs_meta_url}\"\n" for kind in (
        "CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret",
        "NodeStageVolumeSecret", "ControllerExpandVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret",
        "ListSnapshotsSecret", "GetSnapshotSecret", "ControllerModifyVolumeSecret")]
    secrets.write_text("".join(lines))
    with running_driver(workdir / "driver", "--nodeid", NODE_ID, "--mode", "all") as driver:
        # Also skipped: ListVolumes and GetCapacity (4), offered only with a default filesystem.
        run_sanity(driver, workdir, f"--csi.secrets={secrets}", least_passed=75)
