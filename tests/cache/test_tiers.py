"""Behaviour of the MEM and SSD tiers through TieredCache, on real directories."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from fusecache.cache import TieredCache
from fusecache.cache.blockfile import file_size
from tests.cache.helpers import block_of, bytes_on_disk, files_under, key_of, mem, ssd

BS = 64 << 10


def fill(cache: TieredCache, ids: range, size: int = BS) -> None:
    for i in ids:
        cache.put(key_of(i, size), block_of(i, size))


def test_mem_put_get_and_miss() -> None:
    cache = TieredCache([mem(1 << 20)], "v")
    cache.put("a", b"hello")
    assert cache.get("a") == b"hello"
    assert cache.get("b") is None
    assert cache.contains("a") == "mem"
    assert cache.contains("b") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 1)
    assert (stats.tiers[0].used, stats.tiers[0].blocks) == (5, 1)


def test_ssd_put_get_roundtrip(tmp_path: Path) -> None:
    cache = TieredCache([ssd(8 << 20, tmp_path)], "v")
    data = block_of(1, BS)
    cache.put(key_of(1, BS), data)
    assert cache.get(key_of(1, BS)) == data
    assert cache.contains(key_of(1, BS)) == "ssd"
    assert cache.stats().tiers[0].used == file_size(key_of(1, BS), BS) == bytes_on_disk(tmp_path)


@pytest.mark.parametrize("medium", ["mem", "ssd"])
def test_eviction_starts_above_high_and_stops_at_low(tmp_path: Path, medium: str) -> None:
    one = file_size(key_of(0, BS), BS) if medium == "ssd" else BS
    quota = 100 * one
    tier = ssd(quota, tmp_path, free_ratio=0.0) if medium == "ssd" else mem(quota)
    cache = TieredCache([tier], "v")
    high, low = 0.95 * quota, 0.7 * quota
    evictions_seen = 0
    for i in range(400):
        before = cache.stats().tiers[0]
        cache.put(key_of(i, BS), block_of(i, BS))
        after = cache.stats().tiers[0]
        assert after.used <= quota
        if after.evictions > before.evictions:
            evictions_seen += 1
            assert before.used + one > high, "evicted before usage would cross the high watermark"
            assert after.used <= low, "eviction stopped above the low watermark"
            assert after.used > low - one, "eviction went further than needed"
        else:
            assert after.used == before.used + one
            assert after.used <= high
    assert evictions_seen >= 10
    # LRU: the most recent blocks are the ones kept.
    assert cache.get(key_of(399, BS)) == block_of(399, BS)
    assert cache.get(key_of(0, BS)) is None


def test_lru_keeps_recently_read_blocks(tmp_path: Path) -> None:
    one = file_size(key_of(0, BS), BS)
    cache = TieredCache([ssd(20 * one, tmp_path, free_ratio=0.0)], "v")
    fill(cache, range(18))
    assert cache.get(key_of(0, BS)) is not None  # touch the oldest
    fill(cache, range(18, 30))
    assert cache.get(key_of(0, BS)) == block_of(0, BS)
    assert cache.get(key_of(1, BS)) is None


def test_mem_evictions_demote_to_ssd(tmp_path: Path) -> None:
    cache = TieredCache([mem(10 * BS), ssd(64 << 20, tmp_path)], "v")
    fill(cache, range(40))
    cache.wait_demotions()  # demotion runs in the background
    stats = cache.stats()
    mem_stats, ssd_stats = stats.tiers
    assert mem_stats.used <= 10 * BS
    assert mem_stats.demotions == mem_stats.evictions > 0
    assert ssd_stats.blocks == mem_stats.demotions
    for i in range(40):
        assert cache.contains(key_of(i, BS)) in ("mem", "ssd")
    oldest = key_of(0, BS)
    assert cache.contains(oldest) == "ssd"
    assert cache.get(oldest) == block_of(0, BS)  # nothing was dropped


def test_blocks_removed_while_being_demoted_stay_removed(tmp_path: Path) -> None:
    cache = TieredCache([mem(4 * BS), ssd(64 << 20, tmp_path)], "v")
    for i in range(200):
        cache.put(key_of(i, BS), block_of(i, BS))
        if i >= 4:
            cache.remove(key_of(i - 4, BS))  # likely queued for demotion, or being written
    for i in range(196, 200):
        cache.remove(key_of(i, BS))
    cache.wait_demotions()
    assert all(cache.contains(key_of(i, BS)) is None for i in range(200))
    assert cache.stats().tiers[1].used == 0
    assert files_under(tmp_path) == []


def test_ssd_hit_is_promoted_to_mem_without_rewrite(tmp_path: Path) -> None:
    cache = TieredCache([mem(10 * BS), ssd(64 << 20, tmp_path)], "v", promote=True)
    fill(cache, range(20))
    cache.wait_demotions()
    key = key_of(0, BS)
    assert cache.contains(key) == "ssd"
    assert cache.get(key) == block_of(0, BS)
    assert cache.contains(key) == "mem"
    mem_stats, ssd_stats = cache.stats().tiers
    assert (mem_stats.misses, ssd_stats.hits) == (1, 1)
    # Pushing it out of MEM again needs no disk write: its SSD copy is still there.
    fill(cache, range(100, 109))
    cache.wait_demotions()
    assert cache.contains(key) == "ssd"
    mem_stats, ssd_stats = cache.stats().tiers
    assert mem_stats.evictions - mem_stats.demotions == 1  # the promoted block was not rewritten
    assert ssd_stats.admitted == mem_stats.demotions


@pytest.mark.parametrize("medium", ["mem", "ssd"])
@pytest.mark.parametrize("protected_share", [0.8, 0.0])
def test_blocks_read_again_survive_a_large_scan(tmp_path: Path, medium: str,
                                                protected_share: float) -> None:
    """Segmented LRU: a pass over 3x the cache pushes out blocks read once, not blocks read
    twice. With protected_share=0 (plain LRU) the scan pushes out everything."""
    one = file_size(key_of(0, BS), BS)
    tier = mem(20 * BS) if medium == "mem" else ssd(20 * one, tmp_path, free_ratio=0.0)
    cache = TieredCache([tier], "v", protected_share=protected_share)
    fill(cache, range(10))
    for i in range(5):
        assert cache.get(key_of(i, BS)) == block_of(i, BS)
    fill(cache, range(100, 160))
    survivors = [i for i in range(10) if cache.contains(key_of(i, BS))]
    assert survivors == ([0, 1, 2, 3, 4] if protected_share else [])
    assert cache.stats().tiers[0].used <= cache.stats().tiers[0].quota


def test_no_promotion_by_default(tmp_path: Path) -> None:
    cache = TieredCache([mem(10 * BS), ssd(64 << 20, tmp_path)], "v")
    fill(cache, range(20))
    cache.wait_demotions()
    assert cache.get(key_of(0, BS)) == block_of(0, BS)
    assert cache.contains(key_of(0, BS)) == "ssd"


def test_several_ssd_paths_spread_blocks(tmp_path: Path) -> None:
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    tiers = [ssd(256 << 20, *dirs)]
    cache = TieredCache(tiers, "v")
    fill(cache, range(300), 4096)
    counts = [len(files_under(d)) for d in dirs]
    assert sum(counts) == 300
    assert min(counts) >= 60, counts  # ~100 each; hashing, not round robin
    cache.close()
    again = TieredCache(tiers, "v")
    for i in range(300):
        assert again.get(key_of(i, 4096)) == block_of(i, 4096)


def test_index_rebuilt_after_reopen(tmp_path: Path) -> None:
    tiers = [mem(4 * BS), ssd(32 << 20, tmp_path)]
    first = TieredCache(tiers, "v")
    fill(first, range(30))
    first.close()  # demotes what MEM holds, so everything is on disk
    digests = {i: hashlib.sha256(block_of(i, BS)).hexdigest() for i in range(30)}
    second = TieredCache.open(tiers, "v")
    assert second.stats().tiers[1].blocks == 30
    assert second.stats().tiers[1].used == bytes_on_disk(tmp_path)
    for i in range(30):
        data = second.get(key_of(i, BS))
        assert data is not None and hashlib.sha256(data).hexdigest() == digests[i]
    assert second.stats().tiers[1].misses == 0


def test_reopen_with_smaller_quota_evicts_to_low(tmp_path: Path) -> None:
    one = file_size(key_of(0, BS), BS)
    fill(TieredCache([ssd(100 * one, tmp_path)], "v"), range(90))
    smaller = TieredCache([ssd(50 * one, tmp_path)], "v")
    stats = smaller.stats().tiers[0]
    assert stats.used <= 0.7 * 50 * one
    assert bytes_on_disk(tmp_path) == stats.used
    assert smaller.get(key_of(89, BS)) == block_of(89, BS)


def test_volumes_never_collide(tmp_path: Path) -> None:
    one = TieredCache([ssd(8 << 20, tmp_path)], "vol-one")
    two = TieredCache([ssd(8 << 20, tmp_path)], "vol-two")
    one.put("same/key", b"one")
    two.put("same/key", b"two")
    one.close()
    two.close()
    assert TieredCache([ssd(8 << 20, tmp_path)], "vol-one").get("same/key") == b"one"
    assert TieredCache([ssd(8 << 20, tmp_path)], "vol-two").get("same/key") == b"two"
    assert one.clean() == 0
    assert not (tmp_path / "vol-one").exists()
    assert TieredCache([ssd(8 << 20, tmp_path)], "vol-two").get("same/key") == b"two"


@pytest.mark.parametrize("volume", ["", ".", "..", "a/b"])
def test_bad_volume_id(tmp_path: Path, volume: str) -> None:
    with pytest.raises(ValueError, match="cannot name a cache directory"):
        TieredCache([ssd(1 << 20, tmp_path)], volume)


# ---------------------------------------------------------------- corruption


def _only_file(path: Path) -> Path:
    (found,) = files_under(path)
    return found


def _flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1000)


def _extend(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


def _garble_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"XXXX")


def _flip_then_fix_length(path: Path) -> None:
    """Same size, data replaced: only the checksum can tell."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - BS)
        f.write(os.urandom(BS))


@pytest.mark.parametrize("damage", [_flip_last_byte, _truncate, _extend, _garble_header, _flip_then_fix_length])
@pytest.mark.parametrize("reopen", [False, True])
def test_corrupt_cache_file_is_a_miss_then_recached(tmp_path: Path, damage, reopen: bool) -> None:
    tiers = [ssd(8 << 20, tmp_path)]
    cache = TieredCache(tiers, "v")
    key, data = key_of(7, BS), block_of(7, BS)
    cache.put(key, data)
    damage(_only_file(tmp_path))
    if reopen:
        cache.close()
        cache = TieredCache(tiers, "v")
    assert cache.get(key) is None
    stats = cache.stats().tiers[0]
    assert (stats.corrupt, stats.blocks, stats.used) == (1, 0, 0)
    assert files_under(tmp_path) == []  # the bad file is gone
    cache.put(key, data)
    assert cache.get(key) == data


def test_checksum_off_still_checks_length(tmp_path: Path) -> None:
    cache = TieredCache([ssd(8 << 20, tmp_path)], "v", checksum=False)
    cache.put("k", b"x" * 5000)
    _truncate(_only_file(tmp_path))
    assert cache.get("k") is None


def test_file_deleted_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    cache = TieredCache([ssd(8 << 20, tmp_path)], "v")
    cache.put("k", b"data")
    _only_file(tmp_path).unlink()
    assert cache.get("k") is None
    assert cache.stats().tiers[0].used == 0
    cache.put("k", b"data")
    assert cache.get("k") == b"data"


def test_startup_removes_temporary_and_foreign_files(tmp_path: Path) -> None:
    tiers = [ssd(8 << 20, tmp_path)]
    TieredCache(tiers, "v").put("k", b"data")
    base = tmp_path / "v"
    (base / "tmp" / "half-written.tmp").write_bytes(b"partial")
    (base / "clean" / "00").mkdir(exist_ok=True)
    (base / "clean" / "00" / "no-generation").write_bytes(b"junk")
    cache = TieredCache(tiers, "v")
    assert not (base / "tmp" / "half-written.tmp").exists()
    assert not (base / "clean" / "00" / "no-generation").exists()
    assert cache.get("k") == b"data"
    assert cache.stats().tiers[0].blocks == 1


# ---------------------------------------------------------------- writeback staging


def test_staged_blocks_survive_reopen_and_are_listed(tmp_path: Path) -> None:
    tiers = [mem(1 << 20), ssd(8 << 20, tmp_path)]
    cache = TieredCache(tiers, "v")
    keys = [key_of(i, BS) for i in range(5)]
    for i, key in enumerate(keys):
        assert cache.stage(key, block_of(i, BS))
    assert cache.pending_staged() == sorted(keys)
    assert cache.get(keys[0]) == block_of(0, BS)
    del cache  # no close(): as after a crash
    again = TieredCache(tiers, "v")
    assert again.pending_staged() == sorted(keys)
    stats = again.stats()
    assert (stats.staged_blocks, stats.staged_bytes) == (5, 5 * file_size(keys[0], BS))
    for i, key in enumerate(keys):
        assert again.get(key) == block_of(i, BS)
    assert len(files_under(tmp_path, "staged")) == 5


def test_uploaded_turns_staged_into_clean(tmp_path: Path) -> None:
    tiers = [ssd(8 << 20, tmp_path)]
    cache = TieredCache(tiers, "v")
    cache.stage("k1", b"one")
    cache.stage("k2", b"two")
    cache.uploaded("k1")
    assert cache.pending_staged() == ["k2"]
    assert cache.get("k1") == b"one"
    assert len(files_under(tmp_path, "staged")) == 1
    assert len(files_under(tmp_path, "clean")) == 1
    cache.close()
    again = TieredCache(tiers, "v")
    assert again.pending_staged() == ["k2"]
    assert again.get("k1") == b"one"
    assert again.evict(["k1", "k2"]) == 1  # only the clean one can be evicted
    assert again.get("k2") == b"two"


def test_staged_blocks_are_never_evicted(tmp_path: Path) -> None:
    one = file_size(key_of(0, BS), BS)
    cache = TieredCache([ssd(40 * one, tmp_path, free_ratio=0.0)], "v")
    staged = [key_of(i, BS) for i in range(1000, 1010)]
    for i, key in enumerate(staged, start=1000):
        assert cache.stage(key, block_of(i, BS))
    fill(cache, range(200))  # 5x the quota of clean blocks
    stats = cache.stats().tiers[0]
    assert stats.evictions > 0
    assert stats.used <= 40 * one
    assert cache.pending_staged() == sorted(staged)
    for i, key in enumerate(staged, start=1000):
        assert cache.get(key) == block_of(i, BS)
    assert cache.evict_prefix("vol/") == stats.blocks - 10  # clean ones only


def test_stage_refused_when_staged_blocks_fill_the_quota(tmp_path: Path) -> None:
    one = file_size(key_of(0, BS), BS)
    cache = TieredCache([mem(4 * BS), ssd(10 * one, tmp_path, free_ratio=0.0)], "v")
    results = [cache.stage(key_of(i, BS), block_of(i, BS)) for i in range(12)]
    assert results == [True] * 10 + [False] * 2
    # Clean admissions and demotions are refused quietly; reads still work.
    fill(cache, range(100, 120))
    cache.wait_demotions()
    assert cache.stats().tiers[1].used == 10 * one
    assert cache.get(key_of(0, BS)) == block_of(0, BS)
    cache.uploaded(key_of(0, BS))
    assert cache.stage(key_of(10, BS), block_of(10, BS))  # the uploaded block made room


def test_stage_without_ssd_tier_returns_false() -> None:
    cache = TieredCache([mem(1 << 20)], "v")
    assert not cache.can_stage
    assert cache.stage("k", b"data") is False
    assert cache.pending_staged() == []


def test_restaging_a_clean_block_makes_it_staged(tmp_path: Path) -> None:
    cache = TieredCache([ssd(8 << 20, tmp_path)], "v")
    cache.put("k", b"data")
    assert cache.stage("k", b"data")
    assert cache.pending_staged() == ["k"]
    assert len(files_under(tmp_path)) == 1
    assert cache.stage("k", b"data")  # idempotent
    assert cache.stats().tiers[0].used == file_size("k", 4)


def test_crash_between_link_and_unlink_keeps_the_staged_copy(tmp_path: Path) -> None:
    """uploaded() links the clean name before unlinking the staged one; a crash in between
    leaves both names, and start-up must keep the staged one (it may need uploading)."""
    tiers = [ssd(8 << 20, tmp_path)]
    cache = TieredCache(tiers, "v")
    cache.stage("k", b"data")
    (staged,) = files_under(tmp_path, "staged")
    clean = tmp_path / "v" / "clean" / staged.parent.name / staged.name
    clean.parent.mkdir(exist_ok=True)
    os.link(staged, clean)
    del cache  # as a crash: nothing flushed; the directory lock goes with the object
    again = TieredCache(tiers, "v")
    assert again.pending_staged() == ["k"]
    assert files_under(tmp_path) == [staged]
    assert again.stats().tiers[0].used == file_size("k", 4)


# ---------------------------------------------------------------- removal, stats


def test_remove_contains_evict_prefix_and_clean(tmp_path: Path) -> None:
    cache = TieredCache([mem(4 * BS), ssd(32 << 20, tmp_path)], "v")
    fill(cache, range(10))
    cache.wait_demotions()
    cache.stage("other/staged", b"s")
    cache.remove(key_of(9, BS))  # in MEM
    cache.remove(key_of(0, BS))  # on SSD
    assert cache.contains(key_of(9, BS)) is None and cache.contains(key_of(0, BS)) is None
    assert cache.evict_prefix("vol/blocks/0") == 8
    assert all(cache.get(key_of(i, BS)) is None for i in range(10))
    assert cache.pending_staged() == ["other/staged"]
    assert cache.clean() == 1  # the staged block is kept...
    cache.close()
    cache = TieredCache([ssd(32 << 20, tmp_path)], "v")
    assert cache.pending_staged() == ["other/staged"]
    cache.remove("other/staged")
    assert cache.pending_staged() == []
    cache.clean()
    assert not (tmp_path / "v").exists()


def test_clean_force_removes_staged(tmp_path: Path) -> None:
    cache = TieredCache([ssd(32 << 20, tmp_path)], "v")
    cache.stage("k", b"s")
    assert cache.clean(force=True) == 0
    assert not (tmp_path / "v").exists()


def test_stats_report_configuration_and_counters(tmp_path: Path) -> None:
    cache = TieredCache([mem(1 << 20, low=0.5, high=0.8), ssd(2 << 20, tmp_path, tmp_path / "b")], "v")
    cache.put("a", b"12345")
    cache.get("a")
    cache.get("zzz")
    d = cache.stats().to_dict()
    mem_d, ssd_d = d["tiers"]  # type: ignore[misc]
    assert (mem_d["medium"], mem_d["quota"], mem_d["low"], mem_d["high"]) == ("mem", 1 << 20, 0.5, 0.8)
    assert (mem_d["hits"], mem_d["misses"], mem_d["used"], mem_d["blocks"]) == (1, 1, 5, 1)
    assert ssd_d["paths"] == [str(tmp_path), str(tmp_path / "b")]
    assert (ssd_d["misses"], ssd_d["hits"]) == (1, 0)
    assert (d["hits"], d["misses"], d["hit_ratio"]) == (1, 1, 0.5)


def test_seeded_random_workload_respects_quotas(tmp_path: Path) -> None:
    """A workload ~5x the cache: quotas hold after every operation, hits return exact bytes."""
    rng = random.Random(20240601)
    tiers = [mem(1 << 20), ssd(3 << 20, tmp_path / "a", tmp_path / "b", free_ratio=0.0)]
    cache = TieredCache(tiers, "v")
    sizes = {i: rng.choice([1, 4096, 50_000, 200_000, 300_000]) for i in range(200)}
    total = sum(sizes.values())
    assert total > 5 * (4 << 20)
    hits = 0
    for _step in range(3000):
        i = rng.randrange(200)
        key, size = key_of(i, sizes[i]), sizes[i]
        op = rng.random()
        if op < 0.5:
            data = cache.get(key)
            if data is not None:
                hits += 1
                assert data == block_of(i, size)
            else:
                cache.put(key, block_of(i, size))
        elif op < 0.9:
            cache.put(key, block_of(i, size))
        elif op < 0.95:
            cache.remove(key)
        else:
            cache.evict([key])
        for tier in cache.stats().tiers:
            assert tier.used <= tier.quota
    assert hits > 100
    cache.wait_demotions()
    assert bytes_on_disk(tmp_path) == cache.stats().tiers[1].used
