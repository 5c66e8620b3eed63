"""Evaluation cases read from JSONL, named by content, and inputs compared for leakage. Pure."""

from __future__ import annotations

import json

import pytest
from datasketch import MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from service.evaluation.cases import Case, CaseError, CaseKind, pack_sha256, parse_jsonl
from service.evaluation.leakage import BANDS_ROWS, NEAR_JACCARD, PERMUTATIONS, HeldOut, Leak

USER = {"role": "user", "content": "My invoice is wrong"}


def line(**case: object) -> str:
    return json.dumps(case)


def test_cases_from_both_line_forms_with_kinds_slices_and_fields() -> None:
    text = "\n".join([
        line(messages=[USER], expected={"category": "billing", "urgency": "low"},
             kind="hard", slices={"language": "en"}, fields=["category"]),
        "",
        line(messages=[USER, {"role": "assistant", "content": '{"category": "billing"}'}]),
    ])  # fmt: skip
    first, second = parse_jsonl(text, default_kind=CaseKind.FORMATTING)
    assert first.kind is CaseKind.HARD and first.slices == {"language": "en"}
    assert first.fields == ("category",)
    assert json.loads(first.expected) == {"category": "billing", "urgency": "low"}
    assert second.kind is CaseKind.FORMATTING  # the file's default
    assert second.messages == (USER,) and second.expected == '{"category": "billing"}'


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{not json", "line 2: not JSON"),
        (line(messages=[USER]), "line 2: no expected answer"),
        (line(messages=[{"role": "tool", "content": "x"}], expected="a"), "line 2: messages"),
        (line(messages=[USER], expected="a", kind="easy"), "kind 'easy' is not one of"),
        (line(messages=[USER], expected="plain", fields=["x"]), "not a JSON object"),
        (line(messages=[USER], expected={"a": 1}, fields=["b"]), "fields ['b'] are not in"),
        (line(messages=[USER], expected="a", extra=1), "unknown keys ['extra']"),
        (line(messages=[USER], expected="  "), "expected answer is empty"),
        (line(messages=[USER], expected="a", slices={"lang": 3}), "slice labels"),
    ],
)
def test_a_bad_line_is_refused_by_number_and_reason(bad: str, says: str) -> None:
    good = line(messages=[USER], expected="a")
    with pytest.raises(CaseError, match=r"^line 2: ") as refused:
        parse_jsonl(f"{good}\n{bad}\n")
    assert says in str(refused.value)


# No deadline: a loaded machine may take longer than Hypothesis's 200 ms for one example.
@settings(deadline=None)
@given(st.permutations(range(5)))
def test_a_packs_digest_is_its_cases_whatever_their_order(order: list[int]) -> None:
    cases = [Case(messages=(USER,), expected=f"answer {i}") for i in range(5)]
    assert pack_sha256([cases[i] for i in order]) == pack_sha256(cases)
    changed = [*cases[:4], Case(messages=(USER,), expected="answer 4", kind=CaseKind.HARD)]
    assert pack_sha256(changed) != pack_sha256(cases)


@settings(deadline=None, max_examples=25)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200))
def test_an_input_leaks_exactly_whatever_its_case_and_punctuation(text: str) -> None:
    held = HeldOut([f"Ticket: {text}"])
    assert held.leak(f"  TICKET --- {text}!!") is Leak.EXACT


def test_the_bands_are_datasketchs_own_for_the_threshold() -> None:
    assert (MinHashLSH(threshold=NEAR_JACCARD, num_perm=PERMUTATIONS).b,
            MinHashLSH(threshold=NEAR_JACCARD, num_perm=PERMUTATIONS).r) == BANDS_ROWS  # fmt: skip


def test_near_duplicates_are_held_out_and_different_tickets_are_not() -> None:
    held = HeldOut(["The app crashes every time I upload a photo of my receipt"])
    assert held.leak("the app crashes every time I upload a photo of my receipts.") is Leak.NEAR
    assert held.leak("The app CRASHES every time I upload a photo of my receipt!") is Leak.EXACT
    assert held.leak("How do I export my data to CSV?") is None
    assert HeldOut([]).leak("anything") is None
