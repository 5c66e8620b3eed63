"""A review policy's `confidence_fields` as a tree of picks: which places of an answer (JSON
pointers; an array index stands for the array's items) the confidence is taken from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pick:
    """The part of a policy's `confidence_fields` at one place: `whole` when the place or one
    above it is named (every leaf under it counts), else the named places below it."""

    whole: bool
    below: tuple[tuple[str, Pick], ...] = ()

    def child(self, segment: str) -> Pick:
        return self if self.whole else merge(p for s, p in self.below if s == segment)

    def items(self, first: int) -> Pick:
        """The pick for array indexes from `first` on (they share one place)."""
        if self.whole:
            return self
        return merge(p for s, p in self.below if is_index(s) and int(s) >= first)


NOTHING = Pick(False)


def sub_pick(pick: Pick | None, segment: str | None) -> Pick | None:
    if pick is None:
        return None
    return pick if pick.whole else (NOTHING if segment is None else pick.child(segment))


def merge(picks: Iterable[Pick]) -> Pick:
    """One pick for places several policy pointers meet at."""
    found = list(picks)
    if any(p.whole for p in found):
        return Pick(True)
    segments = sorted({s for p in found for s, _ in p.below})
    if not segments:
        return NOTHING
    return Pick(
        False, tuple((s, merge(c for p in found for t, c in p.below if t == s)) for s in segments)
    )


def pick_tree(pointers: Sequence[str] | None) -> Pick | None:
    if pointers is None:
        return None
    picks = []
    for pointer in pointers:
        pick = Pick(True)
        for segment in reversed(list(segments(pointer))):
            pick = Pick(False, ((segment, pick),))
        picks.append(pick)
    return merge(picks)


def segments(pointer: str) -> list[str]:
    if not pointer:
        return []
    segments = pointer[1:].split("/")
    if "~" in pointer:
        return [s.replace("~1", "/").replace("~0", "~") for s in segments]
    return segments


def is_index(segment: str) -> bool:
    """An array index as JSON Pointer writes it: `0`, or digits without a leading zero."""
    return segment.isascii() and segment.isdigit() and (segment == "0" or segment[0] != "0")
