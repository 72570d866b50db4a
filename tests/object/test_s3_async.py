"""The lean data path's GETs on the trio event loop (object/s3_async.py), against a real S3
server: bytes by hash, kept-alive connections, and the same errors, retries and time
bounds as the threaded clients."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from fusecache.errors import ObjectNotFound, ObjectStoreError
from fusecache.object.s3 import S3Store
from tests.lossy_proxy import LossyProxy
from tests.servers import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, free_port

WRONG_SECRET = "wrongSecret-DO-NOT-LEAK-43"


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_gets_on_the_loop_return_the_stored_bytes_over_kept_alive_connections(
        s3_server: S3Server, bucket_url: str) -> None:
    store = S3Store(bucket_url, s3_server.access_key, s3_server.secret_key, data_client="lean")
    assert store.async_get
    rng = random.Random(3)
    blobs = {f"dir/k{i} odd+name": rng.randbytes(size)
             for i, size in enumerate([0, 1, 110_000, 4 << 20, (4 << 20) + 7])}
    for key, data in blobs.items():
        store.put(key, data)

    async def main() -> None:
        for key, data in blobs.items():
            assert digest(await store.aget(key)) == digest(data), key
        with pytest.raises(ObjectNotFound):
            await store.aget("no/such/key")
        got: dict[str, str] = {}

        async def one(i: int, key: str) -> None:
            got[f"{i}:{key}"] = digest(await store.aget(key))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                for key in blobs:
                    nursery.start_soon(one, i, key)
        assert got == {f"{i}:{k}": digest(d) for i in range(8) for k, d in blobs.items()}

    run(main)
    assert store._async is not None
    opened = store._async.connections_opened
    assert opened <= 64  # bounded by max_pool_connections
    run(main)  # a second event loop gets connections of its own and the same bytes
    sequential = store._async.connections_opened

    async def serial() -> None:
        for _ in range(50):
            await store.aget("dir/k2 odd+name")

    run(serial)
    assert store._async.connections_opened - sequential == 1  # one connection, kept alive
    store.close()


def test_the_boto3_client_keeps_gets_on_threads(s3_server: S3Server, bucket_url: str) -> None:
    store = S3Store(bucket_url, s3_server.access_key, s3_server.secret_key)
    assert not store.async_get
    with pytest.raises(NotImplementedError):
        run(lambda: store.aget("k"))


def test_a_wrong_secret_is_access_denied_at_once_and_never_shown(
        s3_server: S3Server, bucket_url: str) -> None:
    store = S3Store(bucket_url, s3_server.access_key, WRONG_SECRET, data_client="lean")
    started = time.monotonic()
    with pytest.raises(ObjectStoreError) as info:
        run(lambda: store.aget("k"))
    assert "access denied" in str(info.value) and WRONG_SECRET not in f"{info.value!r} {info.value}"
    assert time.monotonic() - started < 5


def test_a_missing_bucket_is_named(s3_server: S3Server) -> None:
    store = S3Store(f"{s3_server.endpoint}/no-such-bucket", s3_server.access_key, s3_server.secret_key,
                    data_client="lean")
    with pytest.raises(ObjectStoreError) as info:
        run(lambda: store.aget("k"))
    assert str(info.value) == f"bucket 'no-such-bucket' does not exist at {s3_server.endpoint}"


def test_an_unreachable_endpoint_fails_after_bounded_retries() -> None:
    closed = free_port()
    store = S3Store(f"http://127.0.0.1:{closed}/bucket", S3_ACCESS_KEY, S3_SECRET_KEY, connect_timeout=1,
                    max_attempts=3, backoff_base=0.05, data_client="lean")
    started = time.monotonic()
    with pytest.raises(ObjectStoreError) as info:
        run(lambda: store.aget("k"))
    assert time.monotonic() - started < 5
    assert f"cannot reach S3 endpoint http://127.0.0.1:{closed} after 3 attempt(s)" in str(info.value)


def test_a_server_that_stops_answering_times_out_and_a_lost_reply_is_retried(
        s3_server: S3Server, bucket_url: str) -> None:
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    bucket = bucket_url.rsplit("/", 1)[1]
    with LossyProxy(port) as proxy:
        store = S3Store(f"http://127.0.0.1:{proxy.port}/{bucket}", s3_server.access_key, s3_server.secret_key,
                        read_timeout=1, max_attempts=2, backoff_base=0.05, data_client="lean")
        data = random.Random(9).randbytes(200_000)
        store.put("k", data)
        # A reply lost on a kept-alive connection: the GET is tried again and succeeds.
        assert digest(run(lambda: store.aget("k"))) == digest(data)
        proxy.lose_reply_to(b"GET /")
        assert digest(run(lambda: store.aget("k"))) == digest(data)
        assert proxy.lost == 1
        # A server that answers nothing: each attempt ends at the read timeout.
        proxy.hold()
        started = time.monotonic()
        with pytest.raises(ObjectStoreError, match="after 2 attempt"):
            run(lambda: store.aget("k"))
        assert time.monotonic() - started < 4
        proxy.release()
        assert digest(run(lambda: store.aget("k"))) == digest(data)
