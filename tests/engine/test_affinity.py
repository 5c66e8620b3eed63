"""Routing by adapter affinity: the replica that runs a version without a swap, then the least
loaded; a spill only once every holder is saturated."""

from __future__ import annotations

from monitoring.metrics import Metrics
from service.engine.adapter_host import running_adapters
from service.engine.affinity import Seat, pick, spills
from service.engine.pool import EnginePool, Replica
from service.settings import EnginePoolSettings

DEPTH = 4


def seat(
    *, holds: bool = True, active: bool = False, free: bool = True, in_flight: int = 0
) -> Seat:
    return Seat(holds=holds, active=active, free_slot=free, healthy=True, in_flight=in_flight)


def test_a_replica_running_the_version_wins_over_a_less_loaded_one() -> None:
    assert pick([seat(in_flight=0), seat(active=True, in_flight=3)], DEPTH) == 1


def test_a_free_slot_wins_over_a_replica_whose_slots_are_taken() -> None:
    assert pick([seat(free=False, in_flight=0), seat(free=True, in_flight=2)], DEPTH) == 1


def test_among_equals_the_least_loaded_wins_and_healthy_before_unproven() -> None:
    assert pick([seat(in_flight=2), seat(in_flight=1), seat(in_flight=1)], DEPTH) == 1
    unproven = Seat(holds=True, active=True, free_slot=True, healthy=False, in_flight=0)
    assert pick([unproven, seat(in_flight=3)], DEPTH) == 1
    assert pick([], DEPTH) is None


def test_a_request_spills_to_a_non_holder_only_when_every_holder_is_saturated() -> None:
    busy_holder = seat(active=True, in_flight=DEPTH - 1)
    outsider = seat(holds=False, in_flight=0)
    assert pick([busy_holder, outsider], DEPTH) == 0
    assert not spills(busy_holder, DEPTH)
    saturated = seat(active=True, in_flight=DEPTH)
    assert pick([saturated, outsider], DEPTH) == 1
    assert spills(outsider, DEPTH)
    # Everyone saturated: the holder, though it has more in flight.
    assert pick([seat(in_flight=DEPTH + 3), seat(holds=False, in_flight=DEPTH)], DEPTH) == 0


def pool_of(replicas: int, max_loras: int | None = None, spill_depth: int = DEPTH) -> EnginePool:
    urls = [f"http://r{i}" for i in range(replicas)]
    config = EnginePoolSettings(
        name="p", base_model="base", urls=urls, max_loras=max_loras, spill_queue_depth=spill_depth
    )
    return EnginePool(config, Metrics(), eject_for_s=30.0)


def holding(pool: EnginePool, *versions: str) -> list[Replica]:
    for replica in pool.replicas:
        replica.loaded = frozenset(versions)
    return pool.replicas


def test_a_pool_with_declared_slots_sends_a_version_where_it_already_runs() -> None:
    pool = pool_of(2, max_loras=1)
    r0, r1 = holding(pool, "a@1", "b@1")
    pool.acquire(r0, "a@1")
    pool.acquire(r1, "b@1")
    pool.acquire(r1, "b@1")
    assert pool.choose(target="b@1") is r1  # b runs on r1, though r1 is busier
    assert pool.choose(target="a@1") is r0
    pool.release(r0, "a@1")
    assert pool.choose(target="a@1") is r0  # r1's one slot is b's; r0's is free
    assert not pool.saturated


def test_a_saturated_version_is_marked_for_a_bigger_replica_set() -> None:
    pool = pool_of(2, max_loras=4, spill_depth=2)
    r0, r1 = holding(pool, "a@1")
    r1.loaded = frozenset()
    for _ in range(2):
        pool.acquire(r0, "a@1")
    assert pool.choose(target="a@1") is r0  # the only holder, saturated
    assert pool.saturated == {"a@1"}
    assert pool.started_by_target["a@1"] == 2
    # With every replica saturated, growing the set would relieve nothing.
    pool.saturated.clear()
    for _ in range(2):
        pool.acquire(r1, "base")
    assert pool.choose(target="a@1") is r0
    assert not pool.saturated


def test_without_declared_capacity_the_least_busy_replica_wins_as_before() -> None:
    pool = pool_of(2)
    r0, r1 = holding(pool, "a@1")
    pool.acquire(r0, "a@1")
    assert pool.choose(target="a@1") is r1
    pool.release(r0, "a@1")
    assert not r0.running and not pool.in_flight_by_target


def test_the_engines_own_running_adapters_count_as_active() -> None:
    pool = pool_of(2, max_loras=1)
    r0, r1 = holding(pool, "a@1", "b@1")
    r1.engine_running = frozenset({"b@1"})  # another gateway's request on b runs on r1
    assert pool.choose(target="b@1") is r1
    assert pool.choose(target="a@1") is r0  # r1's one slot is taken


def test_running_adapters_are_read_from_the_latest_lora_sample_of_vllm_metrics() -> None:
    page = "\n".join([
        "# HELP vllm:lora_requests_info Running stats on lora requests.",
        "# TYPE vllm:lora_requests_info gauge",
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a@1",'
        'waiting_lora_adapters=""} 1.7e+09',
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="b@1,c@1",'
        'waiting_lora_adapters="a@1"} 1.7000001e+09',
        'vllm:num_requests_running{model_name="base"} 3.0',
    ])  # fmt: skip
    assert running_adapters(page) == {"b@1", "c@1"}
    assert running_adapters("vllm:num_requests_running 0.0") == frozenset()
    idle = (
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 5'
    )
    assert running_adapters(idle) == frozenset()
