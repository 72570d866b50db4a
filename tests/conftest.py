"""Session-wide real services: one redis-server and one S3 server per test run."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, S3Server, start_redis, start_s3

_db_counter = itertools.count(1)
_bucket_counter = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture
def meta_url(redis_server: RedisServer) -> Iterator[str]:
    """A fresh, empty Redis database for one test (63 are available, then they recycle)."""
    import redis

    db = next(_db_counter) % 63 + 1
    client = redis.Redis(port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    yield redis_server.url(db)


@pytest.fixture
def second_meta_url(redis_server: RedisServer, meta_url: str) -> Iterator[str]:
    """Another fresh database of the same server, for tests that move a volume."""
    import redis

    db = next(_db_counter) % 63 + 1
    client = redis.Redis(port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    yield redis_server.url(db)


@pytest.fixture
def bucket_url(s3_server: S3Server) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.make_bucket(f"bucket{next(_bucket_counter)}")
