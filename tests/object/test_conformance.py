"""Every object store engine against the one conformance suite (tests/object/conformance.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusecache.object.base import ObjectStore
from fusecache.object.local import LocalStore
from fusecache.object.s3 import S3Store
from tests.object.conformance import CHECKS
from tests.servers import S3Server


@pytest.fixture(params=["s3", "s3-prefix-small-pages", "s3-lean", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    s: ObjectStore
    if request.param == "local":
        s = LocalStore(tmp_path / "objects")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        url: str = request.getfixturevalue("bucket_url")
        if request.param == "s3":
            s = S3Store(url, server.access_key, server.secret_key)
        elif request.param == "s3-lean":  # the lean data path for GET and PUT, under a prefix
            s = S3Store(f"{url}/lean", server.access_key, server.secret_key, data_client="lean")
        else:
            # A key prefix inside the bucket, and 4-key server pages so every listing pages.
            s = S3Store(f"{url}/vol/one", server.access_key, server.secret_key, list_page_size=4)
    yield s
    s.close()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_store(store: ObjectStore, check: Callable[[ObjectStore], None]) -> None:
    check(store)


def test_prefix_keeps_keys_inside(s3_server: S3Server, bucket_url: str) -> None:
    """A store on bucket/vol sees only its own keys and writes them under vol/."""
    inner = S3Store(f"{bucket_url}/vol", s3_server.access_key, s3_server.secret_key)
    outer = S3Store(bucket_url, s3_server.access_key, s3_server.secret_key)
    try:
        outer.put("other", b"o")
        outer.put("volume", b"not under vol/")
        inner.put("k", b"inner")
        assert [i.key for i in inner.list()] == ["k"]
        assert outer.get("vol/k") == b"inner"
        assert sorted(i.key for i in outer.list()) == ["other", "vol/k", "volume"]
    finally:
        inner.close()
        outer.close()
