from __future__ import annotations

import pytest

from fusecache.cache import TierConfig, format_size, parse_cache_spec, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096),
    ("4096B", 4096),
    ("100k", 100 << 10),
    ("100KiB", 100 << 10),
    ("512M", 512 << 20),
    ("512MB", 512 << 20),
    ("4GiB", 4 << 30),
    ("4Gi", 4 << 30),
    ("4g", 4 << 30),
    ("1.5G", 3 << 29),
    ("2T", 2 << 40),
    (" 8 MiB ", 8 << 20),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "4 GiBs", "iB", "4iB", "1.5", "1e9", "four"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(100) == "100B"
    assert format_size(4 << 30) == "4.0GiB"
    assert format_size(3 << 19) == "1.5MiB"


def test_parse_mem_spec() -> None:
    tier = parse_cache_spec("mem:4GiB")
    assert tier == TierConfig("mem", 4 << 30)
    assert (tier.low, tier.high, tier.free_ratio) == (0.7, 0.95, 0.1)


def test_parse_ssd_specs() -> None:
    assert parse_cache_spec("ssd:/var/cache/fc:100GiB") == TierConfig("ssd", 100 << 30, ("/var/cache/fc",))
    two = parse_cache_spec("ssd:/a,/b:10GiB", low=0.5, high=0.9, free_ratio=0.2)
    assert two == TierConfig("ssd", 10 << 30, ("/a", "/b"), low=0.5, high=0.9, free_ratio=0.2)
    # A directory containing ':' is fine: the size is everything after the last ':'.
    assert parse_cache_spec("SSD:/mnt/odd:dir:1G").paths == ("/mnt/odd:dir",)


@pytest.mark.parametrize(("spec", "message"), [
    ("disk:/a:1G", "unknown medium 'disk'"),
    ("mem", "expected mem:SIZE"),
    ("mem:", "expected mem:SIZE"),
    ("mem:lots", "invalid size 'lots'"),
    ("mem:/a:1G", "a mem tier takes only a size"),
    ("mem:0", "quota must be positive"),
    ("ssd:10GiB", "needs a directory and a size"),
    ("ssd:/a,,/b:1G", "empty directory"),
    ("ssd:/a,/a:1G", "duplicate directory"),
    ("ssd:/a:ten", "invalid size 'ten'"),
])
def test_parse_cache_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_cache_spec(spec)
    assert repr(spec) in str(info.value)  # the message names what the user typed


@pytest.mark.parametrize(("low", "high"), [(0.9, 0.8), (0.0, 0.5), (0.5, 1.5), (0.7, 0.7)])
def test_watermarks_validated(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="0 < low < high <= 1"):
        parse_cache_spec("mem:1G", low=low, high=high)


def test_free_ratio_validated() -> None:
    with pytest.raises(ValueError, match="free ratio"):
        parse_cache_spec("ssd:/a:1G", free_ratio=1.0)
