"""The slice resolver against a brute-force byte-array model."""

from __future__ import annotations

import itertools
import random

from fusecache.chunk.slices import segments, visible
from fusecache.types import Slice

SIZE = 256


def model(slices: list[Slice]) -> list[tuple[int, int]]:
    """Per byte: (slice id, offset inside the slice object) of the newest writer, or (0, 0)."""
    out = [(0, 0)] * SIZE
    for s in slices:
        for i in range(s.length):
            out[s.pos + i] = (s.id, s.off + i)
    return out


def flatten(pieces: list[Slice]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in pieces:
        out.extend((p.id, p.off + i if p.id else 0) for i in range(p.length))
    return out


def random_slices(rng: random.Random, n: int) -> list[Slice]:
    result = []
    for sid in range(1, n + 1):
        pos = rng.randrange(SIZE)
        length = rng.randrange(1, SIZE - pos + 1)
        off = rng.randrange(0, 16)
        result.append(Slice(pos, sid, off + length, off, length))
    return result


def test_segments_match_byte_model() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        slices = random_slices(rng, rng.randrange(0, 8))
        pos = rng.randrange(SIZE)
        length = rng.randrange(0, SIZE - pos + 1)
        got = flatten(segments(slices, pos, length))
        assert got == model(slices)[pos : pos + length]


def test_visible_pieces_do_not_overlap() -> None:
    rng = random.Random(99)
    for _ in range(200):
        pieces = visible(random_slices(rng, 6))
        for a, b in itertools.pairwise(pieces):
            assert a.end <= b.pos


def test_hole_only_chunk() -> None:
    assert segments([], 10, 5) == [Slice(10, 0, 0, 0, 5)]
