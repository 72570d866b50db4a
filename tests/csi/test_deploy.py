"""deploy/ manifests: valid against the Kubernetes schemas, and consistent with the driver
(the arguments they pass are the ones it accepts, the example parameters the ones it knows).
The snapshot CRDs' kinds (snapshot.storage.k8s.io), which kubernetes-validate has no schemas
for, are checked structurally against the v1 API instead."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from csi_driver import fsref, imports, mutable, settings
from csi_driver.config import DEFAULT_DRIVER_NAME
from csi_driver.server import parse_args

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> list[Path]:
    """The driver (base/) and the examples; overlays are checked as rendered."""
    return [p for p in all_manifests() if "overlays" not in p.parts]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for p in manifests() for d in documents(p)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


# -- the snapshot CRDs' kinds: not built into Kubernetes, so not in kubernetes-validate ------
SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _check_fields(obj: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    assert isinstance(obj, dict), where
    assert set(obj) <= allowed, f"{where}: unknown fields {set(obj) - allowed}"
    assert required <= set(obj), f"{where}: missing {required - set(obj)}"


def _check_strings(mapping: dict[str, Any], where: str) -> None:
    assert isinstance(mapping, dict), where
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()), where


def check_snapshot_object(doc: dict[str, Any]) -> None:
    """A VolumeSnapshotClass or VolumeSnapshot of snapshot.storage.k8s.io/v1, as its CRD
    defines it: its fields only, the required ones present, of the right types (metadata:
    ObjectMeta's schema, and only the name, namespace, labels and annotations a manifest sets)."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # else validate() would do
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["apiVersion"] == SNAPSHOT_API, doc["apiVersion"]
    kind = doc["kind"]
    meta = doc["metadata"]
    # ObjectMeta's own schema (through a kind that has nothing but metadata), then the name.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}, K8S_VERSION,
                                 strict=True)
    assert len(meta["name"]) <= 253 and _DNS_SUBDOMAIN.fullmatch(meta["name"]), meta["name"]
    if kind == "VolumeSnapshotClass":  # cluster-scoped
        _check_fields(meta, {"name", "labels", "annotations"}, {"name"}, f"{kind} metadata")
        _check_fields(doc, {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"},
                      {"apiVersion", "kind", "metadata", "driver", "deletionPolicy"}, kind)
        assert isinstance(doc["driver"], str) and len(doc["driver"]) <= 63, doc["driver"]
        assert doc["deletionPolicy"] in ("Delete", "Retain"), doc["deletionPolicy"]
        _check_strings(doc.get("parameters", {}), f"{kind} parameters")
    elif kind == "VolumeSnapshot":  # namespaced
        _check_fields(meta, {"name", "namespace", "labels", "annotations"}, {"name", "namespace"},
                      f"{kind} metadata")
        assert _DNS_LABEL.fullmatch(meta["namespace"]), meta["namespace"]
        _check_fields(doc, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"},
                      kind)
        spec = doc["spec"]
        _check_fields(spec, {"source", "volumeSnapshotClassName"}, {"source"}, f"{kind} spec")
        source = spec["source"]
        # exactly one: a PVC to snapshot, or an existing (pre-provisioned) VolumeSnapshotContent
        assert len(source) == 1, source
        _check_fields(source, {"persistentVolumeClaimName", "volumeSnapshotContentName"}, set(), f"{kind} source")
        _check_strings({**source, **{k: v for k, v in spec.items() if k != "source"}}, f"{kind} spec")
    else:
        raise AssertionError(f"no structural check for {SNAPSHOT_API} {kind}")


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].split("/")[0] == SNAPSHOT_API.split("/")[0]:
        check_snapshot_object(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", all_manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        validate(doc)


def test_structural_snapshot_check_rejects_what_the_crds_reject() -> None:
    good_class = {"apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshotClass", "metadata": {"name": "c"},
                  "driver": DEFAULT_DRIVER_NAME, "deletionPolicy": "Delete"}
    good_snapshot = {"apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshot",
                     "metadata": {"name": "s", "namespace": "default"},
                     "spec": {"volumeSnapshotClassName": "c", "source": {"persistentVolumeClaimName": "p"}}}
    check_snapshot_object(good_class)
    check_snapshot_object(good_snapshot)
    bad = [
        {**good_class, "deletionPolicy": "delete"},
        {**good_class, "spec": {"driver": "x"}},
        {**good_class, "metadata": {"name": "c", "namespace": "default"}},
        {k: v for k, v in good_class.items() if k != "driver"},
        {**good_class, "parameters": {"a": 1}},
        {**good_class, "metadata": {"name": "Not_A_Name"}},
        {**good_snapshot, "metadata": {"name": "s"}},
        {**good_snapshot, "spec": {"source": {}}},
        {**good_snapshot, "spec": {"source": {"persistentVolumeClaimName": "p", "volumeSnapshotContentName": "c"}}},
        {**good_snapshot, "spec": {"source": {"pvc": "p"}}},
        {**good_snapshot, "spec": {"source": {"persistentVolumeClaimName": "p"}, "class": "c"}},
        {**good_snapshot, "apiVersion": "snapshot.storage.k8s.io/v1beta1"},
    ]
    for doc in bad:
        with pytest.raises((AssertionError, kubernetes_validate.ValidationError)):
            check_snapshot_object(doc)


# -- kustomize: a pure-Python subset (resources, images, JSON 6902 patches), checked against
# `kubectl kustomize` where kubectl is installed -------------------------------------------
def _json_pointer(doc: Any, path: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last = parts[-1]
    return doc, (int(last) if isinstance(doc, list) else last)


def _apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        parent, key = _json_pointer(doc, op["path"])
        assert op["op"] in ("replace", "add"), op
        if op["op"] == "replace":  # needs an existing target
            assert key in parent if isinstance(parent, dict) else 0 <= int(key) < len(parent), op
        if op["op"] == "add" and isinstance(parent, list):
            parent.insert(len(parent) if key == "-" else key, op["value"])
        else:
            parent[key] = op["value"]


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = documents(directory / "kustomization.yaml")[0]
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "patches"}, kustomization
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        docs += render(path) if path.is_dir() else documents(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(matched) == 1, target
        _apply_patch(matched[0], yaml.safe_load(patch["patch"]))
    for image in kustomization.get("images", []):
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


KUSTOMIZATIONS = ["", "overlays/demo", "overlays/demo-snapshots", "overlays/kubelet-dir"]


@pytest.mark.parametrize("where", KUSTOMIZATIONS, ids=lambda w: w or "deploy")
def test_kustomization_renders_valid_kubernetes(where: str) -> None:
    directory = DEPLOY / where
    docs = render(directory)
    assert len({_key(d) for d in docs}) == len(docs), "duplicate objects"
    for doc in docs:
        validate(doc)
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # the subset above renders what kustomize renders
        rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                                  check=True, timeout=60).stdout
        real = sorted((d for d in yaml.safe_load_all(rendered) if d), key=_key)
        assert real == sorted(docs, key=_key)


def test_driver_kustomization_has_the_driver_objects() -> None:
    kinds = sorted(d["kind"] for d in render(DEPLOY))
    assert kinds == sorted(["CSIDriver", "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding", "Role", "RoleBinding", "Deployment", "DaemonSet",
                            "PodDisruptionBudget"])


def _driver_images(docs: list[dict[str, Any]]) -> list[str]:
    return [c["image"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")
            for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "fusecache-csi"]


def test_image_is_set_in_one_place(tmp_path: Path) -> None:
    [image] = documents(DEPLOY / "base" / "kustomization.yaml")[0]["images"]
    assert image["name"] == "fusecache/fusecache-csi" and image["newName"] and image["newTag"]
    for where in KUSTOMIZATIONS:
        assert _driver_images(render(DEPLOY / where)) == [f"{image['newName']}:{image['newTag']}"] * 2
    # Editing newName/newTag there moves both plugins, in every overlay.
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    base = documents(copy / "base" / "kustomization.yaml")[0]
    base["images"] = [{"name": "fusecache/fusecache-csi", "newName": "reg.example/fc", "newTag": "t1"}]
    (copy / "base" / "kustomization.yaml").write_text(yaml.safe_dump(base))
    for where in KUSTOMIZATIONS:
        assert _driver_images(render(copy / where)) == ["reg.example/fc:t1"] * 2


def test_sidecars_are_current() -> None:
    minimum = {"csi-provisioner": (5, 3), "csi-resizer": (1, 14), "csi-snapshotter": (8, 6),
               "csi-node-driver-registrar": (2, 18), "livenessprobe": (2, 20)}
    seen = set()
    for doc in render(DEPLOY):
        if doc["kind"] in ("Deployment", "DaemonSet"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] != "fusecache-csi":
                    repo, tag = c["image"].rsplit(":", 1)
                    assert repo.startswith("registry.k8s.io/sig-storage/"), repo
                    name = repo.rsplit("/", 1)[1]
                    version = tuple(int(x) for x in tag.lstrip("v").split(".")[:2])
                    assert version >= minimum[name], c["image"]
                    seen.add(name)
                    # The README names each sidecar's version.
                    readme_name = name.removeprefix("csi-") if name == "csi-node-driver-registrar" else name
                    assert f"{readme_name} {tag}" in readme_section(), c["image"]
    assert seen == set(minimum)


def test_demo_overlay_wires_redis_minio_secret_and_storage_class() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(DEPLOY / "overlays" / "demo")}
    redis = docs[("Deployment", "redis")]["spec"]
    assert redis["replicas"] == 1
    args = redis["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "always"
    assert flags["--maxmemory-policy"] == "noeviction"
    for name in ("redis", "minio"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        [volume] = pod["volumes"]
        assert (("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])) in docs
        service = docs[("Service", name)]["spec"]
        assert service["selector"].items() <= docs[("Deployment", name)]["spec"]["template"]["metadata"][
            "labels"].items()
    secret = docs[("Secret", "fusecache-demo")]
    assert secret["metadata"]["namespace"] == "kube-system"  # the only namespace the controller reads
    fs = fsref.resolve(secret["stringData"])
    assert fs.format is not None and fs.format.storage == "s3"
    backends = docs[("Secret", "fusecache-demo-backends")]["stringData"]
    assert secret["stringData"]["metapassword"] == backends["redis-password"]
    assert secret["stringData"]["access-key"] == backends["minio-root-user"]
    assert secret["stringData"]["secret-key"] == backends["minio-root-password"]
    assert all(v.startswith("demo-only-") for v in backends.values())
    assert "redis.fusecache-demo.svc" in secret["stringData"]["metaurl"]
    assert "minio.fusecache-demo.svc" in secret["stringData"]["bucket"]
    bucket = secret["stringData"]["bucket"].rsplit("/", 1)[1]
    job = docs[("Job", "minio-create-bucket")]["spec"]["template"]["spec"]["containers"][0]
    assert f"mc mb --ignore-existing demo/{bucket}" in job["args"][0]
    storage_class = docs[("StorageClass", "fusecache-demo")]
    assert storage_class["provisioner"] == DEFAULT_DRIVER_NAME
    params = storage_class["parameters"]
    settings.check_parameters(params)
    for kind in ("provisioner", "node-stage", "controller-expand"):
        assert params[f"csi.storage.k8s.io/{kind}-secret-name"] == "fusecache-demo"
        assert params[f"csi.storage.k8s.io/{kind}-secret-namespace"] == "kube-system"
    assert "DEMO ONLY" in (DEPLOY / "overlays" / "demo" / "secrets.yaml").read_text()


def _rules(kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, r) for d in render(DEPLOY) if d["kind"] == kind for r in d["rules"]]


def test_rbac_reads_secrets_only_in_the_driver_namespace() -> None:
    for _, rule in _rules("ClusterRole"):
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"], rule
        assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"], rule
        assert "nonResourceURLs" not in rule, rule
    secret_rules = [(d, r) for d, r in _rules("Role") if "secrets" in r["resources"]]
    assert [(d["metadata"]["namespace"], r["verbs"]) for d, r in secret_rules] == [("kube-system", ["get"])]
    # Nothing grants Secrets cluster-wide: the Role that has them is bound by a RoleBinding in its
    # own namespace only, and no ClusterRoleBinding points at a Role or at a role with Secrets.
    docs = render(DEPLOY)
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"])]
        grants_secrets = any("secrets" in r["resources"] for r in role["rules"])
        if binding["kind"] == "ClusterRoleBinding":
            assert ref["kind"] == "ClusterRole" and not grants_secrets, binding["metadata"]["name"]
        elif grants_secrets:
            assert ref["kind"] == "Role"
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == "kube-system"
    # Every Secret a StorageClass or VolumeSnapshotClass of ours names is in that namespace.
    seen = set()
    for doc in (*render(DEPLOY / "overlays" / "demo-snapshots"), *[d for p in manifests() for d in documents(p)]):
        if doc["kind"] in ("StorageClass", "VolumeSnapshotClass"):
            seen.add(doc["kind"])
            for key, value in doc["parameters"].items():
                if key.endswith("-secret-namespace"):
                    assert value == "kube-system", key
    assert seen == {"StorageClass", "VolumeSnapshotClass"}


def test_rbac_for_snapshots_is_least_privilege() -> None:
    """csi-provisioner reads VolumeSnapshots and their contents (restoring a PVC); csi-snapshotter
    reads classes and updates contents and their status. snapshot-controller, not ours, creates
    and deletes them; group snapshots are off (no --feature-gates)."""
    granted: dict[str, set[str]] = {}
    for _, rule in (*_rules("ClusterRole"), *_rules("Role")):
        assert not any("snapshot" in group and group != "snapshot.storage.k8s.io" for group in rule["apiGroups"])
        if "snapshot.storage.k8s.io" in rule["apiGroups"]:
            assert rule["apiGroups"] == ["snapshot.storage.k8s.io"], rule
            for resource in rule["resources"]:
                granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == {
        "volumesnapshots": {"get", "list"},
        "volumesnapshotclasses": {"get", "list", "watch"},
        "volumesnapshotcontents": {"get", "list", "watch", "update", "patch"},
        "volumesnapshotcontents/status": {"update", "patch"},
    }
    snapshotter = container(by_kind("Deployment", "fusecache-csi-controller"), "csi-snapshotter")
    assert not any(a.startswith("--feature-gates") for a in snapshotter["args"])
    # Its events and its leader-election lease come from the rules the other sidecars use.
    [(_, events)] = [(d, r) for d, r in _rules("ClusterRole") if "events" in r["resources"]]
    assert {"create", "patch"} <= set(events["verbs"])
    [(lease_role, leases)] = [(d, r) for d, r in _rules("Role") if "leases" in r["resources"]]
    assert {"get", "create", "update"} <= set(leases["verbs"])
    assert f"--leader-election-namespace={lease_role['metadata']['namespace']}" in snapshotter["args"]


def test_workloads_run_on_linux_and_controller_has_a_pdb() -> None:
    docs = render(DEPLOY)
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            assert doc["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    [controller] = [d for d in docs if d["kind"] == "Deployment"]
    assert pdb["metadata"]["namespace"] == controller["metadata"]["namespace"]
    labels = controller["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < controller["spec"]["replicas"]


def test_node_plugin_memory_covers_the_default_clients() -> None:
    """node.yaml: limit = 256Mi + clients x (memory budget + 128Mi), for 2 clients with the
    default budget; request for 1 client. The MEM tier is inside the budget."""
    import argparse

    from fusecache.cli.mount import DEFAULT_CACHE, add_parser
    from fusecache.units import parse_size
    from fusecache.vfs.memory import MEM_TIER_SHARE

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    budget = parse_size(parser.parse_args(["mount", "redis://x", "/mnt"]).memory_budget)
    assert parse_size(DEFAULT_CACHE.split(":", 1)[1]) <= MEM_TIER_SHARE * budget
    for name, params in (("examples", by_kind("StorageClass", "fusecache")["parameters"]),
                         ("demo", documents(DEPLOY / "overlays/demo/storageclass.yaml")[0]["parameters"])):
        mem = sum(parse_size(t.split(":", 1)[1]) for t in settings.parse(params).cache if t.startswith("mem:"))
        assert mem <= MEM_TIER_SHARE * budget, name  # a MEM tier the default budget accepts
    assert "--memory-budget" not in settings.parse({"cache": "mem:1GiB"}).mount_args()
    resources = container(by_kind("DaemonSet"), "fusecache-csi")["resources"]
    mi = 1 << 20
    per_client = budget + 128 * mi
    assert parse_size(resources["limits"]["memory"]) >= 256 * mi + 2 * per_client
    assert parse_size(resources["requests"]["memory"]) >= 256 * mi + per_client
    comment = (DEPLOY / "base" / "node.yaml").read_text()
    assert "256Mi + clients x (1024Mi + 128Mi)" in comment and "256Mi + clients" in readme_section()


def _kubelet_paths(daemonset: dict[str, Any]) -> list[str]:
    pod = daemonset["spec"]["template"]["spec"]
    paths = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    paths += [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
              if m["name"] == "kubelet-dir"]
    paths += [a.split("=", 1)[1] for c in pod["containers"] for a in c.get("args", [])
              if a.startswith(("--state-dir=", "--kubelet-registration-path="))]
    return paths


@pytest.mark.parametrize(("where", "kubelet_dir"), [("", "/var/lib/kubelet"),
                                                    ("overlays/kubelet-dir", "/var/lib/k0s/kubelet")])
def test_every_kubelet_path_follows_one_kubelet_dir(where: str, kubelet_dir: str) -> None:
    [daemonset] = [d for d in render(DEPLOY / where) if d["kind"] == "DaemonSet"]
    paths = [p for p in _kubelet_paths(daemonset) if p not in ("/dev/fuse", "/var/cache/fusecache")]
    assert len(paths) == 6
    assert all(p == kubelet_dir or p.startswith(kubelet_dir + "/") for p in paths), paths
    other = "/var/lib/kubelet" if kubelet_dir != "/var/lib/kubelet" else "/var/lib/k0s"
    assert other not in yaml.safe_dump(daemonset)


def test_csidriver() -> None:
    driver = by_kind("CSIDriver")
    assert driver["metadata"]["name"] == DEFAULT_DRIVER_NAME
    assert driver["spec"]["attachRequired"] is False
    # Deliberate (see the comment in csidriver.yaml): no recursive chown by kubelet; volume
    # roots are world-writable instead.
    assert driver["spec"]["fsGroupPolicy"] == "None"
    from csi_driver.volumes import DIR_MODE
    assert DIR_MODE & 0o777 == 0o777
    assert "fsGroupPolicy" in readme_section()


def _driver_args(workload: dict[str, Any]) -> list[str]:
    args = container(workload, "fusecache-csi")["args"]
    return [a.replace("$(NODE_NAME)", "node-1") for a in args]


CONTROLLER_SIDECARS = ("csi-provisioner", "csi-resizer", "csi-snapshotter")


def test_controller_runs_the_driver_with_provisioner_resizer_and_snapshotter() -> None:
    deployment = by_kind("Deployment", "fusecache-csi-controller")
    config, _ = parse_args(_driver_args(deployment))
    assert config.mode == "controller"
    names = {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert {*CONTROLLER_SIDECARS, "liveness-probe"} <= names
    namespace = deployment["metadata"]["namespace"]
    for sidecar in CONTROLLER_SIDECARS:
        args = container(deployment, sidecar)["args"]
        assert "--leader-election" in args
        assert f"--leader-election-namespace={namespace}" in args
    assert container(deployment, "csi-snapshotter")["image"].startswith(
        "registry.k8s.io/sig-storage/csi-snapshotter:v8.")


def test_controller_sidecars_share_the_driver_socket() -> None:
    deployment = by_kind("Deployment", "fusecache-csi-controller")
    pod = deployment["spec"]["template"]["spec"]
    _, args = parse_args(_driver_args(deployment))
    assert args.endpoint.startswith("unix://")
    socket = Path(args.endpoint.removeprefix("unix://"))
    volumes = {v["name"]: v for v in pod["volumes"]}

    def socket_volume(c: dict[str, Any]) -> str:
        [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == str(socket.parent)]
        return mount["name"]

    driver_volume = socket_volume(container(deployment, "fusecache-csi"))
    assert "emptyDir" in volumes[driver_volume]  # shared inside the pod only
    for sidecar in (*CONTROLLER_SIDECARS, "liveness-probe"):
        c = container(deployment, sidecar)
        assert f"--csi-address={socket}" in c["args"], sidecar
        assert socket_volume(c) == driver_volume, sidecar


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
    storage_class = by_kind("StorageClass", "fusecache")
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
    pv = by_kind("PersistentVolume", "datasets")
    assert pv["spec"]["csi"]["driver"] == DEFAULT_DRIVER_NAME
    attributes = pv["spec"]["csi"]["volumeAttributes"]
    settings.parse(attributes)
    assert settings.subdir_of(attributes) == "/datasets"
    pvc = by_kind("PersistentVolumeClaim", "datasets")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    pod = by_kind("Pod", "writer")
    [mount] = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount["mountPropagation"] == "HostToContainer"


def _size(pvc: dict[str, Any]) -> int:
    from fusecache.units import parse_size

    return parse_size(pvc["spec"]["resources"]["requests"]["storage"])


def check_snapshot_class(snapshot_class: dict[str, Any], storage_class: dict[str, Any]) -> None:
    """Snapshots of the StorageClass's volumes: this driver, and the StorageClass's Secret."""
    assert snapshot_class["driver"] == DEFAULT_DRIVER_NAME == storage_class["provisioner"]
    assert snapshot_class["driver"] == by_kind("CSIDriver")["metadata"]["name"]
    assert snapshot_class["deletionPolicy"] == "Delete"
    params, sc_params = snapshot_class["parameters"], storage_class["parameters"]
    for kind in ("snapshotter", "snapshotter-list"):
        for part in ("name", "namespace"):
            assert params[f"csi.storage.k8s.io/{kind}-secret-{part}"] == \
                sc_params[f"csi.storage.k8s.io/provisioner-secret-{part}"], (kind, part)
    # Only Kubernetes' own keys, which the sidecar strips: the driver gets no parameters.
    assert all(key.startswith("csi.storage.k8s.io/") for key in params), params


def test_volume_snapshot_classes_match_the_driver_and_the_storage_classes() -> None:
    check_snapshot_class(by_kind("VolumeSnapshotClass"), by_kind("StorageClass", "fusecache"))
    demo = {(d["kind"], d["metadata"]["name"]): d for d in render(DEPLOY / "overlays" / "demo-snapshots")}
    check_snapshot_class(demo[("VolumeSnapshotClass", "fusecache-demo")], demo[("StorageClass", "fusecache-demo")])
    # The demo's class needs the snapshot CRDs, so the plain demo does not carry it.
    plain = {_key(d) for d in render(DEPLOY / "overlays" / "demo")}
    assert {_key(d) for d in demo.values()} - plain == {("VolumeSnapshotClass", "", "fusecache-demo")}


def check_snapshot_restore_and_clone(objects: list[dict[str, Any]], snapshot_class: dict[str, Any],
                                     storage_classes: list[dict[str, Any]]) -> None:
    """A VolumeSnapshot of a PVC, a PVC restored from it and a PVC cloned from the PVC."""
    pvcs = {d["metadata"]["name"]: d for d in objects if d["kind"] == "PersistentVolumeClaim"}
    [snapshot] = [d for d in objects if d["kind"] == "VolumeSnapshot"]
    classes = {d["metadata"]["name"]: d for d in storage_classes}
    namespace = snapshot["metadata"]["namespace"]
    assert snapshot["spec"]["volumeSnapshotClassName"] == snapshot_class["metadata"]["name"]
    source = pvcs[snapshot["spec"]["source"]["persistentVolumeClaimName"]]
    assert source["metadata"]["namespace"] == namespace
    source_class = classes[source["spec"]["storageClassName"]]
    assert source_class["provisioner"] == snapshot_class["driver"]
    restored = [p for p in pvcs.values() if p["spec"].get("dataSource", {}).get("kind") == "VolumeSnapshot"]
    cloned = [p for p in pvcs.values() if p["spec"].get("dataSource", {}).get("kind") == "PersistentVolumeClaim"]
    assert len(restored) == 1 and len(cloned) == 1
    [restored], [cloned] = restored, cloned
    assert restored["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                              "name": snapshot["metadata"]["name"]}
    assert "dataSourceRef" not in restored["spec"] and "dataSourceRef" not in cloned["spec"]
    # A restore: same namespace as the snapshot, a class of this driver on the same filesystem
    # (the same Secret), at least the source's size.
    assert restored["metadata"]["namespace"] == namespace
    restore_class = classes[restored["spec"]["storageClassName"]]
    assert restore_class["provisioner"] == snapshot_class["driver"]
    assert restore_class["parameters"]["csi.storage.k8s.io/provisioner-secret-name"] == \
        snapshot_class["parameters"]["csi.storage.k8s.io/snapshotter-secret-name"]
    assert _size(restored) >= _size(source)
    # A clone: core API group (no apiGroup), same namespace and StorageClass as the source.
    assert cloned["spec"]["dataSource"] == {"kind": "PersistentVolumeClaim", "name": source["metadata"]["name"]}
    assert cloned["metadata"]["namespace"] == source["metadata"]["namespace"]
    assert cloned["spec"]["storageClassName"] == source["spec"]["storageClassName"]
    assert _size(cloned) >= _size(source)
    for pvc in (restored, cloned):
        assert pvc["spec"]["accessModes"] == source["spec"]["accessModes"]


def test_snapshot_restore_and_clone_examples_fit_together() -> None:
    examples = [d for p in sorted((DEPLOY / "examples").glob("*.yaml")) for d in documents(p)]
    storage_classes = [d for d in examples if d["kind"] == "StorageClass"]
    check_snapshot_restore_and_clone(examples, by_kind("VolumeSnapshotClass"), storage_classes)
    assert by_kind("VolumeSnapshot")["spec"]["source"] == {"persistentVolumeClaimName": "shared-data"}


def test_dockerfile_installs_the_package_and_runs_the_driver() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    copies = [(i, line.split()[1:-1]) for i, line in enumerate(lines)
              if line.startswith("COPY ") and "--from" not in line]
    copied = {word for _, words in copies for word in words}
    assert copied == {"constraints.txt", "pyproject.toml", "README.md", "fusecache", "csi_driver"}
    assert all((REPO / source).exists() for source in copied)
    # Dependencies (pinned) are installed before any source is copied.
    [deps] = [i for i, line in enumerate(lines) if line.startswith("RUN ") and "-r constraints.txt" in line]
    first_source = min(i for i, words in copies if {"fusecache", "csi_driver", "pyproject.toml"} & set(words))
    assert deps < first_source
    assert "--no-deps -c constraints.txt ." in dockerfile
    # The runtime stage gets an installed venv: no wheel is ever copied into it.
    assert "COPY --from=build /opt/fusecache /opt/fusecache" in dockerfile and "/wheels" not in dockerfile
    # The base is pinned by digest, so two builds of one commit start from the same bytes.
    assert re.fullmatch(r"ARG BASE_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", lines[0])
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${BASE_IMAGE} AS build",
                                                                   "FROM ${BASE_IMAGE}"]
    assert "fuse3" in dockerfile
    assert dockerfile.rstrip().endswith('ENTRYPOINT ["fusecache-csi"]')
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'fusecache-csi = "csi_driver.server:main"' in pyproject
    build_requires = pyproject.split("[build-system]", 1)[1].split("\n[", 1)[0]
    assert "grpcio-tools" not in build_requires  # the stubs are committed
    assert (REPO / "csi_driver" / "_proto" / "csi_pb2_grpc.py").is_file()


def test_constraints_pin_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pins, name
        assert req.specifier.contains(pins[name]), (dep, pins[name])


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "tests", "benchmarks", "docs", "**/__pycache__"} <= ignored
    copied = {"constraints.txt", "pyproject.toml", "README.md", "fusecache", "csi_driver"}
    assert not copied & ignored


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


def readme_yaml(section: str) -> list[dict[str, Any]]:
    return [d for block in re.findall(r"```yaml\n(.*?)```", section, re.S) for d in yaml.safe_load_all(block) if d]


def test_readme_kubernetes_examples_are_valid_and_use_known_settings() -> None:
    section = readme_section()
    docs = readme_yaml(section)
    assert sorted(d["kind"] for d in docs) == [*["PersistentVolume"] * 2, *["PersistentVolumeClaim"] * 6,
                                               *["Pod"] * 2, "Secret", *["StorageClass"] * 2, "VolumeSnapshot",
                                               "VolumeSnapshotClass"]
    for doc in docs:
        validate(doc)
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


def test_readme_snapshots_and_clones() -> None:
    section = readme_section()
    snapshots = section.split("\n### Snapshots and clones\n", 1)[1].split("\n### ", 1)[0]
    docs = readme_yaml(snapshots)
    assert sorted(d["kind"] for d in docs) == ["PersistentVolumeClaim", "PersistentVolumeClaim", "VolumeSnapshot",
                                               "VolumeSnapshotClass"]
    # The README shows the example manifests themselves (comments aside).
    examples = {_key(d): d for p in (DEPLOY / "examples").glob("*.yaml") for d in documents(p)}
    for doc in docs:
        assert examples[_key(doc)] == doc, _key(doc)
    [snapshot_class] = [d for d in docs if d["kind"] == "VolumeSnapshotClass"]
    storage_classes = [d for d in readme_yaml(section) if d["kind"] == "StorageClass"]
    pvcs = [d for d in readme_yaml(section) if d["kind"] == "PersistentVolumeClaim"]
    check_snapshot_restore_and_clone([*docs, *pvcs], snapshot_class, storage_classes)
    for needed in ("snapshot-controller", "kubernetes-csi/external-snapshotter", "read-only", "copy-on-write",
                   "deploy/overlays/demo-snapshots", "kubectl get crd"):
        assert needed in snapshots, needed
    for name in ("volumesnapshotclass", "volumesnapshot", "pvc-from-snapshot", "pvc-clone"):
        assert f"deploy/examples/{name}.yaml" in snapshots and (DEPLOY / "examples" / f"{name}.yaml").is_file()


def test_readme_tables_list_exactly_the_keys_the_driver_knows() -> None:
    section = readme_section()
    assert table_keys(section, "key | `fusecache mount` flag") == set(settings.MOUNT_KEYS) | {settings.SUBDIR}
    assert table_keys(section, "key | meaning") == {
        fsref.SECRET_META_URL, fsref.SECRET_META_PASSWORD, fsref.SECRET_ACCESS_KEY, fsref.SECRET_SECRET_KEY,
        *fsref.FORMAT_KEYS, *imports.SECRET_KEYS}
    assert table_keys(section, "mutable parameter | meaning") == set(mutable.KEYS)
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


def test_import_source_examples_fit_together_and_the_readme_shows_them() -> None:
    """A dataset's Secret, StorageClass, PVC and Pod, and its static PV: settings the
    driver takes, credentials only in the Secret, and the README showing these manifests."""
    storage_class = by_kind("StorageClass", "fusecache-imagenet")
    params = storage_class["parameters"]
    settings.check_parameters(params)  # importSource is a known parameter
    secret = by_kind("Secret", "fusecache-import")
    keys = secret["stringData"]
    fs = fsref.resolve(keys)
    assert fs.format is None  # the existing filesystem: nothing formatted by this class
    spec = imports.requested(params, keys)
    assert spec is not None and spec.storage == "s3" and (spec.access_key, spec.secret_key) == (
        keys[imports.SECRET_ACCESS_KEY], keys[imports.SECRET_SECRET_KEY])
    assert not set(imports.SECRET_KEYS) & set(params)  # the keys are the Secret's, never a parameter
    for kind in ("provisioner", "node-stage", "controller-expand"):
        assert params[f"csi.storage.k8s.io/{kind}-secret-name"] == secret["metadata"]["name"]
        assert params[f"csi.storage.k8s.io/{kind}-secret-namespace"] == secret["metadata"]["namespace"]
    pvc = by_kind("PersistentVolumeClaim", "imagenet")
    assert pvc["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    pod = by_kind("Pod", "train")
    [volume] = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and not mounts["/results"].get("readOnly")
    assert {m["name"] for m in mounts.values()} == {volume["name"]}
    pv = by_kind("PersistentVolume", "imagenet-static")["spec"]["csi"]
    assert pv["driver"] == DEFAULT_DRIVER_NAME and pv["readOnly"] is True
    assert pv["nodeStageSecretRef"] == {"name": "fusecache-import", "namespace": "kube-system"}
    attributes = pv["volumeAttributes"]
    settings.warn_unknown(attributes)
    settings.parse(attributes)
    assert imports.requested(attributes, keys) is not None and settings.subdir_of(attributes) == "/datasets/imagenet"
    assert by_kind("PersistentVolumeClaim", "imagenet-static")["spec"]["volumeName"] == "imagenet-static"

    section = readme_section().split("\n### Serving a dataset that already lives in a bucket\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    docs = readme_yaml(section)
    assert sorted(d["kind"] for d in docs) == ["PersistentVolume", "PersistentVolumeClaim", "PersistentVolumeClaim",
                                               "Pod", "Secret", "StorageClass"]
    examples = {_key(d): d for p in (DEPLOY / "examples").glob("*.yaml") for d in documents(p)}
    for doc in docs:
        assert examples[_key(doc)] == doc, _key(doc)
    for name in ("secret-import", "storageclass-import", "pvc-import", "pod-import", "static-pv-import"):
        assert f"{name}.yaml" in section and (DEPLOY / "examples" / f"{name}.yaml").is_file()
    for needed in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "--timeout", "EROFS",
                   imports.SECRET_ACCESS_KEY, imports.SECRET_SECRET_KEY, "nodeStageSecretRef"):
        assert needed in section, needed
