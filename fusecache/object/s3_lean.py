"""A lean data path for S3 block GETs and PUTs: SigV4 signing and urllib3, nothing else.

boto3 stays the S3 client fusecache is built on (listing, deletes, heads, errors and
credentials all go through it), and the default data path too. This is an option
(`mount --s3-data-client lean`) for the two calls a filesystem makes thousands of times a
second: botocore spends about 2 ms of CPU per small GET (event hooks, endpoint rules,
response parsing), and under Python's GIL that CPU is what caps parallel readers of small
files. Here a GET costs about a tenth of that.

Failures are raised as botocore exceptions of the same kinds (ClientError with the S3
error code, EndpointConnectionError, HTTPClientError), so S3Store's retry policy and error
messages apply unchanged.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import threading
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore import exceptions as bexc

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")


def error_of(method: str, status: int, body: bytes | None, operation: str) -> bexc.ClientError:
    """The botocore error for an S3 error response, with the code from its XML body."""
    match = _ERROR_CODE.search(body or b"")
    code = match.group(1).decode(errors="replace") if match else str(status)
    if status == 404 and not match:
        code = "NoSuchKey" if method != "PUT" else "NoSuchBucket"
    return bexc.ClientError({"Error": {"Code": code, "Message": ""},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class LeanS3:
    def __init__(self, endpoint: str, bucket: str, addressing_style: str, region: str, credentials: Any,
                 *, max_connections: int, connect_timeout: float, read_timeout: float) -> None:
        """`credentials`: a botocore credentials object (static or refreshable)."""
        parts = urlsplit(endpoint)
        if addressing_style == "virtual":
            self._host = f"{bucket}.{parts.netloc}"
            self._base = ""
        else:
            self._host = parts.netloc
            self._base = f"/{quote(bucket, safe='')}"
        self._origin = f"{parts.scheme}://{self._host}"
        self._region = region
        self._credentials = credentials
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=max_connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
        self._keys_lock = threading.Lock()
        self._signing_keys: dict[tuple[str, str], bytes] = {}  # (date, secret) → key

    def get(self, key: str, byte_range: str | None = None) -> tuple[bytes, bool]:
        """The object's bytes, and whether the server honoured `byte_range` (it says so
        with Content-Range; some answer 200 rather than 206)."""
        headers = {"Range": byte_range} if byte_range else {}
        resp = self._request("GET", key, b"", headers, "GetObject")
        return resp.data, resp.status == 206 or "Content-Range" in resp.headers

    def put(self, key: str, body: bytes | bytearray) -> None:
        self._request("PUT", key, body, {"Content-Length": str(len(body))}, "PutObject")

    def close(self) -> None:
        self._pool.clear()

    # -- internals ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def credentials(self) -> Any:
        return self._credentials

    def path_of(self, key: str) -> str:
        return f"{self._base}/{quote(key, safe='/~')}"

    def sign(self, method: str, path: str, payload_hash: str = EMPTY_SHA256) -> dict[str, str]:
        """SigV4 headers for a request (Host not included: the HTTP layer sends it)."""
        return self._sign(method, path, payload_hash)

    def _request(self, method: str, key: str, body: bytes | bytearray, headers: dict[str, str],
                 operation: str) -> Any:
        path = self.path_of(key)
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers.update(self._sign(method, path, payload_hash))
        try:
            resp = self._pool.request(method, self._origin + path, body=bytes(body) if body else None,
                                      headers=headers, preload_content=True, redirect=False)
        except urllib3.exceptions.NewConnectionError as exc:
            raise bexc.EndpointConnectionError(endpoint_url=self._origin, error=exc) from None
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise bexc.ConnectTimeoutError(endpoint_url=self._origin, error=exc) from None
        except urllib3.exceptions.HTTPError as exc:  # reset, read timeout, body cut short
            raise bexc.HTTPClientError(error=exc) from None
        if resp.status >= 300:
            raise error_of(method, resp.status, resp.data, operation)
        return resp

    def _sign(self, method: str, path: str, payload_hash: str) -> dict[str, str]:
        creds = self._credentials.get_frozen_credentials()
        if not creds.access_key or not creds.secret_key:
            raise bexc.NoCredentialsError()
        now = datetime.datetime.now(datetime.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        date = amz_date[:8]
        headers = {"host": self._host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([method, path, "", *(f"{n}:{headers[n]}" for n in names), "", signed, payload_hash])
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(date, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        del headers["host"]  # urllib3 sends it from the URL
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        return headers

    def _signing_key(self, date: str, secret: str) -> bytes:
        with self._keys_lock:
            key = self._signing_keys.get((date, secret))
            if key is None:
                key = f"AWS4{secret}".encode()
                for part in (date, self._region, "s3", "aws4_request"):
                    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
                self._signing_keys = {(date, secret): key}  # one day's key is all we need
            return key
