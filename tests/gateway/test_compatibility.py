"""The README's compatibility table, held to what the gateway does: every parameter of the
official client's ``chat.completions.create`` has a row, and each one, sent through that client,
is passed, enforced or refused as its row says."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.resources.chat.completions import Completions

from service.settings import EnginePoolSettings
from tests.conftest import MODEL, Harness, fresh_database, make_settings, running_gateway
from tests.fake_engine import Behaviour, FakeEngine
from tests.gateway.test_request_checks import GOOD_CALL, MESSAGES, WEATHER
from tests.gateway.test_streamed_contracts import client_of

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(\w+)` \| (passed|enforced|refused) \|", re.MULTILINE)
CLIENT_ONLY = {"extra_headers", "extra_query", "extra_body", "timeout"}
# A value the official client sends as it is, for each parameter.
SAMPLES: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "max_completion_tokens": 8,
    "max_tokens": 8,
    "metadata": {"team": "a"},
    "modalities": ["text"],
    "moderation": {"mode": "block"},
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "Paris"},
    "presence_penalty": 0.5,
    "prompt_cache_key": "k",
    "prompt_cache_options": {"mode": "auto"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "safety_identifier": "u1",
    "seed": 7,
    "service_tier": "flex",
    "stop": ["\n\n"],
    "store": True,
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.2,
    "tool_choice": "auto",
    "tools": [WEATHER],
    "top_logprobs": 2,
    "top_p": 0.9,
    "user": "customer-7",
    "verbosity": "low",
    "web_search_options": {},
}
# What a parameter needs beside it to be sent as it is meant.
WITH: dict[str, dict[str, Any]] = {
    "parallel_tool_calls": {"tools": [WEATHER]},
    "tool_choice": {"tools": [WEATHER]},
    "top_logprobs": {"logprobs": True},
    "stream_options": {"stream": True},
}
# The engine's name for a field the gateway renames.
ENGINE_NAME = {"max_completion_tokens": "max_tokens"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[FakeEngine]:
    fake = await FakeEngine().start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(
    tmp_path_factory: pytest.TempPathFactory, engine: FakeEngine
) -> AsyncIterator[Harness]:
    """The gateway on SQLite, its pool running a tool-call parser (``tool_choice`` auto)."""
    tmp_path = tmp_path_factory.mktemp("compatibility")
    pool = EnginePoolSettings(
        name="default", base_model=MODEL, urls=[engine.url], tool_call_parser="hermes"
    )
    async with fresh_database("sqlite", tmp_path) as url:
        settings = make_settings(url, tmp_path, [engine.url]).model_copy(update={"engines": [pool]})
        async with running_gateway(settings) as harness:
            yield harness


def table() -> dict[str, str]:
    return dict(ROW.findall(README.read_text()))


def parameters() -> list[str]:
    names = inspect.signature(Completions.create).parameters
    return [name for name in names if name not in CLIENT_ONLY | {"self", "messages", "model"}]


def test_every_parameter_of_the_official_client_has_a_row() -> None:
    rows = table()
    assert set(rows) == set(parameters()) | {"messages", "model"}
    assert set(SAMPLES) == set(parameters())  # a new parameter needs a sample and a row


# One gateway and engine for the module's cases (a gateway per case took 21 s).
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", parameters())
async def test_each_parameter_does_what_its_row_says(
    gw: Harness, engine: FakeEngine, name: str
) -> None:
    verdict = table()[name]
    engine.requests.clear()
    engine.default = Behaviour()
    request = {**WITH.get(name, {}), name: SAMPLES[name]}
    if "tools" in request:
        engine.default = Behaviour(tool_calls=[GOOD_CALL])
    elif name == "response_format":
        engine.default = Behaviour(tokens=['{"city": "Paris"}'])
    async with client_of(gw) as client:
        if verdict == "refused":
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="chat", messages=MESSAGES, **request)
            assert (refused.value.code, refused.value.param) == ("unsupported_parameter", name)
            assert engine.requests == []
            return
        answer = await client.chat.completions.create(model="chat", messages=MESSAGES, **request)
        if name == "stream":
            assert [chunk async for chunk in answer]
    assert ENGINE_NAME.get(name, name) in engine.requests[-1]
    if verdict == "passed":
        assert engine.requests[-1][name] == SAMPLES[name]
