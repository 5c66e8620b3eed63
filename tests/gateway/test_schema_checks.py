"""Clients' response_format schemas are checked off the event loop with bounded work (issue 11,
item 1): one app key used to freeze the gateway with `{"anyOf": [{}, ... 5,300 times]}`."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitoring.metrics import Metrics
from service.errors import InvalidRequest, SchemaCheckBusy, ValueOutOfRange
from service.gateway.schema_checks import SchemaChecks, worker_processes
from service.guard import MAX_SCHEMA_COST, Refusal, SchemaRefused, check_bounds, refusal
from tests.conftest import Harness, chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine
from tests.guard.test_schema import ref_tree

CHAT = "/v1/chat/completions"
ATTACK = {"anyOf": [{} for _ in range(5300)]}


def with_schema(schema: dict[str, Any]) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return chat_body(response_format=fmt)


def costly(tag: int) -> dict[str, Any]:
    """A schema at the cost bound (about half a second of meta-schema), unique per tag."""
    return {"$comment": f"attacker {tag}", "anyOf": [{} for _ in range(MAX_SCHEMA_COST - 3)]}


SMALL = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}
JSON_ANSWER = '{"label": "a"}'  # valid under SMALL and under costly schemas


class Gate:
    """A check that blocks (in its worker thread) on schemas tagged 'slow' until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered: list[str] = []
        self.threads: set[int] = set()

    def __call__(self, schema: dict[str, Any]) -> Refusal | None:
        self.threads.add(threading.get_ident())
        self.entered.append(str(schema.get("$comment", "")))
        if "slow" in str(schema.get("$comment", "")):
            assert self.opened.wait(30), "the test never opened the gate"
        return refusal(schema)


def checks(check: Callable[[dict[str, Any]], Refusal | None], **kw: int) -> SchemaChecks:
    """A pool on one worker thread, so that the test's check (a Gate) can block in it."""
    limits = {"workers": 1, "max_waiting": 8, "cache_size": 16, **kw}
    return SchemaChecks(
        check, Metrics(), executor=lambda: ThreadPoolExecutor(limits["workers"]), **limits
    )


def where_and_how(schema: dict[str, Any]) -> Refusal | None:
    """Runs in a worker process: refuses with its pid, or dies when asked to."""
    if schema.get("$comment") == "die":
        os._exit(1)
    return Refusal(str(os.getpid()), False)


@pytest.mark.heavy
async def test_the_gateway_checks_in_a_worker_process_and_survives_its_death() -> None:
    pool = SchemaChecks(
        where_and_how, Metrics(), executor=worker_processes(1), workers=1, max_waiting=4,
        cache_size=16,
    )  # fmt: skip
    try:
        with pytest.raises(InvalidRequest) as refused:
            await pool.check({"$comment": "pid"}, 2)
        assert refused.value.message.isdigit() and int(refused.value.message) != os.getpid()
        with pytest.raises(SchemaCheckBusy):  # the worker died under this check: 503
            await pool.check({"$comment": "die"}, 2)
        with pytest.raises(InvalidRequest) as again:  # new workers take the next ones
            await pool.check({"$comment": "pid again"}, 2)
        assert int(again.value.message) not in (os.getpid(), int(refused.value.message))
    finally:
        await pool.close()


async def test_checks_run_in_a_worker_thread_and_verdicts_are_cached() -> None:
    gate = Gate()
    pool = checks(gate)
    try:
        await pool.check({"$comment": "a", "type": "string"}, 3)
        await pool.check({"type": "string", "$comment": "a"}, 3)  # same schema, other key order
        assert gate.entered == ["a"]
        assert threading.get_ident() not in gate.threads
        for _ in range(2):
            with pytest.raises(InvalidRequest) as refused:
                await pool.check({"$comment": "bad", "type": "strin"}, 3)
            assert refused.value.param == "response_format"
        assert gate.entered == ["a", "bad"]  # a refusal is remembered too
    finally:
        await pool.close()


async def test_cheaper_checks_go_first_and_one_schema_is_checked_once() -> None:
    gate = Gate()
    pool = checks(gate)
    order: list[str] = []

    async def ask(schema: dict[str, Any], cost: int) -> None:
        await pool.check(schema, cost)
        order.append(str(schema["$comment"]))

    try:
        running = asyncio.create_task(ask({"$comment": "slow 0"}, 900))
        await wait_until(lambda: gate.entered == ["slow 0"], what="the first check to start")
        big = [asyncio.create_task(ask({"$comment": f"slow {i}"}, 900)) for i in (1, 2)]
        twice = {"$comment": "slow 1"}  # sent again while waiting: shares the one check
        again = asyncio.create_task(ask(twice, 900))
        small = asyncio.create_task(ask({"$comment": "small", "type": "string"}, 3))
        await wait_until(lambda: pool.waiting == 3, what="three checks waiting")
        gate.opened.set()
        await asyncio.gather(running, *big, again, small)
    finally:
        await pool.close()
    # The small check overtook the waiting ones; the schema sent twice was checked once.
    assert gate.entered[:2] == ["slow 0", "small"]
    assert sorted(gate.entered) == ["slow 0", "slow 1", "slow 2", "small"]
    assert sorted(order) == ["slow 0", "slow 1", "slow 1", "slow 2", "small"]


async def test_a_full_waiting_line_sheds_the_costliest() -> None:
    gate = Gate()
    pool = checks(gate, max_waiting=2)
    try:
        first = asyncio.create_task(pool.check({"$comment": "slow 0"}, 900))
        await wait_until(lambda: gate.entered == ["slow 0"], what="the first check to start")
        waiting = [
            asyncio.create_task(pool.check({"$comment": f"slow {i}"}, 900 + i)) for i in (1, 2)
        ]
        await wait_until(lambda: pool.waiting == 2, what="two checks waiting")
        with pytest.raises(SchemaCheckBusy):  # no cheaper than what waits: refused at once
            await pool.check({"$comment": "slow 3"}, 950)
        small = asyncio.create_task(pool.check({"$comment": "small", "type": "string"}, 3))
        with pytest.raises(SchemaCheckBusy) as shed:
            await waiting[1]  # the costliest waiting check made room for the small one
        assert shed.value.status == 503 and shed.value.code == "schema_check_busy"
        assert shed.value.headers()["Retry-After"] == "1"
        gate.opened.set()
        await asyncio.gather(first, waiting[0], small)
    finally:
        await pool.close()


# --- through the gateway ----------------------------------------------------------------------


async def test_a_schema_refused_by_its_bounds_is_refused_again_by_its_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bounds walk every node (3 ms for the attack here): a refused schema sent again costs
    only its hash, with the same answer; a schema never refused is still walked."""
    walks: list[int] = []
    real = check_bounds

    def counted(schema: dict[str, Any]) -> int:
        walks.append(1)
        return real(schema)

    monkeypatch.setattr("service.gateway.schema_checks.check_bounds", counted)
    pool = checks(refusal)
    try:
        messages = []
        for _ in range(3):
            with pytest.raises((SchemaRefused, ValueOutOfRange)) as refused:
                pool.bounds(ATTACK)
            messages.append(str(refused.value))
        assert walks == [1] and len(set(messages)) == 1
        assert f"more than {MAX_SCHEMA_COST} subschemas" in messages[0]
        assert pool.bounds(SMALL) == pool.bounds(SMALL) > 0
        assert walks == [1, 1, 1]  # accepted bounds are not a verdict: walked each time
    finally:
        await pool.close()


async def test_the_attack_is_refused_cheaply_by_four_clients_at_once(
    gateway: Harness, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    metas: list[int] = []
    monkeypatch.setattr(
        "service.guard.schema.Draft202012Validator.check_schema", lambda *_: metas.append(1)
    )
    assert len(orjson.dumps(ATTACK)) <= 16_384  # inside every byte and depth bound
    body, key = with_schema(ATTACK), gateway.auth()
    answers = await asyncio.gather(
        *(gateway.client.post(CHAT, json=body, headers=key) for _ in range(4))
    )
    for answer in answers:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == ValueOutOfRange.code and error["param"] == "response_format"
        assert f"more than {MAX_SCHEMA_COST} subschemas" in error["message"]
    assert metas == [] and engine.requests == []


@pytest.mark.heavy
async def test_normal_requests_pass_four_attackers_waiting_on_checks(
    gateway: Harness, engine: FakeEngine
) -> None:
    """Four clients send schemas at the cost bound; one check blocks its worker until the test
    opens it. Requests without a schema are served meanwhile, and a small schema is checked
    before the attackers' waiting ones."""
    gate = Gate()
    engine.default = Behaviour(tokens=[JSON_ANSWER])  # answers are validated against the schema
    gw = gateway.app.state.gateway
    await gw.schema_checks.close()
    gw.schema_checks = pool = checks(gate, max_waiting=32)
    done: list[str] = []

    async def send(name: str, body: dict[str, Any]) -> int:
        answer = await gateway.client.post(CHAT, json=body, headers=gateway.auth())
        done.append(name)
        return answer.status_code

    slow = [costly(i) | {"$comment": f"slow {i}"} for i in range(4)]
    attackers = [
        asyncio.create_task(send(f"attacker {i}", with_schema(s))) for i, s in enumerate(slow)
    ]
    await wait_until(lambda: pool.running == 1 and pool.waiting == 3, what="checks to queue")
    for i in range(5):
        assert await send(f"plain {i}", chat_body()) == 200  # the event loop is free
    small = asyncio.create_task(send("small schema", with_schema(SMALL)))
    await wait_until(lambda: pool.waiting == 4, what="the small check to queue")
    assert not any(name.startswith("attacker") for name in done)
    gate.opened.set()
    assert await small == 200
    assert [await a for a in attackers] == [200] * 4
    # The small schema was checked before the three attackers still waiting.
    assert gate.entered[:2] == ["slow 0", ""]
    assert len(engine.requests) == 5 + 1 + 4


@pytest.mark.heavy
async def test_real_checks_under_four_attackers_answer_everyone(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    """With the real check: four attackers loop on unique schemas at the cost bound while a
    client sends plain and small-schema requests; every request is answered, no 5xx."""
    engine.default = Behaviour(tokens=[JSON_ANSWER])  # answers are validated against the schema
    settings = make_settings(sqlite_url, tmp_path, [engine.url])
    async with running_gateway(settings) as h:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def attacker(n: int) -> None:
            tag = 0
            while not stop.is_set():
                body = with_schema(costly(n * 1000 + tag))
                answer = await h.client.post(CHAT, json=body, headers=h.auth())
                statuses.append(answer.status_code)
                tag += 1

        attackers = [asyncio.create_task(attacker(n)) for n in range(4)]
        try:
            await wait_until(lambda: len(statuses) >= 1, timeout_s=60, what="an attacker answer")
            normal = [
                (await h.client.post(CHAT, json=body, headers=h.auth())).status_code
                for body in (chat_body(), with_schema(SMALL), chat_body(), with_schema(SMALL))
            ]
        finally:
            stop.set()
            await asyncio.gather(*attackers)
    assert normal == [200, 200, 200, 200]
    assert set(statuses) <= {200, 503}  # answered, or shed when the waiting line was full


@pytest.mark.parametrize(
    ("schema", "code", "says"),
    [
        (ref_tree(60), ValueOutOfRange.code, "written out in place"),  # 2^60 paths, 3 KiB
        (
            {"type": "string", "pattern": "^a{1000}b{1000}c{1000}d{1000}$"},
            InvalidRequest.code,
            "4000 states",
        ),
        ({"type": "string", "pattern": "^" + "a*" * 20 + "$"}, InvalidRequest.code, "compete"),
    ],
)
async def test_schemas_costly_for_the_grammar_compiler_are_refused_before_the_engine(
    gateway: Harness, engine: FakeEngine, schema: dict[str, Any], code: str, says: str
) -> None:
    answer = await gateway.client.post(CHAT, json=with_schema(schema), headers=gateway.auth())
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == (code, "response_format")
    assert says in error["message"]
    assert engine.requests == []
