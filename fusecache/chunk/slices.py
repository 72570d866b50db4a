"""Resolving a chunk's slice list into what a reader sees.

A chunk's slices are kept in commit order; a later slice covers earlier ones where they
overlap. `visible()` flattens that history into non-overlapping pieces; `segments()` cuts
a read range out of them, with holes (id 0) where nothing was ever written.
"""

from __future__ import annotations

from ..types import Slice


def visible(slices: list[Slice]) -> list[Slice]:
    """Non-overlapping pieces sorted by position: the newest data at every offset."""
    pieces: list[Slice] = []
    for new in slices:
        if new.length <= 0:
            continue
        kept: list[Slice] = []
        for old in pieces:
            if old.end <= new.pos or old.pos >= new.end:
                kept.append(old)
                continue
            if old.pos < new.pos:  # left remainder of the covered piece
                kept.append(Slice(old.pos, old.id, old.size, old.off, new.pos - old.pos, old.hashes))
            if old.end > new.end:  # right remainder
                cut = new.end - old.pos
                kept.append(Slice(new.end, old.id, old.size, old.off + cut, old.end - new.end, old.hashes))
        kept.append(new)
        kept.sort(key=lambda s: s.pos)
        pieces = kept
    return pieces


def segments(slices: list[Slice], pos: int, length: int) -> list[Slice]:
    """The pieces covering [pos, pos+length) of a chunk, gaps filled with holes (id 0)."""
    out: list[Slice] = []
    end = pos + length
    cursor = pos
    for piece in visible(slices):
        if piece.end <= cursor:
            continue
        if piece.pos >= end:
            break
        if piece.pos > cursor:
            out.append(Slice(cursor, 0, 0, 0, piece.pos - cursor))
            cursor = piece.pos
        stop = min(piece.end, end)
        skip = cursor - piece.pos
        out.append(Slice(cursor, piece.id, piece.size, piece.off + skip, stop - cursor, piece.hashes))
        cursor = stop
    if cursor < end:
        out.append(Slice(cursor, 0, 0, 0, end - cursor))
    return out
