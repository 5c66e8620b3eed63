"""Placement by traffic: replica sets sized by request rate within each replica's capacity."""

from __future__ import annotations

from collections.abc import Mapping, Set

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.placement import (
    Action,
    Change,
    Demand,
    Traffic,
    plan_by_traffic,
    replicas_for,
)

VERSIONS = [f"v{i}@1" for i in range(12)]
REPLICAS = ["r0", "r1", "r2", "r3"]
# Demand per version, versions loaded per replica, versions a replica holds.
Pool = tuple[dict[str, Demand], dict[str, set[str]], int]


def apply(loaded: Mapping[str, Set[str]], actions: list[Action]) -> dict[str, set[str]]:
    after = {r: set(held) for r, held in loaded.items()}
    for action in actions:
        if action.change is Change.LOAD:
            after[action.replica].add(action.version)
        else:
            after[action.replica].discard(action.version)
    return after


def always(_replica: str, _version: str) -> bool:
    return True


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    replicas = REPLICAS[: draw(st.integers(1, len(REPLICAS)))]
    capacity = draw(st.integers(1, 4))
    versions = st.sampled_from(VERSIONS)
    loaded = {r: draw(st.sets(versions, max_size=capacity + 2)) for r in replicas}
    demand = {
        v: Demand(
            rate=draw(st.floats(0, 100)),
            last_used=draw(st.floats(0, 1000)),
            pinned=draw(st.booleans()),
            saturated=draw(st.booleans()),
        )
        for v in draw(st.sets(versions, max_size=len(VERSIONS)))
    }
    return demand, loaded, capacity


def pinned(demand: Mapping[str, Demand]) -> set[str]:
    return {v for v, d in demand.items() if d.pinned}


def fits(pool: Pool) -> bool:
    demand, loaded, capacity = pool
    return len(pinned(demand)) <= capacity * len(loaded)


@settings(deadline=None, max_examples=300)
@given(pools(), st.sets(st.tuples(st.sampled_from(REPLICAS), st.sampled_from(VERSIONS))))
def test_pinned_versions_are_always_placed(pool: Pool, stuck: set[tuple[str, str]]) -> None:
    demand, loaded, capacity = pool
    actions = plan_by_traffic(demand, loaded, capacity, lambda r, v: (r, v) not in stuck)
    after = apply(loaded, actions)
    for version in pinned(demand):
        assert any(version in held for held in after.values())
    # The unloads run first: a version loaded somewhere stays loaded somewhere meanwhile.
    unloaded = apply(loaded, [a for a in actions if a.change is Change.UNLOAD])
    for version in pinned(demand) & set().union(*loaded.values()):
        assert any(version in held for held in unloaded.values())
    for action in actions:  # nothing that may not leave a replica is unloaded from it
        assert action.change is Change.LOAD or (action.replica, action.version) not in stuck


@settings(deadline=None, max_examples=300)
@given(pools().filter(fits))
def test_loads_never_take_a_replica_over_capacity_when_the_pinned_versions_fit(
    pool: Pool,
) -> None:
    demand, loaded, capacity = pool
    actions = plan_by_traffic(demand, loaded, capacity, always)
    assert actions == [*sorted(actions, key=lambda a: a.change is Change.LOAD)]  # unloads first
    after = apply(loaded, actions)
    for replica, held in after.items():
        assert len(held) <= max(capacity, len(loaded[replica]))


@settings(deadline=None, max_examples=300)
@given(pools().filter(fits))
def test_repeated_passes_settle_within_capacity_with_every_pinned_version_somewhere(
    pool: Pool,
) -> None:
    demand, loaded, capacity = pool
    for _ in range(3):
        loaded = apply(loaded, plan_by_traffic(demand, loaded, capacity, always))
    assert all(len(held) <= capacity for held in loaded.values())
    assert pinned(demand) <= set().union(*loaded.values())
    assert plan_by_traffic(demand, loaded, capacity, always) == []  # settled: nothing churns


@settings(deadline=None, max_examples=200)
@given(pools())
def test_with_room_for_everything_each_pinned_version_gets_the_replicas_its_traffic_asks_for(
    pool: Pool,
) -> None:
    demand, loaded, _ = pool
    capacity = len(VERSIONS)
    after = apply(loaded, plan_by_traffic(demand, loaded, capacity, always))
    hottest = max((d.rate for d in demand.values() if d.pinned), default=0.0)
    for version in pinned(demand):
        copies = sum(version in held for held in after.values())
        assert copies >= replicas_for(demand[version], hottest, len(loaded))
    # Unpinned versions stay while there is room, and nothing new of theirs is loaded.
    for replica, held in after.items():
        assert {v for v in loaded[replica] if v not in pinned(demand)} <= held
        assert {v for v in held - loaded[replica]} <= pinned(demand)


def test_replica_sets_grow_with_traffic_and_the_hottest_gets_every_replica() -> None:
    hot, warm = Demand(rate=40, pinned=True), Demand(rate=20, pinned=True)
    cold = Demand(pinned=True)
    assert replicas_for(hot, 40, 4) == 4
    assert replicas_for(warm, 40, 4) == 2
    assert replicas_for(cold, 40, 4) == 1
    assert replicas_for(Demand(rate=1, pinned=True, saturated=True), 40, 4) == 2
    assert replicas_for(cold, 0, 4) == 1


def test_under_pressure_the_least_recently_used_unpinned_version_goes_first() -> None:
    demand = {
        "new@1": Demand(pinned=True),
        "old@1": Demand(last_used=5.0),
        "older@1": Demand(last_used=1.0),
    }
    loaded = {"r0": {"old@1", "older@1"}}
    assert plan_by_traffic(demand, loaded, 2, always) == [
        Action(Change.UNLOAD, "r0", "older@1"),
        Action(Change.LOAD, "r0", "new@1"),
    ]
    # With room, the unpinned versions stay loaded: a rollback finds its version warm.
    assert plan_by_traffic(demand, loaded, 3, always) == [Action(Change.LOAD, "r0", "new@1")]


def test_a_new_copy_goes_to_the_replica_with_the_least_traffic() -> None:
    demand = {
        "hot@1": Demand(rate=30, pinned=True),
        "warm@1": Demand(rate=20, pinned=True),
        "cool@1": Demand(rate=1, pinned=True),
    }
    loaded: dict[str, set[str]] = {"r0": {"hot@1"}, "r1": {"hot@1"}, "r2": {"hot@1", "warm@1"}}
    actions = plan_by_traffic(demand, loaded, 2, always)
    after = apply(loaded, actions)
    # warm asks for 2 of 3 replicas; cool for 1; r0 and r1 carry the least traffic.
    assert sum("warm@1" in held for held in after.values()) == 2
    assert sum("cool@1" in held for held in after.values()) == 1
    assert all(len(held) <= 2 for held in after.values())
    assert all(a.change is Change.LOAD for a in actions)


def test_traffic_rates_follow_requests_and_decay_with_their_half_life() -> None:
    traffic = Traffic(half_life_s=10.0)
    traffic.update({"a@1": 0}, set(), set(), now=0.0)
    traffic.update({"a@1": 100}, set(), {"a@1"}, now=10.0)
    first = traffic.demand({"a@1"}, set())["a@1"]
    assert first.rate == 5.0  # half of the 10/s seen, the rest of the average being the 0 before
    assert (first.last_used, first.pinned, first.saturated) == (10.0, True, True)
    traffic.update({"a@1": 100}, {"a@1"}, set(), now=15.0)
    assert traffic.demand(set(), {"a@1"})["a@1"].saturated  # for one half-life
    traffic.update({"a@1": 100}, set(), set(), now=20.0)
    later = traffic.demand(set(), {"a@1"})["a@1"]
    assert later.rate == pytest.approx(2.5)
    assert (later.last_used, later.pinned, later.saturated) == (15.0, False, False)


def test_copies_traffic_no_longer_asks_for_go_once_the_rate_has_halved() -> None:
    loaded: dict[str, set[str]] = {r: {"a@1", "b@1"} for r in REPLICAS}
    # b asks for 2 of 4 replicas (rate 20 against 40); at 4 it would justify 3: kept.
    demand = {"a@1": Demand(rate=40, pinned=True), "b@1": Demand(rate=20, pinned=True)}
    kept = apply(loaded, plan_by_traffic(demand, loaded, 2, always))
    assert sum("b@1" in held for held in kept.values()) == 4
    demand["b@1"] = Demand(rate=5, pinned=True)  # asks for 1; at 10 it would justify 1
    actions = plan_by_traffic(demand, loaded, 2, always)
    assert {a.change for a in actions} == {Change.UNLOAD}
    assert sum("b@1" in held for held in apply(loaded, actions).values()) == 1
    # A copy with a request on it stays.
    actions = plan_by_traffic(demand, loaded, 2, lambda r, v: r != "r0")
    assert "b@1" in apply(loaded, actions)["r0"]
