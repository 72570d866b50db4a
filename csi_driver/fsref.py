"""Which fusecache filesystem a request is about, and the credentials to reach it.

A request names its filesystem through its secrets (a Kubernetes Secret referenced by the
StorageClass or the static PV), or, when it carries none, the driver's default `--meta-url`:

    metaurl       redis://[user[:password]@]host:port/db      (required without a default)
    metapassword  the Redis password, instead of putting it in the URL
    access-key    object storage credentials, handed to `fusecache format`/`mount` by env
    secret-key
    storage, bucket, name, block-size, fs-capacity, fs-inodes, trash-days, garbage-delay
                  format a new filesystem on first use (also accepted as StorageClass
                  parameters, secrets win)
    importAccessKey, importSecretKey
                  credentials of an `importSource` bucket (imports.py; not this module's)

The password never stays in the URL this module hands around: `Filesystem.meta_url` is the
URL without it (fit for argv, logs and state files), `env()` carries the secrets to child
processes.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import invalid
from .logs import remember_secret

SECRET_META_URL = "metaurl"
SECRET_META_PASSWORD = "metapassword"
SECRET_ACCESS_KEY = "access-key"
SECRET_SECRET_KEY = "secret-key"
FORMAT_KEYS = ("storage", "bucket", "name", "block-size", "fs-capacity", "fs-inodes", "trash-days",
               "garbage-delay")
# key -> `fusecache format` option (fs-capacity is the whole filesystem's, not a volume's)
_FORMAT_OPTIONS = {"block-size": "block-size", "fs-capacity": "capacity", "fs-inodes": "inodes",
                   "trash-days": "trash-days", "garbage-delay": "garbage-delay"}
ENV_META_URL = "FUSECACHE_META_URL"  # the driver's default filesystem, like --meta-url


@dataclass(frozen=True)
class FormatSpec:
    """`fusecache format` arguments for a filesystem created on first use."""

    storage: str
    bucket: str
    name: str
    options: tuple[tuple[str, str], ...] = ()  # ("block-size", "4M"), …

    def args(self) -> list[str]:
        out = [self.name, "--storage", self.storage, "--bucket", self.bucket]
        for key, value in self.options:
            out += [f"--{key}", value]
        return out


@dataclass(frozen=True)
class Filesystem:
    meta_url: str  # without password
    password: str = field(default="", repr=False)
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    format: FormatSpec | None = None

    def url_with_password(self) -> str:
        """The full URL, for in-process clients only (never log or persist it)."""
        if not self.password:
            return self.meta_url
        parts = urllib.parse.urlsplit(self.meta_url)
        user = urllib.parse.quote(urllib.parse.unquote(parts.username or ""), safe="")
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{user}:{urllib.parse.quote(self.password, safe='')}@{host}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def env(self) -> dict[str, str]:
        """Secrets for a `fusecache` child process, by environment (out of `ps`)."""
        out = {}
        if self.password:
            out["META_PASSWORD"] = self.password
        if self.access_key:
            out["ACCESS_KEY"] = self.access_key
        if self.secret_key:
            out["SECRET_KEY"] = self.secret_key
        return out

    def secrets(self) -> dict[str, str]:
        """What a node must persist to remount this filesystem without the request."""
        return {"password": self.password, "access_key": self.access_key, "secret_key": self.secret_key}

    @classmethod
    def from_persisted(cls, meta_url: str, secrets: Mapping[str, str]) -> Filesystem:
        fs = cls(meta_url, secrets.get("password", ""), secrets.get("access_key", ""),
                 secrets.get("secret_key", ""))
        fs.remember()
        return fs

    def remember(self) -> None:
        for value in (self.password, self.access_key, self.secret_key):
            if value:
                remember_secret(value)


def split_password(url: str) -> tuple[str, str]:
    """(url without its password, the password) — the user name is kept."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or (not parts.netloc and parts.scheme != "unix"):
        raise invalid("metaurl must look like redis://[user:password@]host:port/db")
    if parts.password is None:
        return url, ""
    password = urllib.parse.unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    netloc = f"{user}@{host}" if user else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), password


def resolve(secrets: Mapping[str, str], parameters: Mapping[str, str] | None = None,
            default_url: str = "") -> Filesystem:
    """The filesystem a request names; INVALID_ARGUMENT when it names none."""
    raw_url = secrets.get(SECRET_META_URL, "")
    from_default = not raw_url
    if from_default:
        raw_url = default_url or os.environ.get(ENV_META_URL, "")
    if not raw_url:
        raise invalid(f"no filesystem: the request's secrets carry no '{SECRET_META_URL}' and the "
                      "driver has no default --meta-url")
    url, password = split_password(raw_url)
    if from_default and not password:
        password = os.environ.get("META_PASSWORD", "")  # keeps the default's password out of argv
    password = secrets.get(SECRET_META_PASSWORD, password)
    fs = Filesystem(
        meta_url=url,
        password=password,
        access_key=secrets.get(SECRET_ACCESS_KEY, ""),
        secret_key=secrets.get(SECRET_SECRET_KEY, ""),
        format=_format_spec(secrets, parameters or {}),
    )
    fs.remember()
    return fs


def _format_spec(secrets: Mapping[str, str], parameters: Mapping[str, str]) -> FormatSpec | None:
    merged = {key: secrets.get(key) or parameters.get(key, "") for key in FORMAT_KEYS}
    given = [key for key in ("storage", "bucket", "name") if merged[key]]
    if not given:
        return None
    if len(given) < 3:
        raise invalid("formatting a new filesystem needs 'storage', 'bucket' and 'name' together")
    if merged["storage"] not in ("s3", "file"):
        raise invalid("'storage' must be 's3' or 'file'")
    options = tuple((option, merged[key]) for key, option in _FORMAT_OPTIONS.items() if merged[key])
    return FormatSpec(merged["storage"], merged["bucket"], merged["name"], options)
