"""Pieces shared by several subcommands: opening the volume from a META_URL."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import CliError, MetaError, ObjectStoreError
from ..meta.base import Meta
from ..object.base import ObjectStore
from ..types import VolumeSettings
from .secrets import mask_url

if TYPE_CHECKING:
    from ..meta.redis import RedisMeta


def connect_meta(url: str) -> Meta:
    from ..meta import open_meta

    try:
        return open_meta(url)
    except MetaError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"invalid META_URL {mask_url(url)}: {exc}", exit_code=2) from None


def load_volume(meta: Meta) -> VolumeSettings:
    """The volume's settings, with credentials from env ACCESS_KEY/SECRET_KEY taking precedence."""
    try:
        settings = meta.load()
    except MetaError as exc:
        raise CliError(str(exc)) from None
    refuse_destroyed(settings)
    access = os.environ.get("ACCESS_KEY")
    secret = os.environ.get("SECRET_KEY")
    if access or secret:
        settings = replace(
            settings, access_key=access or settings.access_key, secret_key=secret or settings.secret_key
        )
    return settings


def refuse_destroyed(settings: VolumeSettings) -> None:
    """A volume `destroy` has begun on may have lost objects, and one a `load` has not
    finished lacks some: nothing opens either."""
    from ..meta.destroy import being_destroyed
    from ..meta.dump import LOADING

    if being_destroyed(settings):
        raise CliError(f"volume {settings.name!r} is being destroyed; to finish, run "
                       f"'fusecache destroy META_URL {settings.uuid}' again")
    if LOADING in settings.extra:
        raise CliError(f"volume {settings.name!r} is not completely loaded; to finish, run "
                       "'fusecache load META_URL FILE' again with the same dump")


def open_store(settings: VolumeSettings) -> ObjectStore:
    """The volume's object store, or CliError naming why it cannot be used."""
    from ..object import create_store

    try:
        return create_store(settings.storage, settings.bucket, settings.access_key, settings.secret_key)
    except (ObjectStoreError, ValueError) as exc:
        raise CliError(str(exc)) from None


def redis_engine(meta: Meta, command: str) -> RedisMeta:
    """Commands that read the whole volume speak the Redis engine's schema."""
    from ..meta.redis import RedisMeta

    if not isinstance(meta, RedisMeta):
        raise CliError(f"{command} supports Redis metadata only")
    return meta


def eviction_problem(meta: Meta) -> str | None:
    """Why Redis might drop metadata under memory pressure, or None. A Redis that evicts
    keys (any maxmemory-policy but noeviction) can silently lose files and slices."""
    policy = getattr(meta, "server_config", lambda _: None)("maxmemory-policy")
    if policy is None or policy == "noeviction":
        return None
    return (f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis would evict metadata keys "
            "and lose files; set it to noeviction (CONFIG SET maxmemory-policy noeviction)")


@contextmanager
def whole_volume(meta_url: str, command: str, with_store: bool = True) -> Iterator[
        tuple[RedisMeta, VolumeSettings, ObjectStore | None]]:
    """The engine, settings and store of a volume for a command that reads all of it (fsck,
    gc); everything is closed on the way out, failures become one-line CliErrors."""
    meta = redis_engine(connect_meta(meta_url), command)
    store = None
    try:
        settings = load_volume(meta)
        store = open_store(settings) if with_store else None
        yield meta, settings, store
    except (MetaError, ObjectStoreError) as exc:
        raise CliError(str(exc)) from None
    finally:
        if store is not None:
            store.close()
        meta.shutdown()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a clear usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is less than 1")
    return value
