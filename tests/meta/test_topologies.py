"""RedisMeta on Redis Cluster (3 masters), behind Sentinel and over TLS: the whole
conformance suite on the cluster (each test in its own hash tag), smoke runs on the others."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import redis

from fusecache.errors import MetaError
from fusecache.meta import Meta, open_meta
from tests.meta.conformance import ALL_CHECKS, ROOT, SETTINGS, assert_consistent, mkfile, sample_workload, write
from tests.meta.topology_servers import (
    Cluster,
    SentinelSetup,
    TlsRedis,
    start_cluster,
    start_sentinel,
    start_tls_redis,
)

_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster()
    yield c
    c.stop()


@pytest.fixture
def cluster_meta(cluster: Cluster) -> Iterator[Meta]:
    m = open_meta(cluster.url(f"t{next(_prefixes)}"))
    m.format(SETTINGS)
    yield m
    m.shutdown()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=[c.__name__ for c in ALL_CHECKS])
def test_conformance_on_cluster(cluster_meta: Meta, check: Callable[[Meta], None]) -> None:
    check(cluster_meta)


def test_cluster_keys_stay_in_one_slot(cluster: Cluster) -> None:
    prefix = f"slot{next(_prefixes)}"
    m = open_meta(cluster.url(prefix))
    m.format(SETTINGS)
    sample_workload(m)
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    slot = client.keyslot("{" + prefix + "}")
    keys = [k for k in client.scan_iter(match="{" + prefix + "}*", count=1000)]
    assert len(keys) > 12
    assert {client.keyslot(k) for k in keys} == {slot}
    client.close()
    m.shutdown()


def test_cluster_rejects_database(cluster: Cluster) -> None:
    with pytest.raises(MetaError, match="database 0"):
        open_meta(cluster.url("x").replace("?", "/2?"))


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelSetup]:
    s = start_sentinel()
    yield s
    s.stop()


def test_sentinel(sentinel: SentinelSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_PASSWORD", raising=False)
    m = open_meta(sentinel.url(db=3))
    m.format(SETTINGS)
    f = mkfile(m, ROOT, b"f")
    write(m, f.ino, 0, 100)
    assert m.getattr(f.ino).size == 100
    assert_consistent(m)
    m.shutdown()
    direct = redis.Redis(port=sentinel.master_port, db=3, password=sentinel.password)
    assert direct.exists("{fc}setting")
    direct.close()


def test_sentinel_unknown_master(sentinel: SentinelSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_PASSWORD", raising=False)
    with pytest.raises(MetaError) as info:
        open_meta(sentinel.url(master="nosuchmaster"))
    assert sentinel.password not in str(info.value)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    server = start_tls_redis()
    yield server
    server.stop()


def test_tls(tls_redis: TlsRedis) -> None:
    m = open_meta(f"rediss://127.0.0.1:{tls_redis.port}/1?ssl_ca_certs={tls_redis.ca_file}")
    m.format(SETTINGS, force=True)
    f = mkfile(m, ROOT, b"over-tls")
    assert m.lookup(ROOT, b"over-tls").ino == f.ino
    m.shutdown()
    m = open_meta(f"rediss://127.0.0.1:{tls_redis.port}/1?ssl_cert_reqs=none")
    assert m.lookup(ROOT, b"over-tls").ino == f.ino
    m.shutdown()


def test_tls_untrusted_certificate(tls_redis: TlsRedis) -> None:
    with pytest.raises(MetaError, match="cannot use Redis") as info:
        open_meta(f"rediss://:pw-not-shown@127.0.0.1:{tls_redis.port}/1")
    assert "pw-not-shown" not in str(info.value)


def test_plain_client_on_tls_port(tls_redis: TlsRedis) -> None:
    with pytest.raises(MetaError):
        open_meta(f"redis://127.0.0.1:{tls_redis.port}/1")
