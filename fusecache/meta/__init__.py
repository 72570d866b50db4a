"""Metadata engines. `open_meta(url)` picks the engine from the META_URL scheme."""

from __future__ import annotations

from .base import Meta
from .connect import SCHEMES, connect, redact_url

__all__ = ["Meta", "open_meta", "redact_url"]


def open_meta(url: str) -> Meta:
    """A connected engine for `url`; MetaError (never showing a password) if unusable."""
    from ..errors import MetaError

    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise MetaError(f"unsupported meta URL {redact_url(url)!r}: expected redis://, rediss://, "
                        "redis+sentinel:// or redis+cluster://")
    from .redis import RedisMeta

    client, target = connect(url)
    return RedisMeta(client, prefix=target.prefix, name=redact_url(url))
