"""Risk tiers, deterministic sampling and the agreement figures: pure, no database."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from service.guard.policy import QA_SAMPLE, Escalate
from service.guard.route_guard import RouteContract, judge
from service.guard.sampling import Purpose, draw
from service.guard.tiers import Risk, TierConflict, tier_policy
from service.review.agreement import Pair, agreement, cohen_kappa, field_matches, wilson
from service.routes.config import RoutesConfigError, RouteSpec, _with_contract

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["a", "b"]}}}


def answer(text: str, prob: float = 0.9) -> dict[str, Any]:
    """A chat answer whose value token has probability ``prob``."""
    tokens = [{"token": t, "logprob": math.log(prob if t == "a" else 1.0)}
              for t in ('{"', "category", '":"', "a", '"}')]  # fmt: skip
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop",
                         "logprobs": {"content": tokens}}]}  # fmt: skip


GOOD = '{"category":"a"}'


@pytest.mark.parametrize(
    ("risk", "escalate", "delivery", "qa", "agreement"),
    [
        (Risk.LOW, Escalate.NEVER, "flag", 0.05, 0.0),
        (Risk.MEDIUM, Escalate.BELOW, "flag", 0.0, 0.0),
        (Risk.HIGH, Escalate.ALWAYS, "hold", 0.0, 0.0),
        (Risk.CRITICAL, Escalate.ALWAYS, "hold", 0.0, 1.0),
    ],
)
def test_tier_defaults(
    risk: Risk, escalate: Escalate, delivery: str, qa: float, agreement: float
) -> None:
    policy = RouteContract.build(SCHEMA, None, risk).policy
    assert policy.risk is risk
    assert (policy.escalate, policy.delivery) == (escalate, delivery)
    assert (policy.qa_rate, policy.agreement_rate) == (qa, agreement)


def test_a_routes_policy_overrides_its_tier() -> None:
    policy = RouteContract.build(SCHEMA, {"delivery": "flag", "qa_rate": 0.2}, Risk.HIGH).policy
    assert policy.escalate is Escalate.ALWAYS and policy.delivery == "flag"
    assert policy.qa_rate == 0.2
    low = RouteContract.build(SCHEMA, {"escalate": "below", "threshold": 0.3}, "low").policy
    assert low.escalate is Escalate.BELOW and low.threshold == 0.3 and low.qa_rate == 0.05


def test_critical_keeps_two_reviewers_and_the_tier_is_declared_on_the_route() -> None:
    with pytest.raises(ValidationError, match="agreement_rate"):
        RouteContract.build(SCHEMA, {"agreement_rate": 0.5}, Risk.CRITICAL)
    with pytest.raises(TierConflict):
        tier_policy(Risk.LOW, {"risk": "high"})
    with pytest.raises(RoutesConfigError, match="agreement_rate"):
        _with_contract(
            RouteSpec(name="r", risk=Risk.CRITICAL, review={"agreement_rate": 0}),
            None,  # type: ignore[arg-type]
        )
    with pytest.raises(ValidationError):
        RouteSpec.model_validate({"name": "r", "risk": "extreme"})
    assert RouteSpec(name="r").risk is Risk.MEDIUM


def test_what_each_tier_does_with_a_confident_valid_answer() -> None:
    reasons = {}
    for risk in Risk:
        contract = RouteContract.build(SCHEMA, {"qa_rate": 0}, risk)
        judged = judge(answer(GOOD), contract, request_id="req-1")
        reasons[risk] = (judged.review_reason, judged.escalated, judged.reviewers)
    assert reasons == {
        Risk.LOW: (None, False, 1),
        Risk.MEDIUM: (None, False, 1),
        Risk.HIGH: ("always", True, 1),
        Risk.CRITICAL: ("always", True, 2),
    }
    low = RouteContract.build(SCHEMA, None, Risk.LOW)
    invalid = judge(answer('{"category":"z"}'), low, request_id="req-1")
    assert invalid.review_reason == "invalid" and invalid.escalated
    unsure = judge(answer(GOOD, 0.2), RouteContract.build(SCHEMA, None), request_id="r")
    assert unsure.review_reason == "low_confidence"


def test_qa_sampling_is_deterministic_and_near_its_rate() -> None:
    contract = RouteContract.build(SCHEMA, {"qa_rate": 0.1}, Risk.LOW)
    ids = [f"req-{i}" for i in range(20_000)]
    first = [judge(answer(GOOD), contract, request_id=i).review_reason for i in ids]
    again = [judge(answer(GOOD), contract, request_id=i).review_reason for i in ids[:2000]]
    assert first[:2000] == again  # the same request id is sampled the same way
    sampled = first.count(QA_SAMPLE)
    assert set(first) == {None, QA_SAMPLE}
    # Binomial(20000, 0.1): sd ~ 42; 6 sd either side.
    assert abs(sampled - 2000) < 260, sampled
    one = judge(answer(GOOD), contract, request_id=ids[first.index(QA_SAMPLE)])
    assert one.review_reason == QA_SAMPLE and not one.escalated  # reviewed, not escalated
    shadow = judge(answer(GOOD), contract, draw=1.0)  # no request id: never QA-sampled
    assert shadow.review_reason is None


def test_the_draws_are_independent_per_purpose() -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    both = sum(1 for i in ids if draw(i, Purpose.QA) < 0.5 and draw(i, Purpose.AGREEMENT) < 0.5)
    assert abs(both - 2500) < 300, both
    assert all(0 <= draw(i, Purpose.SAMPLE) < 1 for i in ids[:100])


def test_agreement_sampling_near_its_rate() -> None:
    contract = RouteContract.build(SCHEMA, {"agreement_rate": 0.25}, Risk.HIGH)
    reviewers = [judge(answer(GOOD), contract, request_id=f"r{i}").reviewers for i in range(8000)]
    assert abs(reviewers.count(2) - 2000) < 240


def test_kappa_against_a_hand_computed_case() -> None:
    # 10 items: both approve 4, both correct 2, both reject 1; A approve / B correct 2;
    # A reject / B approve 1.
    # p_o = 7/10; A: approve 6, correct 2, reject 2; B: approve 5, correct 4, reject 1;
    # p_e = (6*5 + 2*4 + 2*1) / 100 = 0.40; kappa = (0.7 - 0.4) / 0.6 = 0.5.
    pairs = [("approve", "approve")] * 4 + [("correct", "correct")] * 2
    pairs += [("reject", "reject")] + [("approve", "correct")] * 2 + [("reject", "approve")]
    assert cohen_kappa(pairs) == pytest.approx(0.5)
    assert cohen_kappa([]) is None
    assert cohen_kappa([("approve", "approve")] * 3) is None  # chance agreement is certain
    assert cohen_kappa([("approve", "reject"), ("reject", "approve")]) == pytest.approx(-1.0)


def test_field_agreement_on_corrections() -> None:
    assert field_matches('{"a": 1, "b": 2}', '{"a": 1, "b": 3, "c": 0}') == (1, 3)
    assert field_matches("free text", "free text") == (1, 1)
    figures = agreement(
        [
            Pair("correct", "correct", '{"a": 1, "b": 2}', '{"a": 1, "b": 2}'),
            Pair("correct", "correct", '{"a": 1}', '{"a": 2}'),
            Pair("approve", "reject"),
        ]
    )
    assert figures.items == 3 and figures.corrections == 2
    assert figures.observed == pytest.approx(2 / 3)
    assert figures.field_agreement == pytest.approx(2 / 3)


def test_wilson_interval() -> None:
    share = wilson(10, 100)
    assert share.estimate == 0.1
    assert share.low == pytest.approx(0.0552, abs=1e-4)
    assert share.high == pytest.approx(0.1744, abs=1e-4)
    assert wilson(0, 0).estimate is None
    none = wilson(0, 20)
    assert none.low == 0.0 and none.high == pytest.approx(0.1611, abs=1e-4)
