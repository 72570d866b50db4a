"""`fusecache-csi`: the CSI driver's gRPC server on a unix socket.

    fusecache-csi --endpoint unix:///csi/csi.sock --mode node --nodeid $(NODE_NAME) \\
                  --state-dir /var/lib/kubelet/plugins/csi.fusecache.io/state

The same binary serves the controller (`--mode controller`), the node plugin
(`--mode node`) or both (`--mode all`, for tests and single-node setups). A node plugin
first re-adopts the FUSE clients and mounts recorded in its state directory (repairing
what died while it was away), then serves. SIGTERM/SIGINT stop the server gracefully;
FUSE clients keep running and are adopted by the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from ._proto import csi_pb2_grpc as pb_grpc
from .checker import HealthChecker
from .clients import FuseClients
from .config import DEFAULT_DRIVER_NAME, MODES, DriverConfig
from .controller import ControllerService
from .fsref import ENV_META_URL
from .identity import IdentityService
from .logs import setup_logging
from .manager import NodeManager
from .metapool import MetaPool
from .node import NodeService
from .rpc import VolumeLocks
from .state import NodeState
from .tools import fusecache_command

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0


def socket_path(endpoint: str) -> str:
    """The filesystem path of a unix endpoint: unix:///p, unix:/p or a bare /p."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:"):]
    else:
        path = endpoint
    if not path.startswith("/"):
        raise ValueError(f"endpoint must be an absolute unix socket path, not {endpoint!r}")
    return path


def parse_args(argv: list[str] | None) -> tuple[DriverConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="fusecache-csi", description="fusecache CSI driver")
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
                   help="unix socket to serve on (env CSI_ENDPOINT)")
    p.add_argument("--nodeid", default=os.environ.get("NODE_ID", ""), help="this node's id (env NODE_ID)")
    p.add_argument("--mode", choices=MODES, default="all")
    p.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    p.add_argument("--state-dir", default="/var/lib/fusecache-csi",
                   help="where the node plugin keeps its records and client mountpoints")
    p.add_argument("--meta-url", default=os.environ.get(ENV_META_URL, ""),
                   help=f"default filesystem for requests without secrets (env {ENV_META_URL}; "
                        "the password may come from META_PASSWORD)")
    p.add_argument("--fusecache-cmd", default="", help="how to run the fusecache CLI (default: on PATH)")
    p.add_argument("--check-interval", type=float, default=10.0,
                   help="seconds between health checks of FUSE clients (0: only on demand)")
    p.add_argument("--mount-timeout", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default="json", choices=("json", "text"))
    args = p.parse_args(argv)
    if args.mode in ("node", "all") and not args.nodeid:
        p.error("--nodeid is required in node mode")
    config = DriverConfig(
        driver_name=args.driver_name,
        node_id=args.nodeid,
        mode=args.mode,
        state_dir=Path(args.state_dir),
        default_meta_url=args.meta_url,
        fusecache_cmd=tuple(fusecache_command(args.fusecache_cmd)),
        check_interval=args.check_interval,
        mount_timeout=args.mount_timeout,
    )
    return config, args


class Driver:
    """All services of one process, wired together."""

    def __init__(self, config: DriverConfig, workers: int = 8) -> None:
        self.config = config
        self.ready = threading.Event()
        self.locks = VolumeLocks()
        self.metas = MetaPool(list(config.fusecache_cmd))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"))
        pb_grpc.add_IdentityServicer_to_server(IdentityService(config, self.ready), self.server)
        self.checker: HealthChecker | None = None
        self.manager: NodeManager | None = None
        if config.serves_controller:
            pb_grpc.add_ControllerServicer_to_server(ControllerService(config, self.metas, self.locks), self.server)
        if config.serves_node:
            state = NodeState(config.state_dir)
            clients = FuseClients(list(config.fusecache_cmd), config.mount_timeout)
            self.manager = NodeManager(state, clients, self.metas)
            self.checker = HealthChecker(self.manager, config.check_interval)
            pb_grpc.add_NodeServicer_to_server(NodeService(config, self.manager, self.checker, self.locks),
                                               self.server)

    def start(self, endpoint: str) -> None:
        if self.manager is not None:
            log.info("re-adopting FUSE clients and mounts from %s", self.config.state_dir)
            self.manager.repair_all()
        path = socket_path(endpoint)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # left by a previous run; binding fails otherwise
        self.server.add_insecure_port(f"unix://{path}")
        self.server.start()
        if self.checker is not None:
            self.checker.start()
        self.ready.set()
        log.info("serving %s as %s (mode %s, node %s)", endpoint, self.config.driver_name, self.config.mode,
                 self.config.node_id or "-")

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        self.ready.clear()
        self.server.stop(grace).wait()
        if self.checker is not None:
            self.checker.stop()
        self.metas.close()
        log.info("stopped; FUSE clients keep running for the next start to adopt")


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    driver = Driver(config, args.workers)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        driver.start(args.endpoint)
    except Exception:
        log.exception("start-up failed")
        return 1
    while not stop.wait(1.0):
        pass
    driver.stop()
    try:
        os.unlink(socket_path(args.endpoint))
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
