"""The Grafana dashboard's metrics are served by a real mount, the latency histograms
count, and `fusecache bench` runs on a real mount (issue 12 items 7 and 8)."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.fuse.helpers import Volume, run_cli
from tests.servers import free_port

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fusecache-dashboard.json"
KiB, MiB = 1 << 10, 1 << 20

# PromQL words that are not metric names (functions are dropped by the "(" that follows them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "le", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: label matchers, ranges, grouping clauses,
    strings and functions removed; what is left of the identifiers names series."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values, legend-like text)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range / subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word, rest = m.group(), expr[m.end():]
        if rest.lstrip().startswith("(") or word.lower() in _KEYWORDS or word.startswith("$"):
            continue
        if expr[m.start() - 1:m.start()] == "$":  # a Grafana variable such as $__rate_interval
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            # label_values(METRIC, label): the metric is the first argument.
            exprs.append(re.sub(r"label_values\(([^,]+),.*", r"\1", query["query"]))
    return exprs


def test_promql_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, op) (rate(fusecache_x_seconds_bucket{volume=~"$volume"}'
            '[$__rate_interval]))) / on(volume) fusecache_y_bytes * 2')
    assert promql_metric_names(expr) == {"fusecache_x_seconds_bucket", "fusecache_y_bytes"}


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value} of a mount's /metrics, parsed by prometheus_client."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def _by(samples: dict, name: str, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            out[d[label]] = value
    return out


def test_dashboard_metrics_served_and_histograms_count(file_volume: Volume, tmp_path: Path) -> None:
    port = free_port()
    m = file_volume.mount("--cache", "mem:16MiB", "--metrics", f"127.0.0.1:{port}")
    data = os.urandom(3 * MiB)
    (m.path / "d").mkdir()
    (m.path / "d" / "f").write_bytes(data)
    assert (m.path / "d" / "f").read_bytes() == data
    os.stat(m.path / "d" / "f")
    os.listdir(m.path / "d")
    samples = scrape(port)

    wanted = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert len(wanted) >= 15, wanted
    missing = sorted(n for n in wanted if n not in samples)
    assert not missing, f"dashboard metrics the mount does not serve: {missing}"

    ops = _by(samples, "fusecache_fuse_op_duration_seconds_count", "op")
    for op in ("create", "write", "read", "mkdir", "lookup", "opendir", "readdir", "release"):
        assert ops.get(op, 0) >= 1, (op, ops)
    assert ops["write"] >= 3  # 3 MiB in writes of at most 1 MiB
    methods = _by(samples, "fusecache_object_request_duration_seconds_count", "method")
    assert methods.get("PUT", 0) >= 1, methods  # the 4 MiB default block size: one block
    assert _by(samples, "fusecache_object_request_duration_seconds_sum", "method")["PUT"] > 0
    # Cumulative buckets, the +Inf one equal to the count.
    buckets = _by(samples, "fusecache_fuse_op_duration_seconds_bucket", "le", op="write")
    bounds = sorted(buckets, key=float)
    assert [buckets[b] for b in bounds] == sorted(buckets[b] for b in bounds)
    assert buckets["+Inf"] == ops["write"]
    assert sum(_by(samples, "fusecache_meta_request_duration_seconds_count", "path").values()) >= 1
    # A later scrape sees more ops: the histograms keep counting.
    (m.path / "d" / "f").read_bytes()
    again = _by(scrape(port), "fusecache_fuse_op_duration_seconds_count", "op")
    assert again["open"] > ops["open"]


def test_bench_table_and_json(file_volume: Volume) -> None:
    m = file_volume.mount()
    (m.path / "keep").write_bytes(b"x")
    res = run_cli("bench", str(m.path), "--big-file-size", "2M", "--small-file-size", "4K",
                  "--small-file-count", "5", "-p", "2", "--json")
    stages = {s["stage"]: s for s in json.loads(res.stdout)["stages"]}
    assert set(stages) == {"write big files", "read big files", "write small files", "read small files",
                           "stat small files"}
    for s in stages.values():
        assert s["throughput"] > 0 and s["ms_per_item"] > 0 and s["seconds"] > 0, s
        assert s["fuse_ops"] > 0 and s["fuse_seconds"] > 0, s
    assert stages["write big files"]["items"] == 2 and stages["write big files"]["nbytes"] == 4 * MiB
    assert stages["write small files"]["items"] == 10 and stages["read small files"]["nbytes"] == 10 * 4 * KiB
    assert stages["stat small files"]["unit"] == "files/s"
    assert stages["write big files"]["object_requests"] > 0 and stages["write big files"]["object_seconds"] > 0
    assert stages["write small files"]["meta_calls"] > 0 and stages["write small files"]["meta_seconds"] > 0
    table = run_cli("bench", str(m.path), "--big-file-size", "1M", "--small-file-count", "3").stdout
    for name in stages:
        assert name in table
    assert "MiB/s" in table and "files/s" in table
    assert sorted(os.listdir(m.path)) == ["keep"]  # the bench directory is gone


def test_bench_refuses_bad_input(tmp_path: Path) -> None:
    cases = [
        ([str(tmp_path)], "not inside a fusecache mount"),
        ([str(tmp_path / "nowhere")], "no such directory"),
        ([str(tmp_path), "--big-file-size", "lots"], "--big-file-size: invalid size"),
        ([str(tmp_path), "--small-file-size", "0"], "--small-file-size: must be more than 0"),
        ([str(tmp_path), "--threads", "0"], "--threads: must be at least 1"),
        ([str(tmp_path), "--big-file-count", "0", "--small-file-count", "0"], "nothing to do"),
    ]
    for args, message in cases:
        res = run_cli("bench", *args, check=False)
        assert res.returncode != 0, args
        assert message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
