"""Asking the fusecache client that serves a path for JSON, through its virtual xattrs."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from ..errors import CliError
from ..mountinfo import FUSECACHE_FSTYPE, owning_mount


def read_client_json(path: str, xattr: str, what: str, follow_symlinks: bool = True) -> Any:
    """A virtual xattr answered, as JSON, by the fusecache client serving `path`.

    CliError (one readable line) when the path is missing, not on a fusecache mount, or
    its client is not running."""
    if not os.path.lexists(path):
        raise CliError(f"{path}: no such file or directory")
    entry = owning_mount(path)
    if entry is None or entry.fstype != FUSECACHE_FSTYPE:
        raise CliError(f"{path} is not inside a fusecache mount")
    try:
        raw = os.getxattr(path, xattr, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise CliError(f"{path}: the fusecache client of this mount is not running") from None
        raise CliError(f"{path}: cannot read {what}: {exc.strerror}") from None
    return json.loads(raw)
