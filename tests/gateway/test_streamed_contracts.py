"""Streams on routes with an output contract, through the official ``openai`` client: tokens
relayed as they come, the answer judged at the end, the verdict as the last event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from service.db.models import ReviewItem
from tests.conftest import Harness, make_settings, running_gateway
from tests.fake_engine import Behaviour, FakeEngine
from tests.guard.test_output_contracts import (
    ROUTE,
    SURE,
    TOKENS,
    record_of,
    routes_file,
    unsure_urgency,
)

MESSAGES: list[Any] = [{"role": "user", "content": "My card was charged twice."}]


@pytest.fixture
async def gw(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    review = {"escalate": "below", "threshold": 0.5, "invalid": "escalate"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    async with running_gateway(settings) as harness:
        yield harness


def client_of(h: Harness) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=h.app)
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1",
        api_key=h.auth()["Authorization"].removeprefix("Bearer "),
        http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway"),
        max_retries=0,
    )


async def stream(h: Harness, **extra: Any) -> list[Any]:
    async with client_of(h) as client:
        chunks = await client.chat.completions.create(
            model=ROUTE, messages=MESSAGES, stream=True, **extra
        )
        return [chunk async for chunk in chunks]


def text_of(chunks: list[Any]) -> str:
    # What the README tells clients to do: it must read nothing from the verdict event.
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


async def test_a_sure_streamed_answer_ends_with_its_verdict(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    chunks = await stream(gw)
    assert text_of(chunks) == "".join(TOKENS)
    sent = engine.requests[-1]
    assert sent["stream"] is True and sent["logprobs"] is True
    assert sent["response_format"]["type"] == "json_schema"  # still under the grammar
    # The client did not ask for logprobs: no chunk carries any.
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    verdict = chunks[-1]
    assert verdict.choices[0].delta.content is None and verdict.choices[0].finish_reason is None
    meta = (verdict.model_extra or {})["loragate"]
    assert (meta["schema_valid"], meta["confidence"], meta["review_id"]) == (True, 1.0, None)
    assert meta["confidence_fields"] == ["/category", "/urgency"]
    assert all("loragate" not in (c.model_extra or {}) for c in chunks[:-1])
    async with gw.app.state.gateway.sessions() as session:
        assert list((await session.scalars(select(ReviewItem))).all()) == []


async def test_an_unsure_streamed_answer_is_escalated_with_its_record(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_urgency())
    async with client_of(gw) as client:
        response = await client.chat.completions.with_raw_response.create(
            model=ROUTE, messages=MESSAGES, stream=True, logprobs=True
        )
        request_id = response.headers["x-request-id"]
        chunks = [chunk async for chunk in response.parse()]
    # The client asked for logprobs: its chunks keep them.
    assert any(c.choices and c.choices[0].logprobs is not None for c in chunks[:-1])
    meta = (chunks[-1].model_extra or {})["loragate"]
    assert meta["schema_valid"] is True and meta["confidence"] < 0.5
    assert meta["review_id"]
    row = await record_of(gw, request_id)
    assert (row.stream, row.schema_valid, row.escalated) == (True, True, True)
    assert row.confidence == pytest.approx(meta["confidence"])
    async with gw.app.state.gateway.sessions() as session:
        item = await session.get(ReviewItem, meta["review_id"])
    assert item is not None
    assert (item.request_id, item.answer) == (request_id, "".join(TOKENS))


async def test_a_broken_streamed_answer_is_invalid_and_escalated(
    gw: Harness, engine: FakeEngine
) -> None:
    cut = TOKENS[:5]
    engine.default = Behaviour(tokens=cut, logprobs=[0.0] * len(cut))
    chunks = await stream(gw)
    meta = (chunks[-1].model_extra or {})["loragate"]
    assert meta["schema_valid"] is False and meta["schema_errors"] and meta["review_id"]
    assert len(engine.requests) == 1  # a stream is never asked again: its tokens are out


async def test_a_hold_route_refuses_a_stream_with_a_reason(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    review = {"escalate": "always", "delivery": "hold"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    async with running_gateway(settings) as h, client_of(h) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=ROUTE, messages=MESSAGES, stream=True)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "stream" and "hold" in error["message"]
    assert engine.requests == []
