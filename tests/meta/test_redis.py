"""The conformance suite against RedisMeta on a real redis-server, plus Redis specifics:
URLs, errors that hide passwords, the hash tag of every key, and a client killed mid-work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from fusecache.errors import FsError, MetaError
from fusecache.meta import Meta, open_meta, redact_url
from fusecache.meta.connect import parse_url
from fusecache.meta.redis import RedisMeta
from tests.meta.conformance import ALL_CHECKS, ROOT, SETTINGS, assert_consistent, mkfile, sample_workload
from tests.servers import RedisServer, free_port, start_redis


@pytest.fixture
def meta(meta_url: str) -> Iterator[Meta]:
    m = open_meta(meta_url)
    m.format(SETTINGS)
    yield m
    m.shutdown()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=[c.__name__ for c in ALL_CHECKS])
def test_conformance(meta: Meta, check: Callable[[Meta], None]) -> None:
    check(meta)


def test_engine_type(meta: Meta) -> None:
    assert isinstance(meta, RedisMeta)


# -- URLs -------------------------------------------------------------------------------------
def test_parse_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_PASSWORD", raising=False)
    t = parse_url("redis://:s3cr%40t@example.com:6380/5?prefix=vol1")
    assert (t.kind, t.hosts, t.db, t.password, t.username, t.prefix, t.tls) == (
        "redis", [("example.com", 6380)], 5, "s3cr@t", None, "vol1", False)
    t = parse_url("redis://localhost")
    assert (t.hosts, t.db, t.password, t.prefix) == ([("localhost", 6379)], 0, None, "fc")
    t = parse_url("rediss://user:pw@h:1/2?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert t.tls and t.username == "user" and t.tls_options == {"ssl_cert_reqs": "none", "ssl_ca_certs": "/ca.pem"}
    t = parse_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/3?master=mymaster")
    assert t.kind == "sentinel" and t.master == "mymaster" and t.db == 3
    assert t.hosts == [("s1", 26379), ("s2", 26379), ("::1", 26380)]
    t = parse_url("redis+cluster://:pw@n1:7000,n2:7001")
    assert t.kind == "cluster" and t.hosts == [("n1", 7000), ("n2", 7001)] and t.db == 0
    monkeypatch.setenv("META_PASSWORD", "from-env")
    assert parse_url("redis://:in-url@h/1").password == "from-env"
    for bad, words in [("redis+cluster://h:1/3", "database 0"), ("redis+sentinel://h:1/0", "master"),
                       ("mysql://h/1", "scheme"), ("redis://h/x", "database"), ("redis://h:p/1", "port"),
                       ("redis://h/1?prefix=a{b}", "prefix"), ("localhost:6379", "scheme")]:
        with pytest.raises(MetaError, match=words):
            parse_url(bad)


def test_redact_url() -> None:
    assert redact_url("redis://:topsecret@h:1/2") == "redis://:****@h:1/2"
    assert redact_url("redis://user:top@secret@h:1/2?prefix=x") == "redis://user:****@h:1/2?prefix=x"
    assert redact_url("redis+sentinel://:pw@a:1,b:2/0?master=m") == "redis+sentinel://:****@a:1,b:2/0?master=m"
    assert redact_url("redis://h:1/2") == "redis://h:1/2"
    assert redact_url("redis://user@h:1/2") == "redis://user@h:1/2"
    assert "nonsense" not in redact_url("nonsense")


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    server = start_redis(password="Pa55-w0rd-xyz")
    yield server
    server.stop()


def test_password_auth(password_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_PASSWORD", raising=False)
    m = open_meta(password_server.url(2))
    m.format(SETTINGS, force=True)
    assert m.load() == SETTINGS
    m.shutdown()
    # the password from the environment wins over the URL
    monkeypatch.setenv("META_PASSWORD", password_server.password)
    m = open_meta(f"redis://:wrong@127.0.0.1:{password_server.port}/2")
    assert m.load() == SETTINGS
    m.shutdown()


@pytest.mark.parametrize("password", ["not-the-Pa55", ""])
def test_auth_failure_hides_password(password_server: RedisServer, password: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_PASSWORD", raising=False)
    auth = f":{password}@" if password else ""
    with pytest.raises(MetaError) as info:
        open_meta(f"redis://{auth}127.0.0.1:{password_server.port}/1")
    message = str(info.value)
    assert "credentials" in message and "\n" not in message
    if password:
        assert password not in message


def test_unreachable_server() -> None:
    port = free_port()
    with pytest.raises(MetaError) as info:
        open_meta(f"redis://:secret-pw@127.0.0.1:{port}/1")
    message = str(info.value)
    assert "secret-pw" not in message and str(port) in message and "\n" not in message


def test_wrong_database(redis_server: RedisServer) -> None:
    with pytest.raises(MetaError, match="cannot use Redis") as info:
        open_meta(redis_server.url(500))
    assert "\n" not in str(info.value)


def test_load_unformatted(meta_url: str) -> None:
    m = open_meta(meta_url)
    with pytest.raises(MetaError, match=r"not formatted.*fusecache format"):
        m.load()
    m.shutdown()


def test_server_down_is_meta_error() -> None:
    server = start_redis()
    m = open_meta(server.url(1))
    m.format(SETTINGS)
    server.stop()
    with pytest.raises(MetaError):
        m.getattr(ROOT)
    m.shutdown()


# -- key schema -------------------------------------------------------------------------------
def test_every_key_carries_the_hash_tag(meta_url: str) -> None:
    m = open_meta(meta_url + "?prefix=vol7")
    m.format(SETTINGS)
    sample_workload(m)
    client = redis.Redis.from_url(meta_url)
    keys = [k.decode() for k in client.scan_iter(count=1000)]
    client.close()
    assert len(keys) > 12
    assert all(k.startswith("{vol7}") for k in keys), [k for k in keys if not k.startswith("{vol7}")]
    m.shutdown()


def test_two_volumes_share_a_database(meta_url: str) -> None:
    a = open_meta(meta_url + "?prefix=a")
    b = open_meta(meta_url + "?prefix=b")
    a.format(SETTINGS)
    with pytest.raises(MetaError, match="not formatted"):
        b.load()
    b.format(SETTINGS)
    mkfile(a, ROOT, b"only-in-a")
    assert b.readdir(ROOT) == []
    a.shutdown()
    b.shutdown()


def test_sessions_of_two_clients(meta_url: str) -> None:
    """A file client A holds open stays when client B unlinks it (B cannot know A's
    handles: the check looks at every live session), until A's last close, or until A stops
    heartbeating and B's cleaner ends A's session."""
    a = open_meta(meta_url)
    a.format(SETTINGS)
    b = open_meta(meta_url)
    a.new_session("a", 1, "/a", "v")
    b_sid = b.new_session("b", 2, "/b", "v")
    f = mkfile(a, ROOT, b"f")
    a.open(f.ino)
    a.unlink(ROOT, b"f")
    assert b.getattr(f.ino).nlink == 0
    g = mkfile(b, ROOT, b"g")
    a.open(g.ino)
    b.unlink(ROOT, b"g")
    assert b.getattr(g.ino).nlink == 0, "kept: A holds it open"
    b.open(g.ino)  # still usable through B's descriptor too (e.g. opened by inode)
    b.release(g.ino)
    b.flush_releases()
    a.release(g.ino)
    assert b.getattr(g.ino).nlink == 0, "A's note lingers a moment after the close"
    a.flush_releases()
    with pytest.raises(FsError):
        b.getattr(g.ino)
    time.sleep(1.1)
    b.heartbeat(b_sid)
    assert b.clean_stale_sessions(1.0) == 1
    with pytest.raises(FsError):
        b.getattr(f.ino)
    assert [s.sid for s in b.list_sessions()] == [b_sid]
    a.shutdown()
    b.shutdown()


def test_an_unlinked_file_is_kept_while_a_session_that_died_is_not_cleaned_yet(meta_url: str) -> None:
    """Openers are counted only while their session is live: a crashed client's notes do
    not keep a file once its session is gone."""
    a = open_meta(meta_url)
    a.format(SETTINGS)
    b = open_meta(meta_url)
    a_sid = a.new_session("a", 1, "/a", "v")
    b.new_session("b", 2, "/b", "v")
    f = mkfile(b, ROOT, b"f")
    a.open(f.ino)
    b.close_session(a_sid)  # as the cleaner does for a stale session
    b.unlink(ROOT, b"f")
    with pytest.raises(FsError):
        b.getattr(f.ino)
    a.shutdown()
    b.shutdown()


# -- crash safety -----------------------------------------------------------------------------
_CHURN = textwrap.dedent("""
    import random, sys
    from fusecache.errors import FsError
    from fusecache.meta import open_meta
    m = open_meta(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    dirs = [1]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        parent = rng.choice(dirs)
        try:
            r = rng.random()
            if r < 0.2:
                dirs.append(m.mkdir(parent, b"d%d" % i, 0o755, 0, 0).ino)
            elif r < 0.6:
                m.mknod(parent, b"f%d" % i, 0o100644, 0, 0)
            else:
                entries = m.readdir(parent)
                if entries:
                    e = rng.choice(entries)
                    if r < 0.8:
                        m.rename(parent, e.name, rng.choice(dirs), e.name + b"x")
                    elif e.attr.is_dir:
                        m.rmdir(parent, e.name)
                    else:
                        m.unlink(parent, e.name)
        except FsError:
            pass
""")


def test_clients_killed_mid_work_leave_a_consistent_tree(meta_url: str) -> None:
    m = open_meta(meta_url)
    m.format(SETTINGS)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", _CHURN, meta_url, str(seed)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready", p.stderr.read() if p.stderr else b""
        time.sleep(1.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    assert len(m.readdir(ROOT)) > 0
    assert_consistent(m)
    m.shutdown()


def test_an_inode_counter_behind_its_inodes_never_reuses_a_number(meta: Meta, meta_url: str) -> None:
    """A Redis restart or failover can lose the counter's last increments while inodes made
    with those numbers survive elsewhere (another client's batch). New files, and the
    trash's hour directories, must never take such a number, nor one whose deleted data
    still awaits cleanup."""
    from fusecache.types import SetAttr, Slice

    raw = redis.Redis.from_url(meta_url)
    a = mkfile(meta, ROOT, b"a")
    gone = mkfile(meta, ROOT, b"gone")
    meta.write(gone.ino, 0, Slice(0, meta.reserve_slice_ids(1), 10, 0, 10), time.time_ns())
    meta.unlink(ROOT, b"gone")  # its chunks wait in {P}delfiles / {P}k<ino>
    assert raw.exists(f"{{fc}}k{gone.ino}")
    raw.hset("{fc}counters", "nextinode", min(a.ino, gone.ino) - 1)
    other = open_meta(meta_url)  # a client with no batch yet: it reserves from the counter
    other.load()
    try:
        fresh = [mkfile(other, ROOT, f"n{i}".encode()) for i in range(3)]
        assert {f.ino for f in fresh}.isdisjoint({a.ino, gone.ino})
        assert other.getattr(a.ino) == meta.getattr(a.ino) and other.lookup(ROOT, b"a").ino == a.ino
        raw.hset("{fc}counters", "nextinode", a.ino - 1)
        other.trash_days = 1
        victim = mkfile(meta, ROOT, b"victim")
        other.unlink(ROOT, b"victim")  # makes an hour directory with a number from the counter
        assert meta.getattr(a.ino).is_file, "an hour directory took a live file's number"
        assert meta.getattr(victim.ino).nlink == 0
        meta.setattr(a.ino, SetAttr(size=0))
    finally:
        other.shutdown()
        raw.close()
    from fusecache.meta.trash import purge_expired

    assert purge_expired(meta, 1, now=time.time() + 3 * 86400) == (1, 1)
    assert_consistent(meta)


def test_a_session_cleaned_as_stale_registers_itself_and_its_open_files_again(meta_url: str) -> None:
    """Redis away longer than the stale timeout, or a frozen client: another client closes
    its session. Its next heartbeat takes the session up again with its open-file notes,
    so its open files are kept again from then on."""
    a = open_meta(meta_url)
    a.format(SETTINGS)
    b = open_meta(meta_url)
    b.load()
    raw = redis.Redis.from_url(meta_url)
    try:
        sid = a.new_session("a", 1, "/a", "v")
        f = mkfile(a, ROOT, b"f")
        a.open(f.ino)
        b.close_session(sid)  # as a cleaner does when a's heartbeats stopped
        assert not raw.hexists(f"{{fc}}o{f.ino}", sid)
        a.heartbeat(sid, 5)
        assert sid in {s.sid for s in b.list_sessions()}
        assert raw.hexists(f"{{fc}}o{f.ino}", sid) and raw.hget("{fc}inuse", sid) == b"5"
        b.unlink(ROOT, b"f")
        assert b.getattr(f.ino).nlink == 0, "kept again for a's open"
        a.release(f.ino)
        a.flush_releases()
        with pytest.raises(FsError):
            b.getattr(f.ino)
    finally:
        raw.close()
        a.shutdown()
        b.shutdown()
