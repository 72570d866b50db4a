"""Where an import reads from: an S3 bucket URL with an optional prefix, or a local
directory, opened with its own credentials and checked before anything is made."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ObjectStoreError
from ..object.base import ObjectStore
from ..secrets import mask_url

_URL = re.compile(r"^https?://")


class SourceError(Exception):
    """A source or destination an import cannot use; the message is one line for a user."""


@dataclass(frozen=True)
class SourceSpec:
    storage: str  # "s3" or "file"
    bucket: str  # bucket URL with its prefix, or a directory (real path)
    access_key: str = ""
    secret_key: str = ""

    @property
    def shown(self) -> str:
        return mask_url(self.bucket)


def parse_source(text: str, access_key: str = "", secret_key: str = "") -> SourceSpec:
    if _URL.match(text):
        return SourceSpec("s3", text.rstrip("/"), access_key, secret_key)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text):
        raise SourceError(f"SOURCE {text!r}: give an http(s):// bucket URL or a local directory")
    if not os.path.isdir(text):
        raise SourceError(f"SOURCE {text} is not a directory (nor an http(s):// bucket URL)")
    return SourceSpec("file", os.path.realpath(text))


def refuse_own_store(spec: SourceSpec, settings: object) -> None:
    """A source inside the volume's own objects would let the volume read (and its
    collector reason about) its own blocks as foreign data."""
    own_storage, own_bucket, name = (getattr(settings, a) for a in ("storage", "bucket", "name"))
    storage, bucket = spec.storage, spec.bucket
    if storage != own_storage:
        return
    if storage == "file":
        own = os.path.realpath(own_bucket)
        if bucket == own or bucket.startswith(own + os.sep) or own.startswith(bucket + os.sep):
            raise SourceError(f"SOURCE {bucket} overlaps the volume's own store {own}")
        return
    from ..object.s3 import parse_bucket_url

    src, mine = parse_bucket_url(bucket), parse_bucket_url(own_bucket)
    if (src.endpoint, src.bucket) == (mine.endpoint, mine.bucket):
        ours = mine.prefix + name + "/"
        if src.prefix.startswith(ours) or ours.startswith(src.prefix):
            raise SourceError(f"SOURCE {mask_url(bucket)} overlaps the volume's own objects ({ours} in the same "
                           "bucket)")




def open_source(spec: SourceSpec) -> ObjectStore:
    """The source's store, checked to answer and to hold at least one object."""
    from ..object import create_store

    try:
        store = create_store(spec.storage, spec.bucket, spec.access_key, spec.secret_key, fail_fast=True) \
            if spec.storage == "s3" else create_store(spec.storage, spec.bucket)
    except ObjectStoreError as exc:
        raise SourceError(f"SOURCE {spec.shown}: {exc}") from None
    try:
        if not store.list("", "", 1):
            raise SourceError(f"SOURCE {spec.shown} has no objects")
    except ObjectStoreError as exc:
        store.close()
        raise SourceError(f"SOURCE {spec.shown}: {exc}") from None
    except SourceError:
        store.close()
        raise
    return store
