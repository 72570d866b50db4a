"""Redis META_URL parsing and client construction.

Accepted forms (the password may be left out of the URL and given in $META_PASSWORD,
which wins over the URL):

    redis://[[user]:password@]host[:port][/db][?prefix=NAME]
    rediss://...                                  (TLS; ?ssl_ca_certs=, ?ssl_certfile=,
                                                   ?ssl_keyfile=, ?ssl_cert_reqs=none)
    redis+sentinel://[[user]:password@]host1:port,host2:port[/db]?master=NAME
    redis+cluster://[[user]:password@]host:port[,host:port...]   (db must be 0)

`prefix` names the hash tag every key of the volume carries (default "fc"). Sentinels
themselves are authenticated with $SENTINEL_PASSWORD when it is set.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import MetaError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
DEFAULT_PREFIX = "fc"
DEFAULT_PORTS = {"redis": 6379, "sentinel": 26379, "cluster": 6379}
# Many VFS worker threads share one client; callers wait for a free connection beyond this.
MAX_CONNECTIONS = 64
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed META_URL."""

    kind: str  # "redis" | "sentinel" | "cluster"
    hosts: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: dict[str, str] = field(default_factory=dict)
    master: str = ""
    prefix: str = DEFAULT_PREFIX


def _split(url: str) -> tuple[str, str, str, str]:
    """scheme, userinfo, hosts, rest (path and query)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise MetaError("invalid meta URL: expected scheme://host")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo = ""
    return scheme.lower(), userinfo, hosts, tail


def redact_url(url: str) -> str:
    """`url` with any password replaced by ****, safe for logs and messages."""
    try:
        scheme, userinfo, hosts, tail = _split(url)
    except MetaError:
        return "<invalid url>"
    if not userinfo:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':****' if colon else ''}@{hosts}{tail}"


def _parse_hosts(text: str, default_port: int) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise MetaError(f"invalid port in meta URL: {port_text!r}") from None
        hosts.append((host or "localhost", port))
    return hosts or [("localhost", default_port)]


def parse_url(url: str) -> RedisTarget:
    scheme, userinfo, hosts_text, tail = _split(url)
    if scheme not in SCHEMES:
        raise MetaError(f"unsupported meta URL scheme {scheme!r} (expected redis://, rediss://, "
                        "redis+sentinel:// or redis+cluster://)")
    tls = scheme.startswith("rediss")
    kind = scheme.partition("+")[2] or "redis"
    path, _, query_text = tail.partition("?")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    db_text = path.strip("/")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise MetaError(f"invalid database number in meta URL: {db_text!r}") from None
    if kind == "cluster" and db != 0:
        raise MetaError("Redis Cluster has only database 0")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    env_password = os.environ.get("META_PASSWORD")
    if env_password:
        password = env_password
    prefix = query.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX_RE.match(prefix):
        raise MetaError(f"invalid prefix {prefix!r}: use 1-64 letters, digits, '_', '.', ':' or '-'")
    master = query.get("master", "")
    if kind == "sentinel" and not master:
        raise MetaError("a redis+sentinel:// URL needs ?master=NAME")
    return RedisTarget(
        kind=kind,
        hosts=_parse_hosts(hosts_text, DEFAULT_PORTS[kind]),
        db=db,
        username=username,
        password=password,
        tls=tls,
        tls_options={k: v for k, v in query.items() if k in _TLS_OPTIONS},
        master=master,
        prefix=prefix,
    )


# Every Redis call is bounded (docs/data-safety.md): one attempt waits at most
# CONNECT_TIMEOUT to connect and SOCKET_TIMEOUT for its reply; a failed attempt is retried,
# with backoff capped at MAX_BACKOFF so that a server coming back is used within a second,
# until RETRY_WINDOW has passed. A call therefore fails (EIO) at most GIVE_UP_AFTER seconds
# after it started, whatever the server does (crashed, SIGSTOPped, unreachable).
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
RETRY_WINDOW = 10.0
MAX_BACKOFF = 0.5
GIVE_UP_AFTER = RETRY_WINDOW + CONNECT_TIMEOUT + SOCKET_TIMEOUT
# Replies that say the command did not run and may run later (BUSY: a long script runs).
_RETRYABLE_REPLIES = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "BUSY")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed call may succeed if tried again (not refused credentials)."""
    if isinstance(exc, redis.AuthenticationError):
        return False
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_RETRYABLE_REPLIES)


def call_with_retries(attempt: Callable[[int], _T], window: float = RETRY_WINDOW) -> _T:
    """`attempt(n)` (n = attempts made before) until it succeeds, fails for good, or the
    retry window is over. The caller must make a repeated attempt safe: a lost reply does
    not mean the call did not run (see lua.py on operation tokens)."""
    deadline = time.monotonic() + window
    delay = 0.05
    tries = 0
    while True:
        try:
            return attempt(tries)
        except Exception as exc:
            if not is_retryable(exc) or time.monotonic() + delay > deadline:
                raise
            log.info("metadata call failed (%s: %s); retrying", type(exc).__name__, exc)
        time.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF)
        tries += 1


def _common_kwargs(target: RedisTarget) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 30,
        # No retries inside redis-py: it would repeat a script whose reply was lost without
        # telling us. RedisMeta retries, with operation tokens (call_with_retries).
        "retry": Retry(NoBackoff(), 0),
    }
    if target.tls:
        kwargs["ssl"] = True
        kwargs.update(target.tls_options)
    return kwargs


def _scrub(text: str, target: RedisTarget) -> str:
    if target.password:
        text = text.replace(target.password, "****")
    return text


def connect(url: str) -> tuple[redis.Redis | RedisCluster, RedisTarget]:
    """A verified client for `url`; MetaError (without secrets) when it cannot be used."""
    target = parse_url(url)
    shown = redact_url(url)
    try:
        client = _make_client(target)
        call_with_retries(lambda _: client.ping(), window=CONNECT_TIMEOUT)
    except MetaError:
        raise
    except redis.AuthenticationError as exc:
        raise MetaError(f"Redis at {shown} rejected the credentials: {_scrub(str(exc), target)}") from None
    except redis.RedisError as exc:
        reason = _scrub(str(exc), target) or type(exc).__name__
        if "NOAUTH" in reason or "WRONGPASS" in reason:
            raise MetaError(f"Redis at {shown} rejected the credentials: {reason}") from None
        raise MetaError(f"cannot use Redis at {shown}: {reason}") from None
    except OSError as exc:
        raise MetaError(f"cannot connect to Redis at {shown}: {_scrub(str(exc), target)}") from None
    log.debug("connected to %s", shown)
    return client, target


def _make_client(target: RedisTarget) -> redis.Redis | RedisCluster:
    kwargs = _common_kwargs(target)
    if target.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.hosts]
        return RedisCluster(startup_nodes=nodes, max_connections=MAX_CONNECTIONS, **kwargs)  # type: ignore[arg-type]
    if target.kind == "sentinel":
        sentinel_password = os.environ.get("SENTINEL_PASSWORD") or None
        sentinel = Sentinel(
            target.hosts,
            sentinel_kwargs={"password": sentinel_password, "socket_timeout": 5.0},
            socket_connect_timeout=5.0,
        )
        return sentinel.master_for(target.master, db=target.db, max_connections=MAX_CONNECTIONS,
                                   **kwargs)  # type: ignore[arg-type]
    host, port = target.hosts[0]
    connection_class: type[redis.Connection] = redis.Connection
    if target.tls:
        connection_class = redis.SSLConnection
    else:
        kwargs.pop("ssl", None)
    pool = redis.BlockingConnectionPool(
        host=host, port=port, db=target.db, max_connections=MAX_CONNECTIONS, timeout=CONNECT_TIMEOUT,
        connection_class=connection_class, **{k: v for k, v in kwargs.items() if k != "ssl"},
    )
    return redis.Redis(connection_pool=pool)
