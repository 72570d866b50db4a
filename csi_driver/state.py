"""What a node plugin must remember across its own restarts, as files under --state-dir.

    <state>/clients/<key>.json   one shared FUSE client: filesystem URL (no password), mount
                                 settings, mountpoint, pid and the pid's start time
    <state>/secrets/<key>.json   credentials to remount that client after a crash (0600)
    <state>/volumes/<hash>.json  one staged volume: its client, subdirectory, staging path
                                 and every target it is published at
    <state>/mnt/<key>/           mountpoints of the shared clients
    <state>/logs/<key>.log       the clients' logs

Rules: a record is written *before* the mount it describes is made and removed *after*
that mount is gone, so after a crash the records are a superset of the mounts and the
recovery pass only ever has to (re)create mounts, never guess. Writes are atomic
(temp file, fsync, rename). The directory is 0700 and secrets are 0600: the node plugin
runs as root and nothing else on the node needs to read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PublishRecord:
    readonly: bool
    flags: list[str]
    created: bool  # the driver made the target directory, so unpublish removes it
    mode: int = 0  # access mode of the publish; 0 in records of drivers that did not keep it

    def same_request(self, other: PublishRecord) -> bool:
        """Do two publishes at one target ask for the same thing (the spec's P1 == P2)?"""
        modes_match = self.mode == other.mode or 0 in (self.mode, other.mode)
        return self.readonly == other.readonly and self.flags == other.flags and modes_match


@dataclass
class VolumeRecord:
    volume_id: str
    client_key: str
    subdir: str  # directory of the filesystem this volume shows ("/" = all of it)
    staging_path: str
    readonly: bool
    flags: list[str]
    staging_created: bool = False
    publishes: dict[str, PublishRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeRecord:
        pubs = {t: PublishRecord(**p) for t, p in data.pop("publishes", {}).items()}
        return cls(**data, publishes=pubs)


@dataclass
class ClientRecord:
    key: str
    meta_url: str  # without password
    settings: dict[str, str]  # MountSettings.context()
    mountpoint: str
    pid: int = 0
    pid_start: int = 0  # field 22 of /proc/<pid>/stat: tells a reused pid apart
    log: str = ""
    subdir: str = "/"  # directory of the filesystem the client mounts as its root


def _atomic_write(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _volume_file(volume_id: str) -> str:
    return hashlib.sha256(volume_id.encode()).hexdigest()[:32] + ".json"


class NodeState:
    """The records, cached in memory, written through to disk. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        for sub in ("clients", "secrets", "volumes", "mnt", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        os.chmod(root / "secrets", 0o700)
        self._clients: dict[str, ClientRecord] = {}
        self._volumes: dict[str, VolumeRecord] = {}
        self._load()

    def _load(self) -> None:
        for path in (self.root / "clients").glob("*.json"):
            record = ClientRecord(**json.loads(path.read_text()))
            self._clients[record.key] = record
        for path in (self.root / "volumes").glob("*.json"):
            volume = VolumeRecord.from_dict(json.loads(path.read_text()))
            self._volumes[volume.volume_id] = volume

    # -- paths -----------------------------------------------------------------------------
    def mountpoint(self, key: str) -> str:
        return str(self.root / "mnt" / key)

    def log_path(self, key: str) -> str:
        return str(self.root / "logs" / f"{key}.log")

    # -- clients ---------------------------------------------------------------------------
    def clients(self) -> list[ClientRecord]:
        with self._lock:
            return list(self._clients.values())

    def client(self, key: str) -> ClientRecord | None:
        with self._lock:
            return self._clients.get(key)

    def save_client(self, record: ClientRecord, secrets: dict[str, str] | None = None) -> None:
        with self._lock:
            if secrets is not None:
                _atomic_write(self.root / "secrets" / f"{record.key}.json", secrets)
            _atomic_write(self.root / "clients" / f"{record.key}.json", asdict(record))
            self._clients[record.key] = record

    def secrets(self, key: str) -> dict[str, str]:
        path = self.root / "secrets" / f"{key}.json"
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return {}

    def delete_client(self, key: str) -> None:
        with self._lock:
            for path in (self.root / "clients" / f"{key}.json", self.root / "secrets" / f"{key}.json"):
                path.unlink(missing_ok=True)
            self._clients.pop(key, None)

    # -- volumes ---------------------------------------------------------------------------
    def volumes(self) -> list[VolumeRecord]:
        with self._lock:
            return list(self._volumes.values())

    def volume(self, volume_id: str) -> VolumeRecord | None:
        with self._lock:
            return self._volumes.get(volume_id)

    def volumes_of(self, key: str) -> list[VolumeRecord]:
        with self._lock:
            return [v for v in self._volumes.values() if v.client_key == key]

    def save_volume(self, record: VolumeRecord) -> None:
        with self._lock:
            _atomic_write(self.root / "volumes" / _volume_file(record.volume_id), asdict(record))
            self._volumes[record.volume_id] = record

    def delete_volume(self, volume_id: str) -> None:
        with self._lock:
            (self.root / "volumes" / _volume_file(volume_id)).unlink(missing_ok=True)
            self._volumes.pop(volume_id, None)

    def owner_of(self, path: str) -> VolumeRecord | None:
        """The volume staged or published at `path`, if any."""
        with self._lock:
            for volume in self._volumes.values():
                if volume.staging_path == path or path in volume.publishes:
                    return volume
            return None
