"""The real thing: `loragate serve` with its managed vLLM and the bundled model, driven with the
official `openai` client. Slow (vLLM starts in about a minute on these CPUs); the gateway is this
package's (`live` in its conftest.py), started exactly as the README says.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import httpx
import openai
import pytest

from tests.real.live import START_TIMEOUT_S, LiveGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_key(live: LiveGateway) -> str:
    """An app key for `chat` alone (the session's gateway also serves the review tests' route)."""
    out = live.cli("keys", "create", "--role", "app", "--name", "real-tests", "--route", "chat")
    return next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))


@pytest.fixture(scope="module")
def client(live: LiveGateway, app_key: str) -> openai.OpenAI:
    warm = openai.OpenAI(base_url=f"{live.url}/v1", api_key=app_key, timeout=180, max_retries=0)
    # The first generation after a start is slow once; warm the engine before timing anything.
    warm.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    return warm


def test_chat_completion_with_openai_client(live: LiveGateway, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=12,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert [m.id for m in client.models.list().data] == ["chat"]


def test_streaming_with_openai_client(live: LiveGateway, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    streamed = live.wait_record(lambda r: r["stream"] and r["response_body"] == text)
    assert streamed["status_code"] == 200 and streamed["ttft_ms"] is not None
    assert streamed["tokens_out"] == chunks[-1].usage.completion_tokens


def test_completions_endpoint(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="chat", prompt="The sky is", max_tokens=5)
    assert answer.choices[0].text


def test_json_schema_answer_is_valid_json(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Is Paris in France? Answer as JSON."}],
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "yn", "schema": schema}},
    )
    assert json.loads(answer.choices[0].message.content or "")["answer"] in {"yes", "no"}


def test_documented_errors_through_openai_client(live: LiveGateway, client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-route", messages=messages)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as legacy:
        client.chat.completions.create(
            model="chat",
            messages=messages,
            extra_body={"guided_json": {"type": "object"}},  # type: ignore[arg-type]
        )
    assert legacy.value.code == "legacy_guided_field"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model="chat", messages=messages, n=5)  # type: ignore[arg-type]
    assert many.value.code == "value_out_of_range"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "word " * 3000}],
            max_tokens=5,
        )
    assert too_long.value.code == "engine_rejected_request"
    wrong = openai.OpenAI(base_url=f"{live.url}/v1", api_key="lg-nope-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
    for code in ("model_not_found", "legacy_guided_field", "engine_rejected_request"):
        live.wait_record(lambda r, code=code: r["error_code"] == code)
    # A request without a valid key is counted, not recorded (a flood of made-up keys would
    # otherwise cost a row each).
    sre = live.cli("keys", "create", "--role", "sre", "--quiet").strip()
    metrics = httpx.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {sre}"}).text
    counted = re.search(
        r'loragate_unauthenticated_requests_total\{code="invalid_api_key"\} (\S+)', metrics
    )
    assert counted is not None and float(counted.group(1)) >= 1
    assert not [r for r in live.records() if r["error_code"] == "invalid_api_key"]


def test_client_disconnect_cancels_and_is_recorded(live: LiveGateway, app_key: str) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Write a very long story about a ship."}],
        "max_tokens": 1000,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {app_key}"}
    with httpx.stream(
        "POST", f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass
    gone = live.wait_record(lambda r: r["error_code"] == "client_closed_request")
    assert gone["status_code"] == 499
    assert (gone["tokens_out"] or 0) < 1000


def test_engine_killed_mid_stream_then_restarted(
    live: LiveGateway, client: openai.OpenAI, app_key: str
) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Write a very long story about a ship."}],
        "max_tokens": 1000,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {app_key}"}
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 4:
                os.killpg(live.engine_pid(), signal.SIGKILL)
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error["error"]["type"] == "upstream_error"
    broken = live.wait_record(lambda r: r["error_type"] == "upstream_error" and r["stream"])
    assert broken["status_code"] in {502, 504}
    # The probe notices the dead engine, then the managed engine comes back by itself.
    deadline = time.monotonic() + 60
    while httpx.get(f"{live.url}/readyz", timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "readyz never reported the dead engine"
        time.sleep(0.5)
    live.wait_ready(timeout_s=START_TIMEOUT_S)
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content is not None
