"""Tiered block cache: MEM and SSD tiers with quotas, watermarks and writeback staging.

See docs/cache.md for the block states, the on-disk format and the crash rules.
"""

from fusecache.cache.config import TierConfig, format_size, parse_cache_spec, parse_size
from fusecache.cache.stats import CacheStats, TierStats
from fusecache.cache.tiered import TieredCache

__all__ = [
    "CacheStats",
    "TierConfig",
    "TierStats",
    "TieredCache",
    "format_size",
    "parse_cache_spec",
    "parse_size",
]
