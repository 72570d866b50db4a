"""`fusecache stats MOUNTPOINT [--json]`: a client's cache tiers, hit ratios and traffic.

The figures come from the client serving the mount, through the virtual xattr
`fusecache.stats` (see vfs/control.py). `mount --metrics ADDR:PORT` serves the same figures
as Prometheus metrics (`start_metrics`), every name prefixed `fusecache_`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CliError
from ..units import format_size
from .client_xattr import read_client_json

log = logging.getLogger(__name__)
STATS_XATTR = "fusecache.stats"
Stats = dict[str, Any]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="show a mount's cache usage and traffic",
                       description="Show the cache tiers (used, quota, watermarks, hit ratio) and the "
                                   "object store traffic of the client serving a mount. 'mount --metrics' "
                                   "serves the same figures to Prometheus.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a fusecache mount (or any path inside one)")
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    p.set_defaults(run=run)


def read_stats(path: str) -> Stats:
    """The figures of the client serving `path` (CliError if there is none)."""
    return read_client_json(path, STATS_XATTR, "the client\'s figures")  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    stats = read_stats(os.path.abspath(args.mountpoint))
    print(json.dumps(stats, indent=2, sort_keys=True) if args.json else render(stats))
    return 0


def _ratio(hits: int, misses: int) -> str:
    lookups = hits + misses
    return f"{100 * hits / lookups:.1f}%" if lookups else "-"


def render(s: Stats) -> str:
    """The figures as a short human-readable report."""
    lines = [f"volume {s.get('volume', '?')} at {s.get('mountpoint', '?')} (client pid {s.get('pid', '?')}, "
             f"block size {format_size(s['block_size'])}, writeback {'on' if s['writeback'] else 'off'})"]
    cache = s.get("cache")
    if cache:
        lines.append("")
        lines.append(f"{'tier':<5}{'medium':<7}{'used':>10}{'quota':>10}{'use':>7}{'low':>6}{'high':>6}"
                     f"{'blocks':>9}{'hit ratio':>11}{'hits':>9}{'misses':>9}{'evicted':>9}  paths")
        for i, t in enumerate(cache["tiers"]):
            use = f"{100 * t['used'] / t['quota']:.0f}%" if t["quota"] else "-"
            lines.append(f"{i:<5}{t['medium']:<7}{format_size(t['used']):>10}{format_size(t['quota']):>10}{use:>7}"
                         f"{t['low']:>6.2f}{t['high']:>6.2f}{t['blocks']:>9}{_ratio(t['hits'], t['misses']):>11}"
                         f"{t['hits']:>9}{t['misses']:>9}{t['evictions']:>9}  {','.join(t['paths']) or '-'}")
            extra = [f"{name} {t[name]}" for name in ("demotions", "refused", "corrupt", "errors") if t.get(name)]
            if t["medium"] == "ssd":
                extra.insert(0, f"stops growing below {100 * t.get('free_ratio', 0):.0f}% free disk")
            if t.get("staged_blocks"):
                extra.append(f"staged {t['staged_blocks']} blocks ({format_size(t['staged_bytes'])})")
            if extra:
                lines.append(f"{'':12}" + ", ".join(extra))
        lines.append(f"cache hit ratio {_ratio(cache['hits'], cache['misses'])} "
                     f"({cache['hits']} hits, {cache['misses']} misses)")
    store, up, fuse = s["store"], s["uploads"], s["fuse"]
    lines.append("")
    lines.append(f"object store: {store['gets']} GETs ({format_size(store['get_bytes'])}), "
                 f"{store['puts']} PUTs ({format_size(store['put_bytes'])}), "
                 f"{store['get_errors'] + store['put_errors']} errors; in-flight fetches {s['inflight_fetches']}")
    lines.append(f"uploads pending: {up['pending_blocks']} blocks ({format_size(up['pending_bytes'])}); "
                 f"uploaded in background: {up['uploaded_blocks']} blocks ({format_size(up['uploaded_bytes'])})")
    lines.append(f"reads: {fuse['reads']} requests ({format_size(fuse['read_bytes'])}), "
                 f"readahead {fuse['readahead_blocks']} blocks (window up to {s['readahead_max_blocks']}); "
                 f"opens {fuse['opens']}, {fuse['keep_cache_opens']} kept the page cache")
    warm = s.get("warmup", {})
    if warm.get("blocks"):
        lines.append(f"warmup: {warm['blocks']} blocks ({format_size(warm['bytes'])}) loaded")
    return "\n".join(lines)


# -- Prometheus ---------------------------------------------------------------------------------

_TIER_GAUGES = {"used": ("cache_used_bytes", "bytes held by the tier"),
                "quota": ("cache_quota_bytes", "the tier's quota"),
                "low": ("cache_low_watermark", "eviction stops at this share of the quota"),
                "high": ("cache_high_watermark", "eviction starts above this share of the quota"),
                "blocks": ("cache_blocks", "blocks held by the tier"),
                "hit_ratio": ("cache_hit_ratio", "hits / lookups that reached the tier"),
                "staged_blocks": ("cache_staged_blocks", "staged (not yet uploaded) blocks"),
                "staged_bytes": ("cache_staged_bytes", "bytes of staged blocks")}
_TIER_COUNTERS = {"hits": "lookups the tier answered", "misses": "lookups the tier could not answer",
                  "admitted": "blocks written into the tier", "refused": "admissions refused",
                  "evictions": "blocks evicted", "demotions": "blocks handed down to the next tier",
                  "corrupt": "cache files dropped as corrupt", "errors": "I/O errors of the tier"}


def metric_families(s: Stats) -> Iterator[Any]:
    """The figures as prometheus_client metric families (names prefixed `fusecache_`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    vol = str(s.get("volume", ""))

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(f"fusecache_{name}", doc, labels=["volume"])
        g.add_metric([vol], value)
        return g

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(f"fusecache_{name}", doc, labels=["volume"])
        c.add_metric([vol], value)
        return c

    tiers = (s.get("cache") or {}).get("tiers", [])
    labels = ["volume", "tier", "medium"]
    for field, (name, doc) in _TIER_GAUGES.items():
        g = GaugeMetricFamily(f"fusecache_{name}", doc, labels=labels)
        for i, t in enumerate(tiers):
            g.add_metric([vol, str(i), t["medium"]], t[field])
        yield g
    for field, doc in _TIER_COUNTERS.items():
        c = CounterMetricFamily(f"fusecache_cache_{field}", doc, labels=labels)
        for i, t in enumerate(tiers):
            c.add_metric([vol, str(i), t["medium"]], t[field])
        yield c
    cache = s.get("cache") or {"hits": 0, "misses": 0, "hit_ratio": 0.0}
    yield counter("cache_lookup_hits", "block lookups some tier answered", cache["hits"])
    yield counter("cache_lookup_misses", "block lookups that went to the object store", cache["misses"])
    yield gauge("cache_lookup_hit_ratio", "share of block lookups answered by the cache", cache["hit_ratio"])
    store = s["store"]
    yield counter("store_get_requests", "object GETs", store["gets"])
    yield counter("store_get_bytes", "bytes read from the object store", store["get_bytes"])
    yield counter("store_put_requests", "object PUTs", store["puts"])
    yield counter("store_put_bytes", "bytes written to the object store", store["put_bytes"])
    yield counter("store_errors", "failed object requests", store["get_errors"] + store["put_errors"])
    yield gauge("inflight_fetches", "block loads in progress", s["inflight_fetches"])
    up = s["uploads"]
    yield gauge("pending_upload_blocks", "staged blocks waiting for upload", up["pending_blocks"])
    yield gauge("pending_upload_bytes", "bytes of staged blocks waiting for upload", up["pending_bytes"])
    yield counter("uploaded_blocks", "staged blocks uploaded in the background", up["uploaded_blocks"])
    yield counter("upload_failures", "failed background upload attempts", up["failed_attempts"])
    fuse = s["fuse"]
    yield counter("fuse_read_requests", "FUSE read requests", fuse["reads"])
    yield counter("fuse_read_bytes", "bytes returned by FUSE reads", fuse["read_bytes"])
    yield counter("readahead_blocks", "blocks prefetched for sequential readers", fuse["readahead_blocks"])
    yield counter("opens", "file opens", fuse["opens"])
    yield counter("keep_cache_opens", "opens that kept the kernel page cache", fuse["keep_cache_opens"])
    warm = s.get("warmup", {"blocks": 0, "bytes": 0})
    yield counter("warmup_blocks", "blocks loaded by warmup", warm["blocks"])
    yield counter("warmup_bytes", "bytes loaded by warmup", warm["bytes"])
    yield _histogram("fuse_op_duration_seconds", "time to answer a FUSE request, by op", "op",
                     vol, s.get("fuse_ops", {}))
    yield _histogram("object_request_duration_seconds", "object store request time, by method", "method",
                     vol, s.get("store_requests", {}))
    yield _histogram("meta_request_duration_seconds",
                     "metadata call time, by path (direct: on the event loop; thread: a worker)", "path",
                     vol, s.get("meta_requests", {}))


def _histogram(name: str, doc: str, label: str, vol: str, snap: dict[str, Any]) -> Any:
    """A latency.Histograms snapshot as one Prometheus histogram family (cumulative buckets)."""
    from prometheus_client.core import HistogramMetricFamily

    from ..latency import BUCKETS

    h = HistogramMetricFamily(f"fusecache_{name}", doc, labels=["volume", label])
    for key, data in sorted(snap.items()):
        running, buckets = 0, []
        for bound, n in zip((*(str(b) for b in BUCKETS), "+Inf"), data["counts"], strict=True):
            running += n
            buckets.append((bound, running))
        h.add_metric([vol, key], buckets, data["sum"])
    return h


class _Collector:
    def __init__(self, stats: Callable[[], Stats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must not take the exporter down
            log.exception("collecting metrics failed")
            return
        yield from metric_families(stats)


class MetricsServer:
    def __init__(self, server: Any, thread: Any) -> None:
        self._server, self._thread = server, thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics(addr: str, port: int, stats: Callable[[], Stats]) -> MetricsServer:
    """Serve `stats()` as Prometheus metrics on http://addr:port/metrics (a daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))  # type: ignore[arg-type]
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise CliError(f"--metrics {addr}:{port}: {exc.strerror}") from None
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return MetricsServer(server, thread)
