"""Node-side volume lifecycle: shared clients, staging and publish binds, and their repair.

    FUSE client  <state>/mnt/<key>           one per (filesystem, mount settings) per node
        │ bind of <mnt>/<subdir>
    staging path (NodeStageVolume)           one per volume
        │ bind
    target paths (NodePublishVolume)         one per pod using the volume

Locking: the RPC layer serialises calls per volume; here a lock per client key serialises
everything that starts, stops or repairs one client and the volumes on it, so a volume
being staged never races with the last volume of the same client being unstaged.

Repair (after a client died, or at start-up) walks the records (state.py): restart the
client if it is dead, then for every staging and target path whose mount is missing or
still shows the dead superblock, detach what is there and bind again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fusecache.importer import SourceSpec
from fusecache.mountinfo import FUSECACHE_FSTYPE, read_mounts, top_mount
from fusecache.types import ROOT_INO, StatFs

from . import imports
from .capabilities import ONE_TARGET_MODES, AccessMode
from .clients import DEAD_MOUNT_ERRNOS, ClientStartError, FuseClients, Health, stat_with_timeout
from .errors import CsiError, already_exists, failed_precondition, internal, invalid, not_found, unavailable
from .fsref import Filesystem
from .metapool import MetaPool
from .mounts import bind, same_subtree, unmount_stack
from .settings import MountSettings, client_key, client_root, parse
from .state import ClientRecord, NodeState, PublishRecord, VolumeRecord
from .volume_id import fs_tag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeStats:
    stats: StatFs | None
    used_bytes: int
    used_inodes: int
    health: Health


def _check_single_workload(record: VolumeRecord, target: str, wanted: PublishRecord) -> None:
    """SINGLE_NODE_SINGLE_WRITER means one workload: a publish at another target while such
    a publish exists, or such a publish while there are others, exceeds the volume's
    capability (FAILED_PRECONDITION, as the spec has it for a publish a mode forbids)."""
    others = {t: p for t, p in record.publishes.items() if t != target}
    if not others:
        return
    if wanted.mode in ONE_TARGET_MODES:
        raise failed_precondition(
            f"access mode {AccessMode.Mode.Name(wanted.mode)} allows one target path, and the volume is "
            f"already published at {sorted(others)}")
    single = sorted(t for t, p in others.items() if p.mode in ONE_TARGET_MODES)
    if single:
        raise failed_precondition(f"volume is published at {single[0]} with access mode "
                                  f"SINGLE_NODE_SINGLE_WRITER, which allows no other target path")


class NodeManager:
    def __init__(self, state: NodeState, clients: FuseClients, metas: MetaPool) -> None:
        self.state = state
        self.clients = clients
        self.metas = metas
        self._guard = threading.Lock()
        self._client_locks: dict[str, threading.Lock] = {}

    @contextmanager
    def client_lock(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._client_locks.setdefault(key, threading.Lock())
        with lock:
            yield

    # -- clients ---------------------------------------------------------------------------
    def _filesystem(self, record: ClientRecord) -> Filesystem:
        return Filesystem.from_persisted(record.meta_url, self.state.secrets(record.key))

    def _ensure_client(self, key: str, fs: Filesystem, settings: MountSettings, root: str) -> ClientRecord:
        """A running client for `key` (caller holds its lock): adopt, or (re)start it."""
        record = self.state.client(key)
        if record is not None:
            health = self.clients.health(record)
            if health.ok:
                if any(fs.secrets().values()) and self.state.secrets(key) != fs.secrets():
                    self.state.save_client(record, fs.secrets())  # rotated: use them for remounts
                return record
            if not health.recoverable:
                raise unavailable(f"the shared FUSE client is unhealthy: {health.message}")
            log.warning("FUSE client %s is broken (%s): remounting", key, health.message)
            self._retire(record)
        fresh = ClientRecord(key, fs.meta_url, settings.context(), self.state.mountpoint(key),
                             log=self.state.log_path(key), subdir=root)
        self.state.save_client(fresh, fs.secrets())  # before the mount: recovery can find it
        try:
            started = self.clients.start(fresh, fs, settings)
        except ClientStartError as exc:
            if not self.state.volumes_of(key):
                self.state.delete_client(key)
            raise unavailable(f"cannot mount the filesystem: {exc}") from exc
        self.state.save_client(started)
        return started

    def _healthy_client(self, key: str) -> ClientRecord:
        """The client of `key`, remounted (and its volumes' mounts repaired) if it died.
        Caller holds the key's lock."""
        record = self.state.client(key)
        if record is None:
            raise failed_precondition("the volume's FUSE client record is lost; unstage and stage it again")
        if self.clients.health(record).ok:
            return record
        record = self._ensure_client(key, self._filesystem(record), parse(record.settings), record.subdir)
        for volume in self.state.volumes_of(key):
            self._repair_volume(volume, record)
        return record

    def _retire(self, record: ClientRecord) -> None:
        """Get rid of a broken client: stop what is left of it and detach its mount."""
        mounted = top_mount(record.mountpoint)
        if self.clients.alive(record):
            if mounted is not None and mounted.is_fusecache:
                self.clients.stop(record)
            else:
                # Its mountpoint is gone but binds may keep it serving a dead-end superblock.
                self.clients.terminate(record)
        if top_mount(record.mountpoint) is not None:
            unmount_stack(record.mountpoint, only=(FUSECACHE_FSTYPE,))

    def _client_dev(self, record: ClientRecord) -> str:
        mount = top_mount(record.mountpoint)
        if mount is None or mount.fstype != FUSECACHE_FSTYPE:
            raise unavailable(f"the filesystem is not mounted at {record.mountpoint}")
        return mount.dev

    def _release_client_if_unused(self, key: str) -> None:
        if self.state.volumes_of(key):
            return
        record = self.state.client(key)
        if record is not None:
            self.clients.stop(record)
            self.state.delete_client(key)

    # -- stage -----------------------------------------------------------------------------
    def stage(self, volume_id: str, fs: Filesystem, settings: MountSettings, subdir: str, staging: str,
              readonly: bool, flags: list[str], expected_fs: str | None) -> None:
        key = client_key(fs.meta_url, settings, subdir)
        if expected_fs is not None:
            _, fs_settings = self._open_meta(fs)
            if fs_tag(fs_settings.uuid) != expected_fs:
                raise failed_precondition(
                    f"volume {volume_id} belongs to filesystem {expected_fs}, the secrets name "
                    f"{fs_tag(fs_settings.uuid)}")
        with self.client_lock(key):
            existing = self.state.volume(volume_id)
            other = self.state.owner_of(staging)
            if other is not None and other.volume_id != volume_id:
                # Mounting here would hide (and the stale-mount cleanup would undo) its mount.
                raise already_exists(f"{staging} is in use by volume {other.volume_id}")
            if existing is not None:
                if existing.staging_path != staging:
                    raise failed_precondition(f"volume is already staged at {existing.staging_path}")
                if (existing.client_key, existing.subdir, existing.readonly, existing.flags) != (
                        key, subdir, readonly, flags):
                    raise already_exists("volume is already staged here with different settings or capability")
            client = self._ensure_client(key, fs, settings, client_root(settings, subdir))
            source = client.mountpoint + _inside(client, subdir)
            if not os.path.isdir(source):
                if existing is None:
                    self._release_client_if_unused(key)
                raise not_found(f"directory {subdir} does not exist in the filesystem")
            record = existing or VolumeRecord(volume_id, key, subdir, staging, readonly, list(flags),
                                              staging_created=not os.path.exists(staging))
            if record.staging_created:
                os.makedirs(staging, exist_ok=True)
            self.state.save_volume(record)
            self._mount_staging(record, client)

    def _mount_staging(self, record: VolumeRecord, client: ClientRecord) -> bool:
        """Make the staging path show the volume; True if a mount had to be (re)made."""
        dev = self._client_dev(client)
        current = top_mount(record.staging_path)
        if same_subtree(current, dev, _inside(client, record.subdir) or "/") and current is not None \
                and current.readonly == record.readonly:
            return False
        if current is not None:
            if not current.is_fusecache:
                raise already_exists(f"{record.staging_path} already has a {current.fstype} mount")
            unmount_stack(record.staging_path, only=(FUSECACHE_FSTYPE,))  # stale: a dead client's
        bind(client.mountpoint + _inside(client, record.subdir), record.staging_path, record.readonly, record.flags)
        return True

    def import_static(self, volume_id: str, fs: Filesystem, spec: SourceSpec, subdir: str) -> None:
        """A static PV's importSource, imported into `subdir` unless already done there."""
        meta, fs_settings = self._open_meta(fs)
        if not imports.import_once(meta, spec, subdir, fs_settings):
            log.debug("volume %s: %s is already imported into %s", volume_id, spec.shown, subdir)

    def unstage(self, volume_id: str, staging: str) -> None:
        record = self.state.volume(volume_id)
        if record is None or record.staging_path != staging:
            self._unmount_orphan(staging)
            return
        with self.client_lock(record.client_key):
            live = [t for t in record.publishes if top_mount(t) is not None]
            if live:
                raise failed_precondition(f"volume is still published at {live}")
            unmount_stack(staging, only=(FUSECACHE_FSTYPE,))
            if record.staging_created:
                _remove_dir(staging)
            self.state.delete_volume(volume_id)
            self._release_client_if_unused(record.client_key)

    def _unmount_orphan(self, path: str) -> None:
        """A fusecache mount at `path` that no record claims (records lost): undo it."""
        mount = top_mount(path)
        if mount is not None and mount.is_fusecache and self.state.owner_of(path) is None:
            log.warning("unmounting %s: a fusecache mount no record knows about", path)
            unmount_stack(path, only=(FUSECACHE_FSTYPE,))

    # -- publish ---------------------------------------------------------------------------
    def publish(self, volume_id: str, staging: str, target: str, readonly: bool, flags: list[str],
                mode: int = 0) -> None:
        record = self.state.volume(volume_id)
        if record is None or record.staging_path != staging:
            raise failed_precondition(f"volume {volume_id} is not staged at {staging}")
        with self.client_lock(record.client_key):
            wanted = PublishRecord(readonly, list(flags), created=False, mode=mode)
            existing = record.publishes.get(target)
            if existing is not None and not existing.same_request(wanted):
                raise already_exists(f"volume is already published at {target} with another readonly "
                                     "flag, mount flags or access mode")
            if existing is None:
                _check_single_workload(record, target, wanted)
            if record.readonly and not readonly:
                # A bind takes the flags it is given, so a writable bind of a read-only staging
                # mount would be writable: the request exceeds what the volume was staged for.
                raise failed_precondition("volume is staged read-only: it can only be published read-only")
            client = self._healthy_client(record.client_key)
            self._mount_staging(record, client)
            if existing is not None:
                wanted.created = existing.created
            else:
                other = self.state.owner_of(target)
                if other is not None and other.volume_id != volume_id:
                    raise already_exists(f"{target} is in use by volume {other.volume_id}")
                if os.path.exists(target) and not os.path.isdir(target):
                    raise invalid(f"target path {target} exists and is not a directory")
                wanted.created = not os.path.exists(target)
                os.makedirs(target, exist_ok=True)
                record.publishes[target] = wanted
                self.state.save_volume(record)
            self._mount_target(record, client, target, wanted)

    def _mount_target(self, record: VolumeRecord, client: ClientRecord, target: str, pub: PublishRecord) -> bool:
        dev = self._client_dev(client)
        current = top_mount(target)
        if same_subtree(current, dev, _inside(client, record.subdir) or "/") and current is not None \
                and current.readonly == pub.readonly:
            return False
        if current is not None:
            if not current.is_fusecache:
                raise already_exists(f"{target} already has a {current.fstype} mount")
            unmount_stack(target, only=(FUSECACHE_FSTYPE,))
        bind(record.staging_path, target, pub.readonly, pub.flags)
        return True

    def unpublish(self, volume_id: str, target: str) -> None:
        record = self.state.volume(volume_id)
        pub = record.publishes.get(target) if record is not None else None
        if record is None or pub is None:
            self._unmount_orphan(target)
            return
        with self.client_lock(record.client_key):
            unmount_stack(target, only=(FUSECACHE_FSTYPE,))
            if pub.created:
                _remove_dir(target)
            del record.publishes[target]
            self.state.save_volume(record)

    # -- stats -----------------------------------------------------------------------------
    def _open_meta(self, fs: Filesystem):  # type: ignore[no-untyped-def]
        from fusecache.errors import MetaError

        try:
            return self.metas.open(fs)
        except MetaError as exc:
            raise unavailable(f"metadata engine: {exc}") from exc

    def volume_at(self, volume_id: str, path: str) -> VolumeRecord:
        record = self.state.volume(volume_id)
        if record is None:
            raise not_found(f"volume {volume_id} is not staged on this node")
        norm = os.path.normpath(path)
        if norm != record.staging_path and norm not in record.publishes:
            raise not_found(f"volume {volume_id} is not staged or published at {path}")
        return record

    def path_health(self, record: VolumeRecord, path: str) -> Health:
        client = self.state.client(record.client_key)
        if client is None:
            return Health(False, "the volume's FUSE client is unknown", recoverable=False)
        health = self.clients.health(client)
        if not health.ok:
            return health
        mount, client_mount = top_mount(path), top_mount(client.mountpoint)
        if mount is None or client_mount is None or mount.dev != client_mount.dev:
            return Health(False, f"{path} does not show the volume (stale or missing mount)", recoverable=True)
        error = stat_with_timeout(path)
        if error is not None:
            return Health(False, f"{path}: {error.strerror or error}", recoverable=error.errno in DEAD_MOUNT_ERRNOS)
        return Health(True)

    def stats(self, record: VolumeRecord, path: str) -> VolumeStats:
        """Usage of the volume's quota from the metadata engine (it answers even while the
        client is down); if the engine does not, what the mount itself reports."""
        health = self.path_health(record, path)
        client = self.state.client(record.client_key)
        if client is not None:
            try:
                meta, _ = self.metas.open(self._filesystem(client))
                ino = _lookup_path(meta, record.subdir)
                usage = meta.statfs(ino)
                quota = meta.get_quota(ino)
            except Exception as exc:
                log.warning("volume usage from the metadata engine failed: %s", exc)
            else:
                used_bytes = quota.used_bytes if quota and quota.max_bytes else usage.total_bytes - usage.avail_bytes
                used_inodes = quota.used_inodes if quota and quota.max_inodes else usage.used_inodes
                return VolumeStats(usage, used_bytes, used_inodes, health)
        if health.ok:
            st = os.statvfs(path)
            usage = StatFs(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files - st.f_ffree,
                           st.f_favail)
            return VolumeStats(usage, (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree, health)
        return VolumeStats(None, 0, 0, health)

    def capacity(self, record: VolumeRecord) -> int:
        client = self.state.client(record.client_key)
        if client is None:
            return 0
        meta, _ = self._open_meta(self._filesystem(client))
        quota = meta.get_quota(_lookup_path(meta, record.subdir))
        return quota.max_bytes if quota else 0

    # -- repair ----------------------------------------------------------------------------
    def repair_all(self) -> None:
        """Bring every client and mount the records describe back (start-up and checker)."""
        self.clients.reap()
        keys = {v.client_key for v in self.state.volumes()} | {c.key for c in self.state.clients()}
        for key in sorted(keys):
            try:
                self.repair_client(key)
            except Exception as exc:
                log.error("repairing FUSE client %s failed: %s", key, exc)
        self._unmount_unknown_clients()

    def repair_client(self, key: str) -> None:
        with self.client_lock(key):
            record = self.state.client(key)
            volumes = self.state.volumes_of(key)
            if record is None:
                if volumes:
                    log.error("volumes %s have no client record; they cannot be recovered",
                              [v.volume_id for v in volumes])
                return
            if not volumes:
                log.info("FUSE client %s serves no volume any more: stopping it", key)
                self._retire(record)
                self.state.delete_client(key)
                return
            health = self.clients.health(record)
            if not health.ok and not health.recoverable:
                log.warning("FUSE client %s is unhealthy but alive (%s): leaving it", key, health.message)
                return
            record = self._ensure_client(key, self._filesystem(record), parse(record.settings), record.subdir)
            for volume in volumes:
                self._repair_volume(volume, record)

    def _repair_volume(self, volume: VolumeRecord, client: ClientRecord) -> None:
        try:
            if self._mount_staging(volume, client):
                log.warning("re-bound staging path %s of volume %s", volume.staging_path, volume.volume_id)
        except (CsiError, OSError) as exc:
            log.error("cannot repair staging path %s: %s", volume.staging_path, exc)
            return
        for target, pub in volume.publishes.items():
            # A dead mount fails every stat with ENOTCONN: it is there if mountinfo says so.
            if top_mount(target) is None and not os.path.isdir(target):
                log.warning("target %s of volume %s is gone; not recreating it", target, volume.volume_id)
                continue
            try:
                if self._mount_target(volume, client, target, pub):
                    log.warning("re-bound target %s of volume %s", target, volume.volume_id)
            except (CsiError, OSError) as exc:
                log.error("cannot repair target %s: %s", target, exc)

    def _unmount_unknown_clients(self) -> None:
        """Client mounts under <state>/mnt that no record knows (e.g. a record was lost)."""
        mnt_root = str(self.state.root / "mnt") + "/"
        known = {c.mountpoint for c in self.state.clients()}
        for mount in read_mounts():
            if mount.mountpoint.startswith(mnt_root) and mount.mountpoint not in known and mount.is_fusecache:
                log.warning("unmounting unknown FUSE client mount %s", mount.mountpoint)
                try:
                    unmount_stack(mount.mountpoint, only=(FUSECACHE_FSTYPE,))
                except OSError as exc:
                    log.error("cannot unmount %s: %s", mount.mountpoint, exc)


def _inside(client: ClientRecord, subdir: str) -> str:
    """`subdir` of the filesystem as a path below the client's mountpoint ('' for its root)."""
    rel = os.path.relpath(subdir, client.subdir)
    if rel == ".":
        return ""
    if rel.startswith(".."):
        raise internal(f"volume directory {subdir} is outside the client's root {client.subdir}")
    return "/" + rel


def _lookup_path(meta, path: str) -> int:  # type: ignore[no-untyped-def]
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        ino = meta.lookup(ino, part.encode()).ino
    return ino


def _remove_dir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise internal(f"cannot remove {path}: {exc.strerror}") from exc
