"""Pieces shared by several subcommands: opening the volume from a META_URL."""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import CliError, MetaError
from ..meta.base import Meta
from ..types import VolumeSettings
from .secrets import mask_url


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
    access = os.environ.get("ACCESS_KEY")
    secret = os.environ.get("SECRET_KEY")
    if access or secret:
        settings = replace(
            settings, access_key=access or settings.access_key, secret_key=secret or settings.secret_key
        )
    return settings
