"""Settings of one driver process, from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DRIVER_NAME = "csi.fusecache.io"
MODES = ("controller", "node", "all")


@dataclass(frozen=True)
class DriverConfig:
    driver_name: str = DEFAULT_DRIVER_NAME
    node_id: str = ""
    mode: str = "all"
    state_dir: Path = Path("/var/lib/fusecache-csi")
    default_meta_url: str = field(default="", repr=False)  # may hold a password
    fusecache_cmd: tuple[str, ...] = ("fusecache",)
    check_interval: float = 10.0  # seconds between health checks of FUSE clients (0: never)
    mount_timeout: float = 60.0  # seconds a new FUSE client may take to appear

    @property
    def serves_controller(self) -> bool:
        return self.mode in ("controller", "all")

    @property
    def serves_node(self) -> bool:
        return self.mode in ("node", "all")
