"""Paths on a fusecache mount, seen from outside the mount: which volume they belong to and
where they are in it, so that a command can work on the volume's metadata directly."""

from __future__ import annotations

import os
import re

from ..errors import CliError
from ..mountinfo import FUSECACHE_FSTYPE, owning_mount
from .client_xattr import read_client_json


def mount_target(target: str) -> tuple[str, str]:
    """(META_URL, path in the volume) of a path on a fusecache mount. The mount names its
    URL without the password: connect_meta then takes it from META_PASSWORD."""
    about = read_client_json(target, "fusecache.stats", "the client's figures")
    url = about.get("meta_url")
    if not url:
        raise CliError(f"{target}: this mount's client is too old to name its volume; use META_URL --path")
    url = re.sub(r"//([^@/]*?):\*{4}@", r"//\1@", url).replace("//@", "//")
    entry = owning_mount(target)
    assert entry is not None and entry.fstype == FUSECACHE_FSTYPE  # read_client_json checked it
    rel = os.path.relpath(os.path.realpath(target), entry.mountpoint)
    path = os.path.normpath(os.path.join("/", about.get("subdir") or "", entry.root.lstrip("/"),
                                         "" if rel == "." else rel))
    return url, path
