"""The wrapper every RPC handler goes through.

`@rpc(lock=...)` gives a servicer method, in this order:
1. secret values of the request are registered for log scrubbing, and the request is logged
   with every `csi_secret` field blanked (the proto marks them; no list to keep in sync);
2. a per-volume lock: concurrent calls for the same volume are serialised, but a call never
   waits beyond its own gRPC deadline (or `max_wait` without one): then it fails ABORTED,
   the spec's "operation pending for volume";
3. exceptions become gRPC statuses: `CsiError` carries its code, `FsError` is mapped from
   errno, `MetaError` (metadata engine unreachable) is UNAVAILABLE, anything else INTERNAL.
   Messages are scrubbed before they leave the process.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from fusecache.errors import FsError, MetaError

from ._proto import csi_pb2
from .errors import CsiError
from .logs import MASK, remember_secret, scrub

log = logging.getLogger(__name__)

_ERRNO_CODES = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EDQUOT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EBUSY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENOTCONN: grpc.StatusCode.UNAVAILABLE,
    errno.ECONNABORTED: grpc.StatusCode.UNAVAILABLE,
    errno.ETIMEDOUT: grpc.StatusCode.UNAVAILABLE,
}


# -- secrets in requests -------------------------------------------------------------------
def _is_secret(field: Any) -> bool:
    options = field.GetOptions()
    return bool(options.HasExtension(csi_pb2.csi_secret) and options.Extensions[csi_pb2.csi_secret])


def _singular_message(field: Any) -> bool:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    return field.message_type is not None and not repeated


def secret_values(message: Message) -> list[str]:
    """Every value of every `csi_secret` field of `message` (recursively)."""
    found: list[str] = []
    for field, value in message.ListFields():
        if _is_secret(field):
            found.extend(value.values() if hasattr(value, "values") else [str(value)])
        elif _singular_message(field):
            found.extend(secret_values(value))
    return found


def redacted(message: Message) -> dict[str, Any]:
    """The message as a dict for logging, secret values replaced (their keys are kept)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _blank(copy)
    return json_format.MessageToDict(copy, preserving_proto_field_name=True)


def _blank(message: Message) -> None:
    for field, value in message.ListFields():
        if _is_secret(field):
            if hasattr(value, "keys"):
                for key in list(value.keys()):
                    value[key] = MASK
            else:
                setattr(message, field.name, MASK)
        elif _singular_message(field):
            _blank(value)


# -- per-volume locks ----------------------------------------------------------------------
class VolumeLocks:
    """Named locks created on demand and dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=max(timeout, 0.0)):
                raise CsiError(grpc.StatusCode.ABORTED, f"an operation is already pending for volume {key}")
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


# -- the decorator -------------------------------------------------------------------------
Handler = Callable[[Any, Any, grpc.ServicerContext], Message]

#: how long a call without a deadline may wait for its volume's lock
DEFAULT_MAX_WAIT = 60.0
#: time left to do the work once the lock is ours
_DEADLINE_MARGIN = 1.0


def lock_wait(context: grpc.ServicerContext, max_wait: float = DEFAULT_MAX_WAIT) -> float:
    """How long a call may wait for a lock: never beyond its own deadline."""
    remaining = context.time_remaining()
    return max_wait if remaining is None else min(max_wait, remaining - _DEADLINE_MARGIN)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, CsiError):
        return exc.code, exc.message
    if isinstance(exc, FsError):
        return _ERRNO_CODES.get(exc.errno, grpc.StatusCode.INTERNAL), str(exc)
    if isinstance(exc, MetaError):
        return grpc.StatusCode.UNAVAILABLE, f"metadata engine: {exc}"
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def rpc(
    lock: Callable[[Any], str] | None = None, max_wait: float = DEFAULT_MAX_WAIT, quiet: bool = False
) -> Callable[[Handler], Handler]:
    """Wrap a servicer method; `lock(request)` names the volume to serialise on ('' = none).
    `quiet` logs successful calls at DEBUG (probes and capability queries come every few seconds)."""

    def wrap(method: Handler) -> Handler:
        name = method.__name__
        ok_level = logging.DEBUG if quiet else logging.INFO

        @functools.wraps(method)
        def handler(self: Any, request: Message, context: grpc.ServicerContext) -> Message:
            started = time.monotonic()
            try:
                for value in secret_values(request):
                    remember_secret(value)
                log.log(ok_level, "%s called", name, extra={"fields": {"rpc": name, "request": redacted(request)}})
                key = lock(request) if lock is not None else ""
                if key:
                    with self.volume_locks.hold(key, lock_wait(context, max_wait)):
                        response = method(self, request, context)
                else:
                    response = method(self, request, context)
            except Exception as exc:
                code, message = status_of(exc)
                message = scrub(message)
                level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
                log.log(level, "%s failed: %s %s", name, code.name, message,
                        exc_info=code == grpc.StatusCode.INTERNAL,
                        extra={"fields": {"rpc": name, "code": code.name,
                                          "ms": round((time.monotonic() - started) * 1000)}})
                context.abort(code, message)
            log.log(ok_level, "%s ok", name, extra={"fields": {
                "rpc": name, "ms": round((time.monotonic() - started) * 1000),
                "response": json_format.MessageToDict(response, preserving_proto_field_name=True)}})
            return response

        return handler

    return wrap
