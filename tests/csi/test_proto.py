"""protos/csi.proto is the spec's wire definition, and the committed stubs are generated from it."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from csi_driver import protogen

SPEC_PROTO = protogen.REPO_ROOT.parent / "shared" / "spec" / "csi.proto"
# What names the generator's version: it changes with grpcio-tools, not with the proto.
_VERSION_PARTS = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)"
                            r"|# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*")


def _descriptor(include: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / f"{include.name}.pb"
    well_known = resources.files("grpc_tools") / "_proto"
    assert protoc.main(["protoc", f"-I{include}", f"-I{well_known}", f"--descriptor_set_out={out}",
                        "csi.proto"]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert len(files) == 1
    return files[0]


@pytest.mark.skipif(not SPEC_PROTO.exists(), reason="the CSI spec is not checked out next to the repo")
def test_proto_matches_the_spec_exactly(tmp_path: Path) -> None:
    """Every service, method, message, field name, number, type and option is the spec's."""
    ours = _descriptor(protogen.PROTO_DIR, tmp_path)
    spec = _descriptor(SPEC_PROTO.parent, tmp_path)
    assert [s.name for s in ours.service] == [s.name for s in spec.service]
    assert [m.name for m in ours.message_type] == [m.name for m in spec.message_type]
    assert ours == spec


def test_stubs_are_not_stale(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    for name in ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py"):
        fresh = (tmp_path / protogen.PACKAGE_PATH / name).read_text()
        committed = (protogen.REPO_ROOT / protogen.PACKAGE_PATH / name).read_text()
        assert _VERSION_PARTS.sub("", fresh) == _VERSION_PARTS.sub("", committed), (
            f"{name} is stale: run python -m csi_driver.protogen")


def test_secret_fields_are_marked() -> None:
    """The request logger blanks fields by the csi_secret option; make sure it sees them."""
    from csi_driver._proto import csi_pb2 as pb
    from csi_driver.rpc import redacted, secret_values

    request = pb.NodeStageVolumeRequest(volume_id="v", secrets={"metaurl": "redis://:hunter2@h/1"})
    assert secret_values(request) == ["redis://:hunter2@h/1"]
    assert "hunter2" not in str(redacted(request))
    assert redacted(request)["secrets"] == {"metaurl": "****"}
