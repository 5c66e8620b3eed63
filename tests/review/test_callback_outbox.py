"""Review callbacks from the durable outbox: a failing receiver is retried with backoff, each
try recorded, and a callback not delivered when a gateway stops is sent by the next one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from service.review.outbox import callbacks_of
from tests.conftest import make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine
from tests.guard.test_output_contracts import SURE, TOKENS, ask_and_approve_held, routes_file


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
