"""Error types shared by every layer.

`FsError` carries an errno and crosses layer boundaries unchanged until `fuse/ops.py`
turns it into `pyfuse3.FUSEError`. `CliError` is a user-facing failure: the CLI prints
its message as one line on stderr and exits with `exit_code`.
"""

from __future__ import annotations

import errno
import os


class FsError(Exception):
    """A filesystem operation failed with a POSIX errno."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, detail or os.strerror(err))
        self.errno = err
        self.detail = detail

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {self.detail or os.strerror(self.errno)}"


class UnfilledDir(FsError):
    """ENOENT from a directory of a lazy import whose entries are not listed yet: a caller
    that can list it (vfs) does so and looks again; any other caller sees plain ENOENT."""

    def __init__(self) -> None:
        super().__init__(errno.ENOENT, "a lazily imported directory not listed yet")


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, then exit(exit_code)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ObjectNotFound(Exception):
    """The object store has no object under the requested key."""


class ObjectStoreError(Exception):
    """The object store failed a request (after retries where they apply)."""


class ObjectChanged(ObjectStoreError):
    """The object is no longer the version a caller expected (another ETag or size)."""


class StoreUnreachable(ObjectStoreError):
    """Nobody answers at the object store's endpoint (refused, unknown host, no answer)."""


class MetaError(Exception):
    """The metadata engine is unreachable or misconfigured (not an errno condition)."""
