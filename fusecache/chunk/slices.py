"""Resolving a chunk's slice list into what a reader sees.

A chunk's slices are kept in commit order; a later slice covers earlier ones where they
overlap. `visible()` flattens that history into non-overlapping pieces; `segments()` cuts
a read range out of them, with holes (id 0) where nothing was ever written.
"""

from __future__ import annotations

from bisect import bisect_right

from ..types import Slice

# visible() of the slice lists read most recently. A slice list is a value: once read it is
# never changed (a new state of the chunk is a new list), so a list's flattening can be kept
# as long as the list itself is, and a random reader that cuts many small ranges out of one
# chunk flattens it once. Entries hold their list, so an id is never reused while kept.
FLATTENED_LISTS = 1024
_flattened: dict[int, tuple[list[Slice], int, list[Slice], list[int]]] = {}


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


def flattened(slices: list[Slice]) -> tuple[list[Slice], list[int]]:
    """visible(slices) and each piece's start position (for a bisect), remembered."""
    kept = _flattened.get(id(slices))
    if kept is not None and kept[0] is slices and kept[1] == len(slices):
        return kept[2], kept[3]
    pieces = visible(slices)
    starts = [p.pos for p in pieces]
    if len(_flattened) >= FLATTENED_LISTS:
        _flattened.clear()
    _flattened[id(slices)] = (slices, len(slices), pieces, starts)
    return pieces, starts


def piece_at(slices: list[Slice], pos: int, length: int) -> Slice | None:
    """The one piece that covers all of [pos, pos+length), if one does (a small read's
    case: no segment is built for it); None if the range spans pieces or holes."""
    pieces, starts = flattened(slices)
    first = bisect_right(starts, pos) - 1  # the last piece starting at or before pos
    if first < 0 or length <= 0:
        return None
    piece = pieces[first]
    return piece if piece.pos + piece.length >= pos + length else None


def segments(slices: list[Slice], pos: int, length: int) -> list[Slice]:
    """The pieces covering [pos, pos+length) of a chunk, gaps filled with holes (id 0)."""
    piece = piece_at(slices, pos, length)
    if piece is not None:  # one piece covers it all: a small read's case
        return [Slice(pos, piece.id, piece.size, piece.off + pos - piece.pos, length, piece.hashes)]
    pieces, starts = flattened(slices)
    end = pos + length
    first = max(0, bisect_right(starts, pos) - 1)  # the last piece starting at or before pos
    out: list[Slice] = []
    cursor = pos
    for i in range(first, len(pieces)):
        piece = pieces[i]
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
