"""`S3Store`: the object store on an S3-compatible server (AWS S3, MinIO, `rclone serve s3`) via boto3.

One boto3 client is shared by every thread (botocore clients are thread-safe); its urllib3
pool is sized for the worker threads that call in. botocore's own retries are switched off
so that this module is the only place that retries, with one policy: temporary failures
(connection errors, timeouts, throttling, 5xx, a body cut short) are retried with jittered
exponential backoff; everything else is translated at once into `ObjectNotFound` or an
`ObjectStoreError` whose message names the cause without any credential.

A store built with `fail_fast=True` is for one-shot checks (the probe of `format` and
`mount`): an endpoint nobody answers at (refused, unknown host, no answer within the
connect timeout) or a request that hangs is reported at once, because waiting cannot fix a
wrong URL or a stopped server; only throttling, 5xx and a connection cut mid-request are
tried again. The data path keeps the patient policy: there, a refused connection is
usually a server restarting, and retrying hides it.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bexc
import botocore.handlers
import botocore.session
import botocore.utils
import trio
from botocore.config import Config
from botocore.credentials import Credentials

from fusecache.errors import ObjectChanged, ObjectNotFound, ObjectStoreError, StoreUnreachable
from fusecache.object.base import ObjectInfo, ObjectStore
from fusecache.object.s3_async import AsyncS3

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
S3_MAX_PAGE = 1000

# `bucket.s3.region.amazonaws.com`, `bucket.s3-region.amazonaws.com`, `bucket.s3.amazonaws.com`.
_AWS_VHOST = re.compile(
    r"^(?P<bucket>[a-z0-9][a-z0-9.-]*?)\.s3(?:[.-](?P<region>[a-z]{2}(?:-[a-z]+)+-\d+))?"
    r"\.amazonaws\.com(?P<cn>\.cn)?$"
)

_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "InternalError", "ServiceUnavailable",
})
_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "AuthorizationHeaderMalformed", "403",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_s3_timestamp(value: str) -> datetime.datetime:
    """What botocore's own timestamp parser returns (an aware datetime) for the two forms S3
    sends, header dates (RFC 7231) and listing dates (ISO 8601), at a fraction of its cost:
    botocore parses every GET's Last-Modified with dateutil, about a twentieth of the CPU
    of a small block GET. Anything else goes to botocore's parser."""
    try:
        if value[-1:] == "Z":
            return datetime.datetime.fromisoformat(value)
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed
    except (TypeError, ValueError, IndexError):
        pass
    return botocore.utils.parse_timestamp(value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class BucketLocation:
    """Where a bucket URL points: the endpoint boto3 talks to, the bucket and a key prefix."""

    endpoint: str
    bucket: str
    prefix: str  # "" or ends with "/"
    addressing_style: str  # "path" or "virtual"
    region: str | None  # region named by an AWS hostname, if any


def parse_bucket_url(url: str) -> BucketLocation:
    """Parse `http(s)://host[:port]/bucket[/prefix]` (path style) or
    `https://bucket.s3.region.amazonaws.com[/prefix]` (AWS virtual-host style)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ObjectStoreError(
            f"bucket URL must look like http(s)://host:port/bucket[/prefix], got {_redact_url(url)!r}"
        )
    if parts.username or parts.password:
        raise ObjectStoreError("bucket URL must not carry credentials; pass access and secret keys apart")
    path = parts.path.strip("/")
    aws = _AWS_VHOST.match(parts.hostname.lower())
    if aws:
        region = aws["region"]
        host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
        endpoint = f"{parts.scheme}://{host}{aws['cn'] or ''}"
        return BucketLocation(endpoint, aws["bucket"], _as_prefix(path), "virtual", region)
    bucket, _, prefix = path.partition("/")
    if not bucket:
        raise ObjectStoreError(f"bucket URL {_redact_url(url)!r} names no bucket (expected .../bucket)")
    return BucketLocation(f"{parts.scheme}://{parts.netloc}", bucket, _as_prefix(prefix), "path", None)


def _as_prefix(path: str) -> str:
    path = path.strip("/")
    return f"{path}/" if path else ""


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()


def is_temporary(exc: BaseException) -> bool:
    """Whether a failed request may succeed if simply tried again."""
    if isinstance(exc, bexc.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in _THROTTLE_CODES
    if isinstance(exc, bexc.SSLError):
        return False  # a certificate problem is configuration, not bad luck
    # Connection refused/reset, DNS, connect and read timeouts, a body cut short.
    # (botocore's ConnectionError is its own class, not the builtin one.)
    return isinstance(exc, bexc.ConnectionError | bexc.HTTPClientError | bexc.IncompleteReadError | OSError)


def is_unreachable(exc: BaseException) -> bool:
    """Whether nobody answered at the endpoint (connection refused, unknown host, no answer
    within the connect timeout, the proxy refused): a wrong URL or a stopped server."""
    return isinstance(exc, bexc.EndpointConnectionError | bexc.ConnectTimeoutError | bexc.ProxyConnectionError)


def _unreachable_reason(exc: BaseException, connect_timeout: float) -> str:
    if isinstance(exc, bexc.ConnectTimeoutError):
        return f"no answer within {connect_timeout:g} s"
    cause: BaseException | None = getattr(exc, "kwargs", {}).get("error")
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host name ({cause.strerror})"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the server running, and is the port right?)"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return _short(exc)


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket_url: str,
        access_key: str = "",
        secret_key: str = "",
        *,
        region: str | None = None,
        max_pool_connections: int = 64,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 10,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        list_page_size: int = S3_MAX_PAGE,
        data_client: str = "boto3",
        fail_fast: bool = False,
    ) -> None:
        """Empty access/secret keys fall back to boto3's own credential chain (env, instance role).

        Retrying stops after `max_attempts` tries; the waits between them double from
        `backoff_base` up to `backoff_max` seconds (defaults: about 35 s in all), so an
        outage shorter than that is invisible to callers.

        `data_client`: "boto3" (the default) or "lean" (s3_lean.py) for object GETs and PUTs.
        `fail_fast`: retry only what retrying can fix (see the module docstring).
        """
        self._loc = parse_bucket_url(bucket_url)
        self._secret = secret_key
        self._max_attempts = max(1, max_attempts)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._fail_fast = fail_fast
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._page_size = max(1, min(S3_MAX_PAGE, list_page_size))
        region = region or self._loc.region or os.environ.get("AWS_REGION") or DEFAULT_REGION
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": self._loc.addressing_style},
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},  # retries happen in _call, once, with one policy
            # Our own calls pass well-formed parameters; botocore's check of them costs CPU per call.
            parameter_validation=False,
            # Servers such as `rclone serve s3` reject the CRC trailers newer botocore sends by default.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        )
        # A private Session: boto3's default session is not safe to share while creating clients.
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_s3_timestamp)
        session = boto3.session.Session(botocore_session=core)
        self._client = session.client(
            "s3",
            endpoint_url=self._loc.endpoint,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=config,
        )
        # botocore sends every PUT body as `Expect: 100-continue`: the body waits for the
        # server's go-ahead, one more round trip per block, which halves small-file writes
        # to a distant store. Our bodies are in memory and small; send them at once.
        self._client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self._lean = None
        if data_client == "lean":
            from fusecache.object.s3_lean import LeanS3

            self._lean = LeanS3(self._loc.endpoint, self._loc.bucket, self._loc.addressing_style, region,
                                self._client._request_signer._credentials,
                                max_connections=max_pool_connections, connect_timeout=connect_timeout,
                                read_timeout=read_timeout)
        elif data_client != "boto3":
            raise ValueError(f"unknown S3 data client {data_client!r}: choose boto3 or lean")
        self._async: AsyncS3 | None = None
        # Whole-block GETs on the event loop (s3_async.py), with static credentials only: a
        # refresh of temporary ones is a blocking call.
        if self._lean is not None and type(self._lean.credentials) is Credentials:
            self._async = AsyncS3(self._lean, self._loc.endpoint, max_connections=max_pool_connections,
                                  connect_timeout=connect_timeout, read_timeout=read_timeout)

    # -- ObjectStore -------------------------------------------------------------------------

    def get(self, key: str, off: int = 0, limit: int = -1) -> bytes:
        if off < 0:
            raise ValueError(f"negative offset {off}")
        if limit == 0:
            return b""
        params: dict[str, Any] = {"Bucket": self._loc.bucket, "Key": self._key(key)}
        ranged = off > 0 or limit > 0
        if ranged:
            params["Range"] = f"bytes={off}-{off + limit - 1}" if limit > 0 else f"bytes={off}-"

        def lean_attempt() -> bytes:
            assert self._lean is not None
            try:
                data, partial = self._lean.get(params["Key"], params.get("Range"))
            except bexc.ClientError as e:
                if _code(e) == "InvalidRange":
                    return b""
                raise
            if ranged and not partial:  # a server that ignored Range sent it all
                data = data[off : off + limit] if limit > 0 else data[off:]
            return data

        def attempt() -> bytes:
            return self._get_object(params, off, limit)[0]

        return self._call("get", key, lean_attempt if self._lean is not None else attempt)

    def get_version(self, key: str, off: int, limit: int, etag: str) -> bytes:
        # If-Match makes the server refuse another version (412); the reply's own ETag is
        # checked too, for servers that ignore the condition.
        params: dict[str, Any] = {"Bucket": self._loc.bucket, "Key": self._key(key), "IfMatch": f'"{etag}"',
                                  "Range": f"bytes={off}-{off + limit - 1}"}

        def attempt() -> bytes:
            data, resp = self._get_object(params, off, limit)
            if resp is not None and _etag(resp.get("ETag", "")) != etag:
                raise ObjectChanged(f"{key!r} in {self.describe()} changed (version {_etag(resp.get('ETag', ''))}, "
                                    f"expected {etag})")
            return data

        if limit <= 0:
            return b""
        return self._call("get", key, attempt)

    def _get_object(self, params: dict[str, Any], off: int, limit: int) -> tuple[bytes, dict[str, Any] | None]:
        """One boto3 GET: the bytes asked for and the reply (None: the range starts at or
        past the end, so there are no bytes)."""
        try:
            resp = self._client.get_object(**params)
        except bexc.ClientError as e:
            if _code(e) == "InvalidRange":
                return b"", None
            raise
        body = resp["Body"]
        try:
            # read() with no size pulls Content-Length bytes in one buffer and checks the count.
            data: bytes = body.read()
        finally:
            body.close()
        if "Range" in params and "ContentRange" not in resp:  # a server that ignored Range sent it all
            data = data[off : off + limit] if limit > 0 else data[off:]
        return data, resp

    @property
    def async_get(self) -> bool:
        return self._async is not None

    async def aget(self, key: str) -> bytes:
        if self._async is None:
            raise NotImplementedError("GETs of this store run on threads (see async_get)")
        client = self._async
        attempt = 1
        while True:
            try:
                data, _ = await client.get(self._key(key))
                return data
            except Exception as e:
                delay = self._retry_delay("get", key, e, attempt)
            await trio.sleep(delay)
            attempt += 1

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        body = _as_body(data)
        if self._lean is not None:
            lean = self._lean
            self._call("put", key, lambda: lean.put(self._key(key), body))
            return
        params = {"Bucket": self._loc.bucket, "Key": self._key(key), "Body": body}
        self._call("put", key, lambda: self._client.put_object(**params))

    def delete(self, key: str) -> None:
        params = {"Bucket": self._loc.bucket, "Key": self._key(key)}
        try:
            self._call("delete", key, lambda: self._client.delete_object(**params))
        except ObjectNotFound:
            pass

    def head(self, key: str) -> ObjectInfo:
        params = {"Bucket": self._loc.bucket, "Key": self._key(key)}
        # HEAD responses have no body, so a missing bucket also reads as a missing key here.
        resp = self._call("head", key, lambda: self._client.head_object(**params))
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp(),
                          _etag(resp.get("ETag", "")))

    def list(self, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        base: dict[str, Any] = {"Bucket": self._loc.bucket, "Prefix": self._key(prefix)}
        if start_after:
            base["StartAfter"] = self._key(start_after)
        strip = len(self._loc.prefix)
        out: list[ObjectInfo] = []
        token = ""
        while len(out) < limit:
            params = dict(base, MaxKeys=min(self._page_size, limit - len(out)))
            if token:
                params["ContinuationToken"] = token
            resp = self._call("list", prefix, lambda p=params: self._client.list_objects_v2(**p))
            for item in resp.get("Contents", ()):
                mtime = item["LastModified"].timestamp()
                out.append(ObjectInfo(item["Key"][strip:], int(item["Size"]), mtime, _etag(item.get("ETag", ""))))
            token = resp.get("NextContinuationToken", "")
            if not resp.get("IsTruncated") or not token:
                break
        return out[:limit]

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        base: dict[str, Any] = {"Bucket": self._loc.bucket, "Prefix": self._key(prefix), "Delimiter": "/",
                                "MaxKeys": self._page_size}
        strip = len(self._loc.prefix)
        token = ""
        while True:
            params = dict(base, ContinuationToken=token) if token else base
            resp = self._call("list", prefix, lambda p=params: self._client.list_objects_v2(**p))
            # Objects and prefixes come in two lists per page; merge them into key order.
            items: list[tuple[str, ObjectInfo | str]] = [
                (item["Key"], ObjectInfo(item["Key"][strip:], int(item["Size"]), item["LastModified"].timestamp(),
                                         _etag(item.get("ETag", ""))))
                for item in resp.get("Contents", ())]
            items += [(cp["Prefix"], cp["Prefix"][strip:]) for cp in resp.get("CommonPrefixes", ())]
            items.sort(key=lambda pair: pair[0])
            for _, item in items:
                yield item
            token = resp.get("NextContinuationToken", "")
            if not resp.get("IsTruncated") or not token:
                return

    def describe(self) -> str:
        host = urlsplit(self._loc.endpoint).netloc
        return f"s3://{host}/{self._loc.bucket}/{self._loc.prefix}".rstrip("/")

    def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        self._client.close()

    # -- internals ---------------------------------------------------------------------------

    @property
    def bucket(self) -> str:
        return self._loc.bucket

    @property
    def endpoint(self) -> str:
        return self._loc.endpoint

    def _key(self, key: str) -> str:
        return self._loc.prefix + key

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run one request, retrying temporary failures; translate what finally escapes."""
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as e:
                delay = self._retry_delay(op, key, e, attempt)
            time.sleep(delay)
            attempt += 1

    def _retry_delay(self, op: str, key: str, exc: Exception, attempt: int) -> float:
        """Seconds to wait before trying a failed request again; raises what the caller
        should see once the failure is not temporary or the attempts are used up."""
        final = self._fail_fast and (is_unreachable(exc) or isinstance(exc, bexc.ReadTimeoutError))
        if final or not is_temporary(exc) or attempt >= self._max_attempts:
            raise self._translate(op, key, exc, attempt) from None
        delay = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter keeps many threads from retrying in step
        log.info("S3 %s %r failed (%s), retry %d in %.2fs", op, key, _short(exc), attempt, delay)
        return delay

    def _translate(self, op: str, key: str, exc: Exception, attempts: int) -> Exception:
        if isinstance(exc, ObjectStoreError):  # ours already (e.g. ObjectChanged)
            return exc
        where = f"at {self._loc.endpoint}"
        if isinstance(exc, bexc.ClientError):
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _NOT_FOUND_CODES:
                return ObjectNotFound(key)
            if code == "PreconditionFailed" or status == 412:
                return ObjectChanged(f"{key!r} in {self.describe()} changed (its ETag is not the one expected)")
            if code == "NoSuchBucket":
                return ObjectStoreError(f"bucket {self._loc.bucket!r} does not exist {where}")
            if code == "RequestTimeTooSkewed":  # a 403 too, but no credential is at fault
                return ObjectStoreError(f"this machine's clock differs too much from the S3 server {where}")
            if code in _AUTH_CODES or status == 403:
                return ObjectStoreError(
                    f"access denied to bucket {self._loc.bucket!r} {where} ({code}): "
                    "check access key and secret key"
                )
            msg = f"S3 {op} of {key!r} in {self.describe()} failed: {code} (HTTP {status})"
        elif is_unreachable(exc):
            tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
            reason = _unreachable_reason(exc, self._connect_timeout)
            return StoreUnreachable(self._scrub(f"cannot reach S3 endpoint {self._loc.endpoint}{tries}: {reason}"))
        elif isinstance(exc, bexc.ReadTimeoutError):
            msg = (f"S3 {op} of {key!r} in {self.describe()} failed after {attempts} attempt(s): "
                   f"no reply within {self._read_timeout:g} s")
        elif isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            msg = "no S3 credentials: give an access key and a secret key"
        else:
            msg = f"S3 {op} of {key!r} in {self.describe()} failed after {attempts} attempt(s): {_short(exc)}"
        return ObjectStoreError(self._scrub(msg))

    def _scrub(self, text: str) -> str:
        # Belt and braces: no message built from server or library text may carry the secret.
        return text.replace(self._secret, "***") if self._secret else text


def _etag(raw: str) -> str:
    return raw.strip('"')


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_body(data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """botocore accepts bytes or bytearray bodies (sent straight from the buffer) but not memoryview."""
    if not isinstance(data, memoryview):
        return data
    if data.c_contiguous and isinstance(data.obj, bytes | bytearray) and data.nbytes == len(data.obj):
        return data.obj  # a view of a whole buffer: send the buffer itself
    return data.tobytes()  # a partial view: one copy, which botocore needs for signing and retries
