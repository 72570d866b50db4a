"""`importSource`: a volume made from a dataset that already lives in a bucket (the
`fusecache import` library, fusecache.importer), so a PV serves an existing prefix.

- Dynamic: the StorageClass parameter `importSource` (http(s)://host:port/bucket[/prefix]);
  CreateVolume imports into the new volume's directory before it becomes visible
  (volumes.create_imported).
- Static: the PV's `volumeAttributes.importSource`; NodeStage imports into the PV's
  directory once, recorded by the xattr DONE_XATTR on it, then mounts.

The source's credentials come from the request's secrets (the provisioner Secret, or the
PV's nodeStageSecretRef) under SECRET_ACCESS_KEY and SECRET_SECRET_KEY; they are stored
only in the filesystem's metadata (the FUSE clients read the objects with them), never in
a volume context or a marker, and the RPC layer masks every secret value in logs.

Status codes: a malformed source, or one inside the volume's own objects, is
INVALID_ARGUMENT; a source that does not answer, refuses the credentials, has no such
bucket or no objects is FAILED_PRECONDITION (checked before anything is made); a listing
that fails halfway is UNAVAILABLE (nothing is kept; the retry imports again).
"""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Mapping

from fusecache.errors import FsError
from fusecache.importer import SourceError, SourceSpec, Summary, import_tree, parse_source
from fusecache.importer.source import open_source, refuse_own_store
from fusecache.meta.base import Meta
from fusecache.types import ROOT_INO, VolumeSettings

from .errors import failed_precondition, invalid, unavailable
from .logs import remember_secret
from .settings import IMPORT_SOURCE
from .volumes import tree_engine

log = logging.getLogger(__name__)

SECRET_ACCESS_KEY = "importAccessKey"
SECRET_SECRET_KEY = "importSecretKey"
SECRET_KEYS = (SECRET_ACCESS_KEY, SECRET_SECRET_KEY)
# On a static PV's directory: the sources already imported there (masked URLs).
DONE_XATTR = b"trusted.csi.fusecache.io.imported"

_BUCKET_URL = re.compile(r"^https?://[^/]+/[^/]+")


def requested(attributes: Mapping[str, str], secrets: Mapping[str, str]) -> SourceSpec | None:
    """The source `attributes` ask to import, with its credentials from `secrets`; None
    when there is none. INVALID_ARGUMENT for a malformed one."""
    url = attributes.get(IMPORT_SOURCE, "").strip()
    if not url:
        return None
    for key in SECRET_KEYS:
        remember_secret(secrets.get(key, ""))
    # A local directory would be the controller's or one node's, not the cluster's.
    if not _BUCKET_URL.match(url):
        raise invalid(f"{IMPORT_SOURCE} must be an S3 bucket URL, http(s)://host:port/bucket[/prefix]")
    try:
        return parse_source(url, secrets.get(SECRET_ACCESS_KEY, ""), secrets.get(SECRET_SECRET_KEY, ""))
    except SourceError as exc:
        raise invalid(f"{IMPORT_SOURCE}: {exc}") from None


def check(spec: SourceSpec, settings: VolumeSettings) -> None:
    """Is the source usable? Checked before anything is made, so a bad one leaves nothing."""
    try:
        refuse_own_store(spec, settings)
    except SourceError as exc:
        raise invalid(f"{IMPORT_SOURCE}: {exc}") from None
    try:
        open_source(spec).close()
    except SourceError as exc:
        raise failed_precondition(f"{IMPORT_SOURCE}: {exc} (its credentials are the Secret's "
                                  f"{SECRET_ACCESS_KEY} and {SECRET_SECRET_KEY})") from None


def run(meta: Meta, spec: SourceSpec, dest: str, settings: VolumeSettings) -> Summary:
    """Import `spec` under directory `dest` (a path from the filesystem's root). A rerun
    skips the names already there, so it finishes an import cut short."""
    try:
        summary = import_tree(tree_engine(meta), spec, dest, settings)
    except SourceError as exc:
        raise unavailable(f"{IMPORT_SOURCE}: {exc}") from None
    skipped = sum(summary.skipped.values())
    log.info("imported %d objects (%d bytes) from %s into %s: %d already there, %d skipped", summary.files,
             summary.bytes, spec.shown, dest, summary.existing, skipped,
             extra={"fields": {"skipped": summary.skipped}} if skipped else None)
    return summary


def _lookup_dir(meta: Meta, path: str) -> int | None:
    ino = ROOT_INO
    for part in (p for p in path.split("/") if p):
        try:
            attr = meta.lookup(ino, part.encode())
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        ino = attr.ino
    return ino


def _done(meta: Meta, ino: int) -> list[str]:
    try:
        data = json.loads(meta.getxattr(ino, DONE_XATTR))
    except FsError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return []
        raise
    except ValueError:
        return []
    return [str(s) for s in data.get("sources", [])] if isinstance(data, dict) else []


def import_once(meta: Meta, spec: SourceSpec, dest: str, settings: VolumeSettings) -> bool:
    """A static PV's import: done at its first NodeStage, then only a cheap xattr read.
    The record is written after the import, so a node that died halfway leaves none and
    the next NodeStage finishes it. Returns whether it imported now."""
    ino = _lookup_dir(meta, dest)
    if ino is not None and spec.shown in _done(meta, ino):
        return False
    check(spec, settings)
    run(meta, spec, dest, settings)
    ino = _lookup_dir(meta, dest)
    assert ino is not None  # the import made it
    done = _done(meta, ino)
    meta.setxattr(ino, DONE_XATTR, json.dumps({"sources": [*done, spec.shown]}).encode())
    return True
