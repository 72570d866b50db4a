"""How a client's memory budget (`mount --memory-budget`) is shared out.

Everything that holds block data in the client's memory is bounded by one plan:

- the MEM cache tier (its quota) and the queue of its evicted blocks waiting for the SSD
  tier (the demotion queue);
- blocks held for readers (the loader's recently used blocks) and block loads in flight
  (readers' fetches, readahead, warmup), each in blocks of the volume's block size;
- written blocks buffered for upload.

What is not block data (the interpreter, libraries, Redis and S3 connection pools, the
SSD tier's index, open-file state) is a fixed overhead on top: docs/performance.md gives
its measured size. One more block per file being written (the block it is filling) is
also on top; a workload writing thousands of files at once should raise the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..units import format_size

DEFAULT_BUDGET = 1 << 30
MEM_TIER_SHARE = 0.5  # the MEM tier may take at most this share of the budget
MIN_BLOCKS = 8  # block buffers the client needs to work at all


class BudgetTooSmall(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    budget: int
    block_size: int
    mem_tier: int  # quota of the MEM tier (0: none)
    demote_queue: int  # bytes of MEM evictions that may wait for the SSD tier
    recent_blocks: int  # blocks the loader keeps for readers
    read_slots: int  # block loads in flight for readers
    readahead_slots: int
    warmup_slots: int
    upload_slots: int  # written blocks buffered for upload

    @property
    def planned(self) -> int:
        blocks = self.recent_blocks + self.read_slots + self.readahead_slots + self.warmup_slots + self.upload_slots
        return self.mem_tier + self.demote_queue + blocks * self.block_size

    def describe(self) -> str:
        return (f"memory budget {format_size(self.budget)}: mem tier {format_size(self.mem_tier)}, "
                f"demotion queue {format_size(self.demote_queue)}, {self.recent_blocks} blocks for readers, "
                f"{self.read_slots}+{self.readahead_slots}+{self.warmup_slots} loads in flight "
                f"(read, readahead, warmup), {self.upload_slots} upload buffers of {format_size(self.block_size)}")


def plan_memory(budget: int, block_size: int, mem_tier: int, *, readahead_blocks: int = 4,
                upload_blocks: int = 32, warmup_blocks: int = 16) -> MemoryPlan:
    """Share `budget` bytes out; the other arguments are what the user asked for, which
    the plan lowers (never raises) to fit. BudgetTooSmall says what does not fit."""
    if mem_tier > MEM_TIER_SHARE * budget:
        raise BudgetTooSmall(
            f"the mem cache tier ({format_size(mem_tier)}) may use at most half of the memory budget "
            f"({format_size(budget)}): raise --memory-budget or shrink the tier")
    # MEM evictions wait for the disk in a queue as large as one eviction burst, bounded.
    demote = min(mem_tier // 4, 64 << 20) if mem_tier else 0
    blocks = (budget - mem_tier - demote) // block_size
    if blocks < MIN_BLOCKS:
        raise BudgetTooSmall(
            f"a memory budget of {format_size(budget)} leaves room for {max(blocks, 0)} blocks of "
            f"{format_size(block_size)}; it needs at least {MIN_BLOCKS}: raise --memory-budget")
    # Writes get up to a third, readers' fetches and kept blocks the most, warmup a little.
    upload = max(2, min(upload_blocks, blocks // 3))
    left = blocks - upload
    readahead = min(2 * readahead_blocks, left // 4) if readahead_blocks else 0
    warmup = max(1, min(warmup_blocks, left // 8))
    recent = max(2, min(2 * (readahead_blocks + 1), (left - readahead - warmup) // 3))
    reads = max(2, left - readahead - warmup - recent)
    reads = min(reads, 64)  # more than the I/O threads could serve buys nothing
    return MemoryPlan(budget, block_size, mem_tier, demote, recent, reads, readahead, warmup, upload)
