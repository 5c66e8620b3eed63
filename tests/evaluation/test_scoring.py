"""A version's figures on a pack, and two versions compared case by case. Pure."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from service.evaluation.cases import Case, CaseKind
from service.evaluation.scoring import Outcome, compare, figures, passed, rate

USER = ({"role": "user", "content": "ticket"},)


def outcome(expected: dict[str, str], answer: object, **case: object) -> Outcome:
    text = answer if answer is None or isinstance(answer, str) else json.dumps(answer)
    return Outcome(Case(messages=USER, expected=json.dumps(expected), **case), text)  # type: ignore[arg-type]


def test_a_case_passes_on_its_named_fields_or_on_its_whole_text() -> None:
    want = {"category": "billing", "urgency": "low"}
    assert passed(outcome(want, {"category": "billing", "urgency": "low", "extra": 1}))
    assert not passed(outcome(want, {"category": "billing", "urgency": "high"}))
    assert passed(outcome(want, {"category": "billing", "urgency": "high"}, fields=("category",)))
    assert not passed(outcome(want, "not json")) and not passed(outcome(want, None))
    refusal = Case(messages=USER, expected="I cannot help with that.")
    assert passed(Outcome(refusal, " I cannot help with that.\n"))


def test_per_class_precision_recall_f1_and_confusion() -> None:
    rows = [("billing", "billing"), ("billing", "account"), ("account", "account"),
            ("account", "account"), ("bug", None)]  # fmt: skip
    found = figures([
        outcome({"category": e}, {"category": a} if a else "garbage") for e, a in rows
    ])  # fmt: skip
    category = found.fields["category"]
    assert (category.exact_match.hits, category.exact_match.n) == (3, 5)
    assert category.confusion == {
        "account": {"account": 2}, "billing": {"billing": 1, "account": 1}, "bug": {"(none)": 1},
    }  # fmt: skip
    account, billing, bug = (category.classes[k] for k in ("account", "billing", "bug"))
    assert (account.precision, account.recall, account.support) == (2 / 3, 1.0, 2)
    assert (billing.precision, billing.recall) == (1.0, 0.5)
    assert (bug.precision, bug.recall, bug.f1) == (None, 0.0, 0.0)  # never found: F1 0
    assert account.f1 is not None and 0.79 < account.f1 < 0.81  # 2*(2/3)/(5/3) = 0.8


def test_rates_by_kind_and_slice_with_intervals_around_them() -> None:
    found = figures([
        outcome({"c": "a"}, {"c": "a"}, kind=CaseKind.INJECTION, slices={"lang": "de"}),
        outcome({"c": "a"}, {"c": "b"}, kind=CaseKind.INJECTION, slices={"lang": "en"}),
        outcome({"c": "a"}, {"c": "a"}, slices={"lang": "en"}),
    ])  # fmt: skip
    assert (found.by_kind["injection"].hits, found.by_kind["injection"].n) == (1, 2)
    assert found.by_slice["lang"]["en"].n == 2 and found.by_slice["lang"]["de"].hits == 1
    whole = found.passed
    assert whole.low is not None and whole.high is not None
    assert whole.low < 2 / 3 < whole.high
    assert rate(0, 0).value is None and rate(0, 0).low is None


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 40), st.integers(1, 40))
def test_a_wilson_interval_holds_its_rate_and_stays_in_zero_one(hits: int, extra: int) -> None:
    found = rate(hits, hits + extra)
    assert found.low is not None and found.high is not None and found.value is not None
    assert 0.0 <= found.low <= found.value <= found.high <= 1.0


def test_paired_comparison_counts_only_the_cases_that_differ() -> None:
    same = {i: i % 2 == 0 for i in range(100)}
    assert compare(same, same).verdict == "no detectable difference"
    better = {i: True for i in range(100)}
    worse = {i: i >= 20 for i in range(100)}  # baseline fails 20 the candidate passes
    found = compare(better, worse)
    assert (found.only_candidate, found.only_baseline, found.verdict) == (20, 0, "better")
    assert compare(worse, better).verdict == "worse"
    few = {i: i >= 2 for i in range(100)}  # two discordant cases prove nothing
    assert compare(better, few).verdict == "no detectable difference"
