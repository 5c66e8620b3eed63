"""The sliding-window arithmetic and the stored form of limits (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.limits.quota import WINDOW_S, BadLimits, KeyLimits, Quota, Window, duration


def test_a_full_previous_minute_weighs_in_by_the_share_still_inside_the_last_60_s() -> None:
    window = Window(previous=60, current=0)
    assert window.used(0.0) == 60
    assert window.used(30.0) == 30
    assert not window.fits(0.0, 1, 60)
    assert window.fits(30.0, 30, 60)
    assert not window.fits(30.0, 31, 60)


def test_wait_is_how_long_until_the_previous_minute_has_slid_out_far_enough() -> None:
    # 60 a minute, 60 used last minute, none this one: one more fits once 1/60 slid out.
    assert Window(60, 0).wait_s(0.0, 1, 60) == pytest.approx(1.0)
    assert Window(60, 0).wait_s(30.0, 1, 60) == 0.0
    # This minute already holds the limit: wait for the next minute, then for its share to go.
    assert Window(0, 60).wait_s(15.0, 1, 60) == pytest.approx(45.0 + 1.0)
    assert Window(0, 10).wait_s(15.0, 100, 60) is None  # more than the limit never fits


@given(
    previous=st.integers(0, 500),
    current=st.integers(0, 500),
    elapsed=st.floats(0.0, WINDOW_S - 1e-6),
    cost=st.integers(1, 100),
    limit=st.integers(1, 400),
)
def test_after_the_wait_the_cost_fits_and_not_noticeably_before(
    previous: int, current: int, elapsed: float, cost: int, limit: int
) -> None:
    window = Window(previous, current)
    wait = window.wait_s(elapsed, cost, limit)
    if wait is None:
        assert cost > limit
        return

    def used_at(t: float) -> float:
        at = elapsed + t
        if at < WINDOW_S:
            return window.used(at)
        return Window(current, 0).used(at - WINDOW_S)  # the next minute, nothing new counted

    assert used_at(wait) + cost <= limit + 1e-6
    if wait > 0.01:
        assert used_at(wait - 0.01) + cost > limit


def test_remaining_never_goes_below_zero_and_reset_covers_what_was_counted() -> None:
    assert Window(0, 100).remaining(10.0, 1, 50) == 0
    assert Window(0, 10).remaining(10.0, 1, 50) == 39
    assert Window(0, 0).reset_s(10.0, 0) == 0.0
    assert Window(5, 0).reset_s(10.0, 0) == 50.0
    assert Window(0, 0).reset_s(10.0, 1) == 110.0


def test_durations_read_like_openai_headers() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.0) == "1s"
    assert duration(1.5) == "1.5s"
    assert duration(360.0) == "6m0s"
    assert duration(0.0) == "0ms"


def test_limits_round_trip_and_route_limits_add_a_scope() -> None:
    limits = KeyLimits.from_json({"rpm": 10, "routes": {"triage": {"tpm": 500}}})
    assert limits is not None
    assert limits.key == Quota(rpm=10)
    assert limits.to_json() == {"rpm": 10, "routes": {"triage": {"tpm": 500}}}
    scopes = limits.scopes("abc", "triage")
    assert [(s.name, s.level) for s in scopes] == [
        ("key:abc", "key"),
        ("key:abc:route:triage", "route"),
    ]
    assert [s.name for s in limits.scopes("abc", "other")] == ["key:abc"]
    assert KeyLimits.from_json({}) is None
    cleared = limits.with_quota("triage", Quota()).with_quota(None, Quota())
    assert cleared.to_json() is None


@pytest.mark.parametrize(
    "stored",
    [
        {"rpm": 0},
        {"rpm": "10"},
        {"rpm": True},
        {"rpm": 1.5},
        {"burst": 3},
        {"routes": {"r": {"rpm": -1}}},
        {"routes": ["r"]},
        [1],
    ],
)
def test_limits_that_cannot_hold_are_refused_with_the_value_named(stored: object) -> None:
    with pytest.raises(BadLimits, match="limits"):
        KeyLimits.from_json(stored)
