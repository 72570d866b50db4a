"""Fixtures of the metadata tests: a freshly formatted volume on the test redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fusecache.meta import open_meta
from fusecache.meta.redis import RedisMeta
from tests.meta.conformance import SETTINGS


@pytest.fixture
def meta(meta_url: str) -> Iterator[RedisMeta]:
    m = open_meta(meta_url)
    assert isinstance(m, RedisMeta)
    m.format(SETTINGS)
    yield m
    m.shutdown()
