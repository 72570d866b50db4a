"""The memory budget's plan: what it bounds always fits the budget, and what cannot fit is
refused with a line that names the flag."""

from __future__ import annotations

import itertools

import pytest

from fusecache.vfs.memory import BudgetTooSmall, plan_memory

MiB = 1 << 20


@pytest.mark.parametrize(("budget", "block", "mem"), list(itertools.product(
    [32 * MiB, 64 * MiB, 200 * MiB, 1 << 30, 8 << 30], [1 * MiB, 4 * MiB, 16 * MiB], [0, 8 * MiB, 256 * MiB])))
def test_every_plan_fits_its_budget(budget: int, block: int, mem: int) -> None:
    try:
        plan = plan_memory(budget, block, mem)
    except BudgetTooSmall:
        assert mem > budget / 2 or (budget - mem - min(mem // 4, 64 * MiB)) // block < 8
        return
    assert plan.planned <= budget, plan
    assert plan.mem_tier == mem and plan.upload_slots >= 2 and plan.read_slots >= 2 and plan.recent_blocks >= 2


def test_the_default_budget_keeps_the_default_settings() -> None:
    plan = plan_memory(1 << 30, 4 * MiB, 256 * MiB)
    assert (plan.upload_slots, plan.readahead_slots, plan.warmup_slots) == (32, 8, 16)
    assert plan.demote_queue == 64 * MiB and plan.planned <= 1 << 30


def test_a_small_budget_lowers_the_buffers_never_raises_them() -> None:
    small = plan_memory(64 * MiB, 4 * MiB, 0, upload_blocks=32)
    assert small.upload_slots <= 5 and small.planned <= 64 * MiB
    few = plan_memory(1 << 30, 4 * MiB, 0, upload_blocks=3, readahead_blocks=0)
    assert few.upload_slots == 3 and few.readahead_slots == 0


def test_what_cannot_fit_is_refused_with_the_flag_named() -> None:
    with pytest.raises(BudgetTooSmall, match=r"mem cache tier .* at most half .* --memory-budget"):
        plan_memory(512 * MiB, 4 * MiB, 300 * MiB)
    with pytest.raises(BudgetTooSmall, match=r"room for 4 blocks .* at least 8: raise --memory-budget"):
        plan_memory(16 * MiB, 4 * MiB, 0)
