"""Regular expressions in schemas (`pattern`, `patternProperties` keys): what one costs, and
which are refused.

A pattern costs twice. The engine's grammar compiler writes every bounded repeat out (xgrammar
0.2.8 converts `^a{1000}$` in about 40-95 ms and `^a{1000}b{1000}c{1000}d{1000}$` in 450 ms),
and jsonschema runs it with `re` in this process, which backtracks: a failed match tries every
way of splitting the text between repeats that can take the same characters (`^a*a*a*a*$` on
400 characters took 9 s, `^.{0,100}` five times on 300 took 60 s).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

MAX_PATTERN_CHARS = 1_000
MAX_REPEAT_COUNT = 1_000
# States a grammar compiler writes out for one pattern: characters and classes, repeats times
# their count (an unbounded one at its minimum), alternatives added.
MAX_PATTERN_STATES = 1_000
# Repeats of variable length that compete for the same characters, beyond the first of each
# run (plus one for a pattern that is not anchored with `^`, which `re.search` tries at every
# position). A failed match costs about the text's length to this power, times the length:
# 2 allows `^[^@\s]+@[^@\s]+\.[^@\s]+$` and `^.*foo.*bar.*$`; `^a*a*a*a*$` (3) took 0.4-19 s on
# 100-400 characters.
MAX_REPEAT_OVERLAPS = 2
# A variable-length repeat inside a repeat of more than this many copies is refused outright.
_NESTED_COPIES = 10


class BadPattern(ValueError):
    """A pattern that is refused; the message says why."""


# Python's own parser is private but has been stable in shape since 3.11; jsonschema runs
# patterns with `re`, so a pattern that `re` cannot parse is refused anyway.
_parser: Any = importlib.import_module("re._parser")
_sre: Any = importlib.import_module("re._constants")
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_UNBOUNDED: int = _sre.MAXREPEAT
_TOP = 0x10FFFF
_ASCII_AND_BEYOND = ((0x80, _TOP),)
# A superset of each category (anything beyond ASCII may belong to it) ...
_CATEGORIES: dict[Any, tuple[tuple[int, int], ...]] = {
    _sre.CATEGORY_DIGIT: ((48, 57), *_ASCII_AND_BEYOND),
    _sre.CATEGORY_WORD: ((48, 57), (65, 90), (95, 95), (97, 122), *_ASCII_AND_BEYOND),
    _sre.CATEGORY_SPACE: ((9, 13), (28, 32), *_ASCII_AND_BEYOND),
}
# ... and a subset (its ASCII part), whose complement is a superset of the negated category.
_CATEGORY_CORES: dict[Any, tuple[tuple[int, int], ...]] = {
    _sre.CATEGORY_NOT_DIGIT: ((48, 57),),
    _sre.CATEGORY_NOT_WORD: ((48, 57), (65, 90), (95, 95), (97, 122)),
    _sre.CATEGORY_NOT_SPACE: ((9, 13), (32, 32)),
}
_ANCHORS = frozenset({_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING})
_Chars = frozenset[tuple[int, int]] | None  # code point ranges; None: any character
_NONE: frozenset[tuple[int, int]] = frozenset()


def pattern_states(pattern: str) -> int:
    """The states a grammar compiler writes out for `pattern`; BadPattern if it is refused."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise BadPattern(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        parsed = _parser.parse(pattern)
        problem = _walk_pattern(parsed)
        if problem:
            raise BadPattern(problem)
        states = _states(parsed)
        overlaps = _overlaps(parsed)
    except (re.error, OverflowError) as exc:
        raise BadPattern(f"not a regular expression ({exc})") from None
    except RecursionError:
        raise BadPattern("nests too deeply") from None
    if states > MAX_PATTERN_STATES:
        raise BadPattern(
            f"{states} states, more than {MAX_PATTERN_STATES} (a grammar compiler writes "
            "each character or class out, and a repeat's body as often as its count: a "
            "sequence adds, alternatives add, nested repeats multiply)"
        )
    if overlaps > MAX_REPEAT_OVERLAPS:
        raise BadPattern(
            f"{overlaps} variable-length repeats after the first that compete for the same "
            f"characters, more than {MAX_REPEAT_OVERLAPS} (a failed match tries every way of "
            "splitting the text between them; a pattern without '^' counts one more)"
        )
    return states


def _walk_pattern(parsed: Any) -> str | None:
    """A conservative static check against catastrophic backtracking (ReDoS).

    Inside a part that repeats, it refuses a quantifier of variable length when either one is
    unbounded (`(a+)+b`, `(a*)*`, `(.*a){20}`), and alternatives that can start with the same
    character (`(a|a)+`, `(a|aa)+`). Sound patterns are sometimes refused too (`([a-z]+\\.)*`);
    they can nearly always be written without the nesting.
    """
    # Each entry: items, then (inside a repeat, inside an unbounded one, largest enclosing max,
    # the product of the enclosing counts: `((a{999}){999}){999}` is 10^9 `a`s, not 999).
    stack: list[tuple[Any, tuple[bool, bool, int, int]]] = [(parsed, (False, False, 1, 1))]
    while stack:
        items, context = stack.pop()
        repeated, unbounded, outer_max, product = context
        for op, av in items:
            if op in _REPEATS:
                low, high, body = av
                if low > MAX_REPEAT_COUNT or MAX_REPEAT_COUNT < high != _UNBOUNDED:
                    return f"a repeat count above {MAX_REPEAT_COUNT}"
                if (
                    repeated
                    and low != high
                    and (unbounded or high == _UNBOUNDED or outer_max > _NESTED_COPIES)
                ):
                    return "nested quantifiers"
                count = product * _times(low, high)
                if count > MAX_REPEAT_COUNT:
                    return f"nested repeat counts that multiply to more than {MAX_REPEAT_COUNT}"
                if high > 1:
                    inner = (True, unbounded or high == _UNBOUNDED, max(outer_max, high), count)
                    stack.append((body, inner))
                else:
                    stack.append((body, (repeated, unbounded, outer_max, count)))
            elif op is _sre.BRANCH:
                if repeated and _alternatives_overlap(av[1]):
                    return "alternatives that overlap inside a repeat"
                stack.extend((alt, context) for alt in av[1])
            elif op is _sre.SUBPATTERN:
                stack.append((av[3], context))
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                stack.append((av[1], context))
            elif op is _sre.ATOMIC_GROUP:
                stack.append((av, context))
            elif op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
                return "a backreference"
    return None


def _times(low: int, high: int) -> int:
    """How often a grammar compiler writes a repeat's body out: an unbounded repeat is a loop
    after its minimum, a bounded one is written out up to its maximum."""
    return max(low, 1) if high == _UNBOUNDED else max(high, 1)


# --- states: what the grammar compiler writes out ------------------------------------------


def _states(items: Any) -> int:
    return sum(_item_states(op, av) for op, av in items)


def _item_states(op: Any, av: Any) -> int:
    if op in _REPEATS:
        low, high, body = av
        return _times(low, high) * _states(body)
    if op is _sre.BRANCH:
        return sum(_states(alternative) for alternative in av[1])
    if op is _sre.SUBPATTERN:
        return _states(av[3])
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return _states(av[1])
    if op is _sre.ATOMIC_GROUP:
        return _states(av)
    if op is _sre.AT:
        return 0
    return 1


# --- overlaps: repeats that compete for the same characters ---------------------------------


def _overlaps(parsed: Any) -> int:
    """Variable-length repeats that join a run of others able to take the same characters.
    It runs after `_walk_pattern`, whose product of nested counts bounds its work.

    A run's *region* is every character that its repeats and the parts between them can take.
    A part that must take a character outside the region ends the run (the split there is
    forced); a repeat that can take a character of the region joins it. The runs' costs
    multiply (a failed match re-tries the later run for every split of the earlier one), so
    the joins of all runs add up; of alternatives, the costliest counts."""
    _, joins = _run(parsed, _NONE, bool(parsed.state.flags & re.IGNORECASE))
    return joins + (0 if _anchored(parsed) else 1)


def _anchored(parsed: Any) -> bool:
    """Whether `re.search` tries the pattern at the start only (else at every position)."""
    if not len(parsed) or parsed[0][0] is not _sre.AT or parsed[0][1] not in _ANCHORS:
        return False
    return parsed[0][1] is _sre.AT_BEGINNING_STRING or not parsed.state.flags & re.MULTILINE


def _run(items: Any, region: _Chars, fold: bool) -> tuple[_Chars, int]:
    """Walks `items` after a run with `region`: the region after them, and the joins in them."""
    joins = 0
    for op, av in items:
        region, more = _step(op, av, region, fold)
        joins += more
    return region, joins


def _step(op: Any, av: Any, region: _Chars, fold: bool) -> tuple[_Chars, int]:
    if op in _REPEATS:
        return _repeat_step(av, region, fold)
    if op is _sre.SUBPATTERN:
        return _run(av[3], region, _folds(fold, av[1], av[2]))
    if op is _sre.ATOMIC_GROUP:
        return _run(av, region, fold)
    if op is _sre.BRANCH:
        ends = [_run(alternative, region, fold) for alternative in av[1]]
        return _union_all(end for end, _ in ends), max(joins for _, joins in ends)
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return region, _run(av[1], _NONE, fold)[1]  # tried again at every split around it
    if op is _sre.AT:
        return region, 0
    chars = _item_chars(op, av, fold)
    return (_union(region, chars) if _meet(region, chars) else _NONE), 0


def _repeat_step(av: Any, region: _Chars, fold: bool) -> tuple[_Chars, int]:
    low, high, body = av
    # Enough copies to count every repeat that varies inside (see _NESTED_COPIES).
    passes = 1 if high == _UNBOUNDED else min(high, _NESTED_COPIES + 1)
    if low == high:  # a fixed count is its body written out
        joins = 0
        for _ in range(passes):
            region, more = _run(body, region, fold)
            joins += more
        return region, joins
    # Runs inside the body count on their own: a fixed text is split between its copies.
    inner: _Chars = _NONE
    joins = 0
    for _ in range(passes):
        inner, more = _run(body, inner, fold)
        joins += more
    chars = _all_chars(body, fold)
    if _meet(region, chars):
        return _union(region, chars), joins + 1
    if low == 0:  # may take nothing: the run goes on past it
        return _union(region, chars), joins
    return chars, joins


def _folds(fold: bool, added: int, removed: int) -> bool:
    return (fold or bool(added & re.IGNORECASE)) and not removed & re.IGNORECASE


def _all_chars(items: Any, fold: bool) -> _Chars:
    """Every character a match of `items` can take (a superset)."""
    found: set[tuple[int, int]] = set()
    stack: list[tuple[Any, bool]] = [(items, fold)]
    while stack:
        part, folding = stack.pop()
        for op, av in part:
            if op in _REPEATS:
                stack.append((av[2], folding))
            elif op is _sre.SUBPATTERN:
                stack.append((av[3], _folds(folding, av[1], av[2])))
            elif op is _sre.ATOMIC_GROUP:
                stack.append((av, folding))
            elif op is _sre.BRANCH:
                stack.extend((alternative, folding) for alternative in av[1])
            elif op not in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
                chars = _item_chars(op, av, folding)
                if chars is None:
                    return None
                found |= chars
    return frozenset(found)


def _item_chars(op: Any, av: Any, fold: bool) -> _Chars:
    """The characters one character item can take (a superset); None: any, or not known."""
    if op is _sre.LITERAL:
        return _literal(av)
    if op is _sre.NOT_LITERAL:
        return _complement(((av, av),))
    if op is _sre.IN:
        return _class_chars(av, fold)
    return None


def _class_chars(members: Any, fold: bool) -> _Chars:
    if members and members[0][0] is _sre.NEGATE:
        return _complement(_class_core(members[1:]))
    ranges: set[tuple[int, int]] = set()
    for op, av in members:
        if op is _sre.LITERAL:
            ranges |= _literal(av)
        elif op is _sre.RANGE and not fold:  # a range folded to the other case: not known
            ranges.add((av[0], av[1]))
        elif op is _sre.CATEGORY and av in _CATEGORIES:
            ranges.update(_CATEGORIES[av])
        elif op is _sre.CATEGORY and av in _CATEGORY_CORES:
            ranges.update(_complement(_CATEGORY_CORES[av]))
        else:
            return None
    return frozenset(ranges)


def _class_core(members: Any) -> set[tuple[int, int]]:
    """Characters the members surely match (a subset), for the complement of a negated class."""
    core: set[tuple[int, int]] = set()
    for op, av in members:
        if op is _sre.LITERAL:
            core.add((av, av))
        elif op is _sre.RANGE:
            core.add((av[0], av[1]))
        elif op is _sre.CATEGORY and av in _CATEGORIES:
            core.update(r for r in _CATEGORIES[av] if r not in _ASCII_AND_BEYOND)
    return core


def _complement(ranges: Iterable[tuple[int, int]]) -> frozenset[tuple[int, int]]:
    gaps: set[tuple[int, int]] = set()
    start = 0
    for low, high in sorted(ranges):
        if low > start:
            gaps.add((start, low - 1))
        start = max(start, high + 1)
    if start <= _TOP:
        gaps.add((start, _TOP))
    return frozenset(gaps)


def _meet(a: _Chars, b: _Chars) -> bool:
    """Whether some character is in both (an empty region meets nothing)."""
    if a is None or b is None:
        return a != _NONE and b != _NONE
    return _ranges_meet(a, b)


def _union(a: _Chars, b: _Chars) -> _Chars:
    return None if a is None or b is None else a | b


def _union_all(regions: Iterable[_Chars]) -> _Chars:
    total: _Chars = _NONE
    for region in regions:
        total = _union(total, region)
    return total


# --- alternatives inside repeats ----------------------------------------------------------------


def _alternatives_overlap(alternatives: list[Any]) -> bool:
    seen: list[frozenset[tuple[int, int]]] = []
    for alternative in alternatives:
        chars, nullable = _first_chars(alternative)
        # An empty alternative is followed by something this check cannot see: assume overlap.
        if chars is None or nullable:
            return len(alternatives) > 1
        if any(_ranges_meet(chars, other) for other in seen):
            return True
        seen.append(chars)
    return False


def _ranges_meet(a: frozenset[tuple[int, int]], b: frozenset[tuple[int, int]]) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _first_chars(items: Any) -> tuple[_Chars, bool]:
    """What a match of `items` can start with, and whether it can match the empty string."""
    found: set[tuple[int, int]] = set()
    for op, av in items:
        chars, nullable = _first_of(op, av)
        if chars is None:
            return None, False
        found |= chars
        if not nullable:
            return frozenset(found), False
    return frozenset(found), True


def _first_of(op: Any, av: Any) -> tuple[_Chars, bool]:
    if op is _sre.LITERAL:
        return _literal(av), False
    if op is _sre.IN:
        return _set_chars(av), False
    if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
        return frozenset(), True
    if op is _sre.SUBPATTERN:
        return _first_chars(av[3])
    if op is _sre.ATOMIC_GROUP:
        return _first_chars(av)
    if op in _REPEATS:
        chars, nullable = _first_chars(av[2])
        return chars, nullable or av[0] == 0
    if op is _sre.BRANCH:
        union: set[tuple[int, int]] = set()
        any_nullable = False
        for alternative in av[1]:
            chars, nullable = _first_chars(alternative)
            if chars is None:
                return None, False
            union |= chars
            any_nullable = any_nullable or nullable
        return frozenset(union), any_nullable
    return None, False  # ANY, NOT_LITERAL, backreferences, ...: could start with anything


def _literal(code: int) -> frozenset[tuple[int, int]]:
    # Both cases, in case the pattern is case-insensitive; a superset is safe here.
    variants = {chr(code), chr(code).lower(), chr(code).upper()}
    return frozenset((ord(c), ord(c)) for c in variants if len(c) == 1)


def _set_chars(members: Any) -> _Chars:
    ranges: set[tuple[int, int]] = set()
    for op, av in members:
        if op is _sre.LITERAL:
            ranges |= _literal(av)
        elif op is _sre.RANGE:
            ranges.add((av[0], av[1]))
        elif op is _sre.CATEGORY and av in _CATEGORIES:
            ranges.update(_CATEGORIES[av])
        else:  # NEGATE, other categories
            return None
    return frozenset(ranges)
