"""deploy/ manifests: valid against the Kubernetes schemas, and consistent with the driver
(the arguments they pass are the ones it accepts, the example parameters the ones it knows)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from csi_driver import fsref, settings
from csi_driver.config import DEFAULT_DRIVER_NAME
from csi_driver.server import parse_args

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for p in manifests() for d in documents(p)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_existing_resources_and_renders() -> None:
    kustomization = documents(DEPLOY / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True,
                              timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["CSIDriver", "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding", "Deployment", "DaemonSet"])
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_csidriver() -> None:
    driver = by_kind("CSIDriver")
    assert driver["metadata"]["name"] == DEFAULT_DRIVER_NAME
    assert driver["spec"]["attachRequired"] is False


def _driver_args(workload: dict[str, Any]) -> list[str]:
    args = container(workload, "fusecache-csi")["args"]
    return [a.replace("$(NODE_NAME)", "node-1") for a in args]


def test_controller_runs_the_driver_with_provisioner_and_resizer() -> None:
    deployment = by_kind("Deployment", "fusecache-csi-controller")
    config, _ = parse_args(_driver_args(deployment))
    assert config.mode == "controller"
    names = {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert {"csi-provisioner", "csi-resizer", "liveness-probe"} <= names
    for sidecar in ("csi-provisioner", "csi-resizer"):
        assert "--leader-election" in container(deployment, sidecar)["args"]


def test_node_plugin_can_mount_for_kubelet() -> None:
    daemonset = by_kind("DaemonSet", "fusecache-csi-node")
    pod = daemonset["spec"]["template"]["spec"]
    config, args = parse_args(_driver_args(daemonset))
    assert config.mode == "node" and config.node_id == "node-1"
    plugin = container(daemonset, "fusecache-csi")
    assert plugin["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    assert mounts["kubelet-dir"]["mountPath"] == "/var/lib/kubelet"
    assert mounts["kubelet-dir"]["mountPropagation"] == "Bidirectional"
    assert mounts["fuse-device"]["mountPath"] == "/dev/fuse"
    # The state (records, client mountpoints) must be on the host, under the propagated tree.
    assert str(config.state_dir).startswith("/var/lib/kubelet/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    plugin_dir = volumes["plugin-dir"]["hostPath"]["path"]
    assert args.endpoint == "unix:///csi/csi.sock" and mounts["plugin-dir"]["mountPath"] == "/csi"
    registrar = container(daemonset, "node-driver-registrar")
    assert f"--kubelet-registration-path={plugin_dir}/csi.sock" in registrar["args"]
    assert volumes["registration-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    assert plugin_dir == f"/var/lib/kubelet/plugins/{DEFAULT_DRIVER_NAME}"
    probe_port = container(daemonset, "liveness-probe")["args"]
    assert "--health-port=9809" in probe_port
    assert plugin["livenessProbe"]["httpGet"]["port"] == "healthz"


def test_examples_use_settings_the_driver_accepts() -> None:
    storage_class = by_kind("StorageClass")
    assert storage_class["provisioner"] == DEFAULT_DRIVER_NAME
    assert storage_class["allowVolumeExpansion"] is True
    params = storage_class["parameters"]
    for kind in ("provisioner", "node-stage", "controller-expand"):
        assert params[f"csi.storage.k8s.io/{kind}-secret-name"] == "fusecache-shared"
    settings.check_parameters(params)  # raises on unknown keys or bad values
    assert settings.parse(params).cache  # the example shows the tiered cache
    secret = by_kind("Secret", "fusecache-shared")
    fs = fsref.resolve(secret["stringData"])
    assert fs.password == "change-me" and fs.format is not None and fs.format.storage == "s3"
    pv = by_kind("PersistentVolume")
    assert pv["spec"]["csi"]["driver"] == DEFAULT_DRIVER_NAME
    attributes = pv["spec"]["csi"]["volumeAttributes"]
    settings.parse(attributes)
    assert settings.subdir_of(attributes) == "/datasets"
    pvc = by_kind("PersistentVolumeClaim", "datasets")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    pod = by_kind("Pod")
    [mount] = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount["mountPropagation"] == "HostToContainer"


def test_dockerfile_installs_the_package_and_runs_the_driver() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {word for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line
              for word in line.split()[1:-1]}
    assert copied == {"pyproject.toml", "README.md", "fusecache", "csi_driver", "protos"}
    assert all((REPO / source).exists() for source in copied)
    assert "fuse3" in dockerfile and "-slim" in dockerfile
    assert dockerfile.rstrip().endswith('ENTRYPOINT ["fusecache-csi"]')
    assert 'fusecache-csi = "csi_driver.server:main"' in (REPO / "pyproject.toml").read_text()
    images = {c["image"] for kind in ("Deployment", "DaemonSet") for c in
              by_kind(kind)["spec"]["template"]["spec"]["containers"] if "fusecache" in c["image"]}
    assert images == {"fusecache/fusecache-csi:0.1.0"}


# -- the README's Kubernetes section ----------------------------------------------------------
def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def table_keys(section: str, header: str) -> set[str]:
    """Backticked names in the first column of the table whose header row starts with `header`."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    keys: set[str] = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        keys.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def test_readme_kubernetes_examples_are_valid_and_use_known_settings() -> None:
    section = readme_section()
    docs = [d for block in re.findall(r"```yaml\n(.*?)```", section, re.S) for d in yaml.safe_load_all(block) if d]
    assert sorted(d["kind"] for d in docs) == ["PersistentVolume", "PersistentVolumeClaim", "PersistentVolumeClaim",
                                               "Pod", "StorageClass"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    storage_class = found[("StorageClass", "fusecache")]
    assert storage_class["provisioner"] == DEFAULT_DRIVER_NAME
    settings.check_parameters(storage_class["parameters"])
    assert settings.parse(storage_class["parameters"]).writeback
    secret = by_kind("Secret", "fusecache-shared")["metadata"]
    for kind in ("provisioner", "node-stage", "controller-expand"):
        assert storage_class["parameters"][f"csi.storage.k8s.io/{kind}-secret-name"] == secret["name"]
        assert storage_class["parameters"][f"csi.storage.k8s.io/{kind}-secret-namespace"] == secret["namespace"]
    assert found[("PersistentVolumeClaim", "shared-data")]["spec"]["storageClassName"] == "fusecache"
    pv = found[("PersistentVolume", "datasets")]["spec"]["csi"]
    assert pv["driver"] == DEFAULT_DRIVER_NAME and pv["nodeStageSecretRef"]["name"] == secret["name"]
    settings.parse(pv["volumeAttributes"])
    assert settings.subdir_of(pv["volumeAttributes"]) == "/datasets"
    assert found[("PersistentVolumeClaim", "datasets")]["spec"]["volumeName"] == "datasets"


def test_readme_tables_list_exactly_the_keys_the_driver_knows() -> None:
    section = readme_section()
    assert table_keys(section, "key | `fusecache mount` flag") == set(settings.MOUNT_KEYS) | {settings.SUBDIR}
    assert table_keys(section, "key | meaning") == {
        fsref.SECRET_META_URL, fsref.SECRET_META_PASSWORD, fsref.SECRET_ACCESS_KEY, fsref.SECRET_SECRET_KEY,
        *fsref.FORMAT_KEYS}
    # Each flag the table names is the one the driver passes.
    every = settings.parse({"cache": "mem:1GiB;ssd:/c:1GiB", "cacheLow": "0.5", "cacheHigh": "0.9",
                            "cacheFreeRatio": "0.1", "readahead": "1", "writeback": "true", "attrTimeout": "1",
                            "entryTimeout": "1", "coherentTimeout": "30",
                            "fuseOptions": "max_read=131072"}).mount_args()
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| key | `fusecache mount` flag |"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        for flag in re.findall(r"`(--?[a-z-]+)`", line.split("|")[2]):
            assert flag in every, flag
