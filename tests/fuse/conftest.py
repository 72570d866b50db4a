from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.helpers import Volume, format_volume
from tests.servers import S3Server


@pytest.fixture(params=["file", "s3"])
def volume(request: pytest.FixtureRequest, meta_url: str, tmp_path: Path, s3_server: S3Server) -> Iterator[Volume]:
    """A freshly formatted volume on both object stores; every mount made is cleaned up."""
    bucket = None
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket_url")
    vol = format_volume(meta_url, tmp_path, request.param, s3_server, bucket)
    try:
        yield vol
    finally:
        vol.cleanup()


@pytest.fixture(params=["file", "s3"])
def gc_volume(request: pytest.FixtureRequest, meta_url: str, tmp_path: Path, s3_server: S3Server) -> Iterator[Volume]:
    """A volume without trash whose dropped data is deleted after 1 s (not 5 min), for
    tests that watch objects leave the store."""
    bucket = request.getfixturevalue("bucket_url") if request.param == "s3" else None
    vol = format_volume(meta_url, tmp_path, request.param, s3_server, bucket,
                        "--trash-days", "0", "--garbage-delay", "1s")
    try:
        yield vol
    finally:
        vol.cleanup()


@pytest.fixture
def file_volume(meta_url: str, tmp_path: Path) -> Iterator[Volume]:
    """A volume on the local store only, for behaviour that does not depend on the store."""
    vol = format_volume(meta_url, tmp_path, "file", None, None)
    try:
        yield vol
    finally:
        vol.cleanup()


@pytest.fixture
def mnt(volume: Volume) -> Path:
    """The path of one mount of a fresh volume."""
    return volume.mount().path


@pytest.fixture
def s3_volume(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> Iterator[Volume]:
    """An S3 volume with 1 MiB blocks (small blocks keep the cache tests fast)."""
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url, "--block-size", "1M")
    try:
        yield vol
    finally:
        vol.cleanup()
