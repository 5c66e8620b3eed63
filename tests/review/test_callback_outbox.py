"""Review callbacks from the durable outbox: a failing receiver is retried with backoff, each
try recorded, and a callback not delivered when a gateway stops is sent by the next one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select

from service.auth import Role
from service.db.models import ReviewCallback
from service.db.session import create_engine, session_factory
from service.review.outbox import CallbackView, callbacks_of
from tests.conftest import (
    chat_body,
    fresh_database,
    insert_key,
    make_settings,
    running_gateway,
    wait_until,
)
from tests.fake_engine import Behaviour, FakeEngine
from tests.gateway_process import GatewayProcess
from tests.guard.test_output_contracts import (
    ROUTE,
    SURE,
    TOKENS,
    ask_and_approve_held,
    routes_file,
)

pytestmark = pytest.mark.heavy


class Receiver:
    """A callback receiver that fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = True
        self.tries = 0
        self.delivered: list[dict[str, object]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.tries += 1
        if self.failing:
            return web.Response(status=503)
        self.delivered.append(await request.json())
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Receiver]]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/review", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hook
    finally:
        await runner.cleanup()


async def test_a_failed_callback_is_retried_and_survives_a_restart(
    db_url: str, tmp_path: Path, engine: FakeEngine, receiver: tuple[str, Receiver]
) -> None:
    base, hook = receiver
    review = {"escalate": "always", "delivery": "hold", "callback_url": f"{base}/hooks/review"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review),
        review_callback_allowlist=[f"{base}/hooks/"], review_callback_backoff_s=0.05,
        review_callback_backoff_max_s=0.2, review_callback_poll_s=0.05,
    )  # fmt: skip
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    async with running_gateway(settings) as h:
        await ask_and_approve_held(h)
        await wait_until(lambda: hook.tries >= 2, what="two failed tries")
    tries_before_restart = hook.tries
    hook.failing = False
    async with running_gateway(settings) as h:  # a new gateway on the same database
        # A gateway stopped during a try holds that callback for the take lease (15 s).
        await wait_until(lambda: hook.delivered, timeout_s=40, what="the callback")
        (result,) = hook.delivered
        assert result["status"] == "approved"
        review_id = str(result["review_id"])

        async def delivered() -> bool:
            async with h.app.state.gateway.sessions() as session:
                (callback,) = await callbacks_of(session, review_id)
            return callback.state == "delivered"

        await wait_until(delivered, what="the try to be recorded")
        async with h.app.state.gateway.sessions() as session:
            (callback,) = await callbacks_of(session, review_id)
    statuses = [attempt.status for attempt in callback.attempts]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}
    # A try cut short by the first gateway's stop got to the receiver but was never recorded.
    assert 2 <= len(statuses) <= hook.tries and hook.tries >= tries_before_restart + 1


async def outbox_rows(url: str, review_id: str) -> tuple[list[CallbackView], list[int]]:
    """The item's callbacks with their recorded tries, and each row's ``attempts`` counter."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            views = await callbacks_of(session, review_id)
            counters = (
                await session.scalars(
                    select(ReviewCallback.attempts)
                    .where(ReviewCallback.review_id == review_id)
                    .order_by(ReviewCallback.id)
                )
            ).all()
    finally:
        await engine.dispose()
    return views, list(counters)


async def ask_and_approve_over_http(url: str, app_key: str, reviewer_key: str) -> dict[str, Any]:
    """Ask the hold route of the gateway at ``url`` and approve the held answer as a reviewer;
    the held answer's JSON."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        app = {"Authorization": f"Bearer {app_key}"}
        r = await client.post("/v1/chat/completions", json=chat_body(ROUTE), headers=app)
        assert r.status_code == 202, r.text  # held: the answer waits for a reviewer
        held: dict[str, Any] = r.json()
        assert held["status"] == "pending" and held["review_id"], held
        reviewer = {"Authorization": f"Bearer {reviewer_key}"}
        claimed: dict[str, Any] = {}

        async def claim() -> bool:
            answer = await client.post("/v1/reviews/claim", json={}, headers=reviewer)
            assert answer.status_code in (200, 204), answer.text
            if answer.status_code == 200:
                claimed.update(answer.json())
            return bool(claimed)

        await wait_until(claim, timeout_s=60, what="the held answer to be claimable")
        decision = {"token": claimed["token"], "kind": "approve"}
        decide = f"/v1/reviews/items/{held['review_id']}/decision"
        decided = await client.post(decide, json=decision, headers=reviewer)
        assert decided.status_code == 200, decided.text
    return held


@pytest.mark.postgres
async def test_a_callback_retried_when_its_gateway_is_killed_is_sent_by_the_next_process(
    tmp_path: Path, engine: FakeEngine, receiver: tuple[str, Receiver]
) -> None:
    base, hook = receiver
    review = {"escalate": "always", "delivery": "hold", "callback_url": f"{base}/hooks/review"}
    env = {
        "LORAGATE_ROUTES_FILE": str(routes_file(tmp_path, review)),
        "LORAGATE_REVIEW_CALLBACK_ALLOWLIST": json.dumps([f"{base}/hooks/"]),
        "LORAGATE_REVIEW_CALLBACK_ATTEMPTS": "1000",  # never given up during the test
        "LORAGATE_REVIEW_CALLBACK_BACKOFF_S": "0.1",
        "LORAGATE_REVIEW_CALLBACK_BACKOFF_MAX_S": "0.3",
        "LORAGATE_REVIEW_CALLBACK_POLL_S": "0.1",
    }
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    async with fresh_database("postgres", tmp_path) as url:
        app_key = await insert_key(url, Role.APP)
        reviewer_key = await insert_key(url, Role.REVIEWER)
        first = GatewayProcess(tmp_path / "data", url, engine.url, **env)
        second = GatewayProcess(tmp_path / "data", url, engine.url, **env)
        try:
            first.start()
            await first.ready()
            held = await ask_and_approve_over_http(first.url, app_key, reviewer_key)
            review_id = str(held["review_id"])

            async def failed_tries_recorded() -> bool:
                (callback,), _ = await outbox_rows(url, review_id)
                return len(callback.attempts) >= 2 and hook.tries >= 2

            await wait_until(failed_tries_recorded, timeout_s=60, what="failed tries recorded")
            first.kill()  # SIGKILL while the callback is pending and being retried
            (callback,), _ = await outbox_rows(url, review_id)
            assert callback.state == "pending" and not hook.delivered
            recorded_before_kill = len(callback.attempts)

            second.start()  # a new process on the same database
            await second.ready()
            hook.failing = False
            # A try cut short by the kill holds the callback for the take lease (15 s).
            await wait_until(lambda: hook.delivered, timeout_s=90, what="the callback")

            async def delivered() -> bool:
                (callback,), _ = await outbox_rows(url, review_id)
                return callback.state == "delivered"

            await wait_until(delivered, timeout_s=60, what="the delivery to be recorded")
            views, counters = await outbox_rows(url, review_id)
        finally:
            first.stop()
            second.stop()
    # At least once, and always the decision's result.
    assert hook.delivered and all(result == hook.delivered[0] for result in hook.delivered)
    result = hook.delivered[0]
    assert (result["review_id"], result["request_id"]) == (review_id, held["request_id"])
    assert result["status"] == "approved" and result["decided_at"]
    assert result["answer"] == "".join(TOKENS)  # the model's answer, approved
    # One outbox row, delivered, with every recorded try: the failures, then the 2xx.
    ((callback,), (attempts,)) = (views, counters)
    statuses = [attempt.status for attempt in callback.attempts]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}
    assert attempts == len(statuses) > recorded_before_kill
    # A try cut short by the kill may have reached the receiver without being recorded.
    assert len(statuses) <= hook.tries
