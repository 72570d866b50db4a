"""Generate the Python gRPC stubs in `csi_driver/_proto/` from `protos/csi.proto`.

The stubs are committed (the runtime image then needs no grpcio-tools, and an editable
install works without a build step); `tests/csi/test_proto.py` fails when they are stale.
Run from anywhere: `python -m csi_driver.protogen [OUT_ROOT]`.

protoc is told that `protos/` is `csi_driver/_proto/`, so the generated gRPC module imports
its message module as `csi_driver._proto.csi_pb2` instead of a top-level `csi_pb2`.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
PACKAGE_PATH = "csi_driver/_proto"


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Write csi_pb2.py, csi_pb2.pyi and csi_pb2_grpc.py under `out_root/csi_driver/_proto`."""
    from grpc_tools import protoc  # build-time dependency only

    well_known = resources.files("grpc_tools") / "_proto"
    out_dir = out_root / PACKAGE_PATH
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PACKAGE_PATH}={PROTO_DIR}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"{PACKAGE_PATH}/csi.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on protos/csi.proto")
    return [out_dir / name for name in ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py")]


def main() -> None:
    out_root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(out_root):
        print(path)


if __name__ == "__main__":
    main()
