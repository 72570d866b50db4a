"""Mount settings of a volume: StorageClass parameters → volume context → `fusecache mount` args.

Attribute keys (StorageClass `parameters`, or a static PV's `volumeAttributes`):

    cache          ';'-separated tiers, e.g. "mem:4GiB;ssd:/var/cache/fc:100GiB" (an ssd tier
                   may list several directories: "ssd:/a,/b:200GiB")
    cacheLow       eviction low watermark (0..1)       cacheHigh   high watermark (0..1)
    cacheFreeRatio ssd tiers stop growing when their disk's free share would drop below it
    readahead      blocks to read ahead                writeback   "true" to upload asynchronously
    attrTimeout    kernel attribute cache seconds      entryTimeout  kernel dentry cache seconds
    coherentTimeout  kernel cache seconds while Redis tells the client of changes (0: off)
    fuseOptions    extra comma-separated FUSE -o options
    sharedClient   "false": this volume gets its own FUSE client, mounted at its directory,
                   so `df` in the pod shows the volume's quota (a shared client can only show
                   the filesystem's: FUSE's statfs does not say which directory is asked about)
    subdir         (static PVs) directory of the filesystem to expose, default "/"
    importSource   http(s)://host:port/bucket[/prefix]: the volume shows that prefix's objects
                   as files (imports.py); not a mount setting, and never in a volume context

Every PV with equal settings on the same filesystem shares one FUSE client per node, so the
settings, normalised, are part of that client's identity (`client_key`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import invalid
from .fsref import FORMAT_KEYS

log = logging.getLogger(__name__)

SUBDIR = "subdir"
IMPORT_SOURCE = "importSource"
KUBERNETES_PREFIXES = ("csi.storage.k8s.io/", "storage.kubernetes.io/")
_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_FUSE_OPTION = re.compile(r"[A-Za-z0-9_]+(=[A-Za-z0-9_.:/-]+)?")
# Options this driver controls itself; a volume may not override them.
_RESERVED_FUSE_OPTIONS = {"allow_other", "ro", "rw", "subdir"}


@dataclass(frozen=True)
class MountSettings:
    cache: tuple[str, ...] = ()
    cache_low: str = ""
    cache_high: str = ""
    cache_free_ratio: str = ""
    readahead: str = ""
    writeback: bool = False
    attr_timeout: str = ""
    entry_timeout: str = ""
    coherent_timeout: str = ""
    fuse_options: tuple[str, ...] = ()
    shared: bool = True

    def mount_args(self, cache_subdir: str = "") -> list[str]:
        """Options for `fusecache mount` (after META_URL MOUNTPOINT); `cache_subdir` is
        appended to every ssd directory (see `client_cache_tier`)."""
        args: list[str] = []
        for tier in self.cache:
            args += ["--cache", client_cache_tier(tier, cache_subdir) if cache_subdir else tier]
        for flag, value in (("--cache-low", self.cache_low), ("--cache-high", self.cache_high),
                            ("--cache-free-ratio", self.cache_free_ratio),
                            ("--readahead", self.readahead), ("--attr-timeout", self.attr_timeout),
                            ("--entry-timeout", self.entry_timeout),
                            ("--coherent-timeout", self.coherent_timeout)):
            if value:
                args += [flag, value]
        if self.writeback:
            args.append("--writeback")
        # allow_other: pods run as any uid; permissions are checked by the kernel
        # (the client mounts with default_permissions).
        args += ["-o", ",".join(("allow_other", *self.fuse_options))]
        return args

    def context(self) -> dict[str, str]:
        """The settings as volume attributes (only those that differ from the defaults)."""
        out = {}
        if self.cache:
            out["cache"] = ";".join(self.cache)
        for key, value in (("cacheLow", self.cache_low), ("cacheHigh", self.cache_high),
                           ("cacheFreeRatio", self.cache_free_ratio), ("readahead", self.readahead),
                           ("attrTimeout", self.attr_timeout), ("entryTimeout", self.entry_timeout),
                           ("coherentTimeout", self.coherent_timeout)):
            if value:
                out[key] = value
        if self.writeback:
            out["writeback"] = "true"
        if self.fuse_options:
            out["fuseOptions"] = ",".join(self.fuse_options)
        if not self.shared:
            out["sharedClient"] = "false"
        return out


def _number(key: str, value: str, low: float | None = None, high: float | None = None) -> str:
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"{key} must be a number, not {value!r}") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise invalid(f"{key} must be within [{low}, {high}]")
    return value


def client_cache_tier(tier: str, subdir: str) -> str:
    """An ssd tier with `subdir` appended to each of its directories (mem tiers unchanged).

    A cache directory serves one client process only (the cache takes an exclusive lock on
    it), but one StorageClass may start several clients on a node (`sharedClient: "false"`,
    or two classes with other settings naming the same disk): each client gets a directory
    of its own below the one configured, named by its client key, so it is the same one
    across restarts of that client and its cache stays warm."""
    medium, _, rest = tier.partition(":")
    if medium.strip().lower() != "ssd":
        return tier
    paths, _, size = rest.rpartition(":")
    return f"{medium}:{','.join(posixpath.join(p.strip(), subdir) for p in paths.split(','))}:{size}"


def _cache_tiers(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.split(";") if t.strip())


def _check_cache(settings: MountSettings) -> None:
    """Tiers and watermarks validated by the cache's own parser (the one `fusecache mount`
    uses), so a bad StorageClass fails at CreateVolume, not at mount time on every node."""
    from fusecache.cache.config import TierConfig, parse_cache_spec

    limits: dict[str, float] = {name: float(value) for name, value in (
        ("low", settings.cache_low), ("high", settings.cache_high),
        ("free_ratio", settings.cache_free_ratio)) if value}
    try:
        if not settings.cache and limits:
            TierConfig("mem", 1, **limits)  # the watermarks alone must still make sense
        tiers = [parse_cache_spec(tier, **limits) for tier in settings.cache]
        for tier, config in zip(settings.cache, tiers, strict=True):
            if any(not path.startswith("/") for path in config.paths):
                raise ValueError(f"directories of {tier!r} must be absolute paths")
        if sum(t.medium == "mem" for t in tiers) > 1:
            raise ValueError("at most one mem tier")
        if settings.writeback and not any(t.medium == "ssd" for t in tiers):
            raise ValueError("writeback stages blocks on disk: it needs an ssd tier in 'cache'")
    except ValueError as exc:
        raise invalid(f"cache settings: {exc}") from None


def _parsers() -> dict[str, str]:
    return {"cache": "cache", "cacheLow": "cache_low", "cacheHigh": "cache_high",
            "cacheFreeRatio": "cache_free_ratio", "readahead": "readahead", "writeback": "writeback",
            "attrTimeout": "attr_timeout", "entryTimeout": "entry_timeout",
            "coherentTimeout": "coherent_timeout", "fuseOptions": "fuse_options",
            "sharedClient": "shared"}


MOUNT_KEYS = frozenset(_parsers())


def parse(attributes: Mapping[str, str]) -> MountSettings:
    """Mount settings from parameters or volume attributes (other keys are ignored here)."""
    values: dict[str, object] = {}
    for key, field_name in _parsers().items():
        raw = attributes.get(key, "").strip()
        if not raw:
            continue
        if key == "cache":
            values[field_name] = _cache_tiers(raw)
        elif key in ("cacheLow", "cacheHigh", "cacheFreeRatio"):
            values[field_name] = _number(key, raw, 0.0, 1.0)
        elif key == "readahead":
            if not raw.isdigit():
                raise invalid("readahead must be a whole number of blocks")
            values[field_name] = raw
        elif key in ("attrTimeout", "entryTimeout", "coherentTimeout"):
            values[field_name] = _number(key, raw, 0.0, 1e6)
        elif key in ("writeback", "sharedClient"):
            if raw.lower() not in _BOOL:
                raise invalid(f"{key} must be true or false")
            values[field_name] = _BOOL[raw.lower()]
        else:  # fuseOptions
            options = tuple(o.strip() for o in raw.split(",") if o.strip())
            bad = [o for o in options if not _FUSE_OPTION.fullmatch(o)
                   or o.split("=")[0] in _RESERVED_FUSE_OPTIONS]
            if bad:
                raise invalid(f"fuseOptions {bad} are malformed or reserved by the driver")
            values[field_name] = options
    settings = MountSettings(**values)  # type: ignore[arg-type]
    _check_cache(settings)
    return settings


def check_parameters(parameters: Mapping[str, str]) -> None:
    """CreateVolume parameters: mount settings, format keys and Kubernetes' own keys only."""
    known = MOUNT_KEYS | set(FORMAT_KEYS) | {IMPORT_SOURCE}
    unknown = [key for key in parameters if key not in known and not key.startswith(KUBERNETES_PREFIXES)]
    if unknown:
        raise invalid(f"unknown parameters {sorted(unknown)}; known: {sorted(known)}")
    parse(parameters)


def subdir_of(attributes: Mapping[str, str]) -> str:
    """The normalised absolute `subdir` attribute ('/' when absent); no '..' escapes."""
    raw = attributes.get(SUBDIR, "").strip() or "/"
    path = posixpath.normpath("/" + raw.lstrip("/"))
    if ".." in path.split("/"):
        raise invalid("subdir must not contain '..'")
    return path.replace("//", "/")


def warn_unknown(attributes: Mapping[str, str]) -> None:
    """Node side: Kubernetes adds its own keys, so unknown ones are only worth a warning."""
    unknown = [key for key in attributes
               if key not in MOUNT_KEYS and key not in (SUBDIR, IMPORT_SOURCE)
               and not key.startswith(KUBERNETES_PREFIXES)]
    if unknown:
        log.warning("ignoring unknown volume attributes %s", sorted(unknown))


def client_root(settings: MountSettings, subdir: str) -> str:
    """The directory a volume's client mounts: the filesystem root when it is shared."""
    return "/" if settings.shared else subdir


def client_key(meta_url: str, settings: MountSettings, subdir: str = "/") -> str:
    """Identity of the FUSE client for this filesystem, these settings and root."""
    material = json.dumps([meta_url, settings.mount_args(), client_root(settings, subdir)], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:16]
