"""The gateway's traces in the OpenTelemetry GenAI conventions, through the whole app in front of
the fake engine, read from the SDK's in-memory exporter: a SERVER span per request continuing
the caller's trace, a CLIENT span per engine call (the primary's and a shadow's) whose context
reaches the engine as ``traceparent``, the adapter version and digest, the guard's verdict, and
prompt and answer texts only as far as the record-bodies setting keeps them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.auth import Role
from tests.adapters.test_placement import add_version
from tests.conftest import Harness, chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import MODEL, Behaviour, FakeEngine
from tests.guard.test_output_contracts import ROUTE, TOKENS, routes_file, unsure_urgency
from tests.rollout.test_rollouts import GOOD, Clock, quick_spec, start, tick

CHAT = "/v1/chat/completions"
# A caller's own trace, as an instrumented application sends it.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CONTENT = ("gen_ai.input.messages", "gen_ai.output.messages")
CALL = ("get_weather", '{"city": "Paris"}')
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class TracedEngine(FakeEngine):
    """The fake engine, keeping the headers of every generation request."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        return await super()._handle(request)


@pytest.fixture
async def engine() -> AsyncIterator[TracedEngine]:
    fake = TracedEngine()
    await fake.start()
    yield fake
    await fake.stop()


@asynccontextmanager
async def traced(
    url: str, tmp_path: Path, engine: FakeEngine, **overrides: Any
) -> AsyncIterator[tuple[Harness, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    clock = overrides.pop("clock", None)
    settings = make_settings(url, tmp_path, [engine.url], **overrides)
    extra = {"clock": clock} if clock is not None else {}
    async with running_gateway(settings, span_exporter=exporter, **extra) as harness:
        yield harness, exporter


async def spans_when(
    harness: Harness,
    exporter: InMemorySpanExporter,
    ready: Callable[[Sequence[ReadableSpan]], bool],
) -> list[ReadableSpan]:
    """The exported GenAI spans (those with an operation) once ``ready`` holds for them."""
    provider = harness.app.state.tracer_provider

    def genai() -> list[ReadableSpan]:
        provider.force_flush()
        return [
            s
            for s in exporter.get_finished_spans()
            if "gen_ai.operation.name" in (s.attributes or {})
        ]

    await wait_until(lambda: ready(genai()), what="the request's spans")
    return genai()


def traceparent_of(engine: TracedEngine, call: ReadableSpan) -> str | None:
    """The ``traceparent`` the engine got from inside ``call``'s span, if it got one."""
    parent = f"-{call.context.span_id:016x}-"
    sent = [h.get("traceparent", "") for h in engine.headers]
    return next((value for value in sent if parent in value), None)


def shipped(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "records.ship"]


def one(spans: Sequence[ReadableSpan], kind: SpanKind, **attributes: object) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.kind is kind
        and all((s.attributes or {}).get(k.replace("__", ".")) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, [(s.name, s.kind, dict(s.attributes or {})) for s in spans]
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parts(messages: str) -> list[tuple[str, list[str]]]:
    """(role, texts) of each message of a ``gen_ai.*.messages`` attribute."""
    return [(m["role"], [p["content"] for p in m["parts"]]) for m in json.loads(messages)]


async def test_a_request_is_a_server_span_over_a_client_span_continuing_the_callers_trace(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    async with traced(sqlite_url, tmp_path, engine) as (h, exporter):
        r = await h.client.post(
            CHAT, json=chat_body(max_tokens=12, temperature=0.5, seed=3, stop=["\n"]),
            headers={**h.auth(), "traceparent": TRACEPARENT},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
        await h.records(1)  # the shipper's own span goes to the same exporter
        await spans_when(h, exporter, lambda _: bool(shipped(exporter)))
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    assert (server.name, client.name) == ("chat chat", f"chat {MODEL}")
    # The caller's trace goes on: its span is the server span's parent.
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    answer = r.json()
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.max_tokens": 12,
        "gen_ai.request.seed": 3,
        "gen_ai.request.stop_sequences": ("\n",),
        "gen_ai.response.id": answer["id"],
        "gen_ai.response.model": MODEL,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 4,
        "loragate.route": "chat",
        "loragate.rollout.arm": "stable",
    }
    for span in (server, client):
        got = attrs(span)
        assert {k: got.get(k) for k in expected} == expected, span.name
        assert got["gen_ai.request.temperature"] == pytest.approx(0.5)
        assert "loragate.adapter.version" not in got  # the base model answered
    assert attrs(server)["gen_ai.provider.name"] == "loragate"
    assert attrs(server)["gen_ai.request.model"] == "chat"
    assert attrs(server)["loragate.request_id"] == r.headers["x-request-id"]
    assert attrs(client)["gen_ai.provider.name"] == "vllm"
    assert attrs(client)["gen_ai.request.model"] == MODEL
    host, port = engine.url.removeprefix("http://").split(":")
    assert (attrs(client)["server.address"], attrs(client)["server.port"]) == (host, int(port))
    assert parts(attrs(server)["gen_ai.input.messages"]) == [("user", ["hi"])]
    output = json.loads(attrs(server)["gen_ai.output.messages"])
    assert output == [{"role": "assistant", "finish_reason": "stop",
                       "parts": [{"type": "text", "content": "Hello from the fake"}]}]  # fmt: skip
    # The engine was called inside the client span: its spans would join this trace.
    assert traceparent_of(engine, client) == f"00-{CALLER_TRACE}-{client.context.span_id:016x}-01"


async def test_a_trace_the_caller_did_not_sample_is_not_recorded_but_still_propagated(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    async with traced(sqlite_url, tmp_path, engine) as (h, exporter):
        for traceparent in (f"00-{unsampled}-{CALLER_SPAN}-00", TRACEPARENT):
            headers = {**h.auth(), "traceparent": traceparent}
            assert (await h.client.post(CHAT, json=chat_body(), headers=headers)).is_success
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
    assert {f"{s.context.trace_id:032x}" for s in spans} == {CALLER_TRACE}
    # The engine still continues the caller's trace, unsampled, as the caller decided.
    sent = [h["traceparent"] for h in engine.headers if unsampled in h.get("traceparent", "")]
    assert len(sent) == 1 and sent[0].endswith("-00")


async def test_a_legacy_completion_is_a_text_completion(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    async with traced(sqlite_url, tmp_path, engine) as (h, exporter):
        body = {"model": "chat", "prompt": "Once upon", "max_tokens": 4}
        assert (await h.client.post("/v1/completions", json=body, headers=h.auth())).is_success
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    assert (server.name, client.name) == ("text_completion chat", f"text_completion {MODEL}")
    assert attrs(server)["gen_ai.operation.name"] == "text_completion"
    assert parts(attrs(server)["gen_ai.input.messages"]) == [("user", ["Once upon"])]
    assert parts(attrs(server)["gen_ai.output.messages"]) == [
        ("assistant", ["Hello from the fake"])
    ]


async def test_a_streamed_answer_under_a_contract_ends_its_spans_with_usage_and_verdict(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    review = {"escalate": "below", "threshold": 0.5, "invalid": "escalate"}
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_urgency())
    async with traced(sqlite_url, tmp_path, engine, routes_file=routes_file(tmp_path, review)) as (
        h,
        exporter,
    ):
        body = chat_body(ROUTE, stream=True, stream_options={"include_usage": True})
        r = await h.client.post(CHAT, json=body, headers=h.auth())
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    assert server.name == f"chat {ROUTE}"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    for span in (server, client):
        got = attrs(span)
        assert got["gen_ai.request.stream"] is True
        assert got["gen_ai.response.finish_reasons"] == ("stop",)
        assert (got["gen_ai.usage.input_tokens"], got["gen_ai.usage.output_tokens"]) == (
            7, len(TOKENS),
        )  # fmt: skip
        assert got["gen_ai.response.model"] == MODEL
        assert got["gen_ai.output.type"] == "json"
    assert attrs(client)["gen_ai.response.id"] == attrs(server)["gen_ai.response.id"]
    assert attrs(server)["gen_ai.response.id"].startswith("cmpl-")
    # The guard's verdict: valid, unsure of its urgency, escalated to review.
    got = attrs(server)
    assert (got["loragate.guard.schema_valid"], got["loragate.guard.escalated"]) == (True, True)
    assert 0.0 < got["loragate.guard.confidence"] < 0.5
    ((role, (text,)),) = parts(got["gen_ai.output.messages"])
    assert role == "assistant" and json.loads(text)["category"] == "billing"
    assert traceparent_of(engine, client) is not None  # the stream was opened in its span
    # The span of a stream lasts until its last event, not until its headers went out.
    assert server.end_time is not None and client.end_time is not None
    assert server.end_time >= client.end_time


async def test_a_stream_of_several_choices_and_a_tool_call_is_traced_whole(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    engine.default = Behaviour(tokens=["t0", "t1", "t2", "t3"], tool_calls=[CALL])
    async with traced(sqlite_url, tmp_path, engine) as (h, exporter):
        body = chat_body(stream=True, n=2, tools=[TOOL], tool_choice="required")
        r = await h.client.post(CHAT, json=body, headers=h.auth())
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    for span in (server, client):
        assert attrs(span)["gen_ai.request.choice.count"] == 2
        assert attrs(span)["gen_ai.response.finish_reasons"] == ("stop", "stop")
    first, second = json.loads(attrs(server)["gen_ai.output.messages"])
    name, arguments = CALL
    assert first["parts"] == [{"type": "tool_call", "id": "call-0", "name": name,
                               "arguments": json.loads(arguments)}]  # fmt: skip
    assert second["parts"] == [{"type": "text", "content": "t0t1t2t3"}]
    (offered,) = json.loads(attrs(server)["gen_ai.tool.definitions"])
    assert offered == {"type": "function", **TOOL["function"]}


async def test_the_guard_asking_again_is_an_engine_call_of_its_own(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    review = {"escalate": "never", "invalid": "escalate", "retry_invalid": 1}
    engine.then(Behaviour(tokens=["Sure", "!"]))  # not the schema's JSON: asked again
    engine.default = Behaviour(tokens=TOKENS, logprobs=[0.0] * len(TOKENS))
    async with traced(sqlite_url, tmp_path, engine, routes_file=routes_file(tmp_path, review)) as (
        h,
        exporter,
    ):
        r = await h.client.post(CHAT, json=chat_body(ROUTE), headers=h.auth())
        assert r.status_code == 200, r.text
        spans = await spans_when(h, exporter, lambda s: len(s) == 3)
    server = one(spans, SpanKind.SERVER)
    first = one(spans, SpanKind.CLIENT, loragate__retry=None)
    again = one(spans, SpanKind.CLIENT, loragate__retry="invalid")
    assert first.end_time is not None and again.start_time is not None
    assert first.end_time <= again.start_time
    assert attrs(again)["gen_ai.response.id"] == attrs(server)["gen_ai.response.id"]
    assert attrs(first)["gen_ai.response.id"] != attrs(again)["gen_ai.response.id"]
    assert attrs(server)["loragate.guard.schema_valid"] is True
    assert traceparent_of(engine, again) is not None


@pytest.mark.parametrize("bodies", ["none", "redacted"])
async def test_texts_go_on_spans_only_as_records_keep_them(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine, bodies: str
) -> None:
    engine.default = Behaviour(tokens=["Write", " to", " jane@example.com"])
    async with traced(sqlite_url, tmp_path, engine, record_bodies=bodies) as (h, exporter):
        body = {"model": "chat", "messages": [{"role": "user", "content": "I am jane@example.com"}]}
        assert (await h.client.post(CHAT, json=body, headers=h.auth())).status_code == 200
        streamed = chat_body(stream=True)
        assert (await h.client.post(CHAT, json=streamed, headers=h.auth())).status_code == 200
        spans = await spans_when(h, exporter, lambda s: len(s) == 4)
    exported = json.dumps([attrs(s) for s in spans])
    assert "jane@example.com" not in exported
    if bodies == "none":
        assert not any(name in attrs(s) for s in spans for name in CONTENT)
        return
    server = one(spans, SpanKind.SERVER, gen_ai__request__stream=None)
    assert parts(attrs(server)["gen_ai.input.messages"]) == [("user", ["I am <email>"])]
    ((_, (text,)),) = parts(attrs(server)["gen_ai.output.messages"])
    assert text == "Write to <email>"


async def test_adapter_versions_and_a_shadow_call_carry_their_digests_and_arms(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine
) -> None:
    clock = Clock()
    async with traced(
        sqlite_url, tmp_path, engine, rollout_tick_s=3600, adapter_reconcile_interval_s=0.1,
        clock=clock,
    ) as (h, exporter):  # fmt: skip
        await add_version(h, "triage", 1, tmp_path)
        await add_version(h, "triage", 2, tmp_path)
        put = await h.client.put(
            "/v1/admin/routes/chat/target", json={"target": "triage@1"}, headers=h.auth(Role.SRE)
        )
        assert put.status_code == 200, put.text
        engine.by_model["triage@1"] = engine.by_model["triage@2"] = GOOD
        assert (await start(h, quick_spec())).status_code == 200
        assert (await tick(h, clock, 0))["phase"] == "shadow"
        exporter.clear()
        r = await h.client.post(CHAT, json=chat_body(), headers=h.auth())
        assert r.status_code == 200, r.text
        spans = await spans_when(h, exporter, lambda s: len(s) == 3)
    server = one(spans, SpanKind.SERVER)
    primary = one(spans, SpanKind.CLIENT, loragate__rollout__arm="stable")
    shadow = one(spans, SpanKind.CLIENT, loragate__rollout__arm="shadow")
    assert (primary.name, shadow.name) == ("chat triage@1", "chat triage@2")
    for span in (primary, shadow):
        assert span.parent is not None and span.parent.span_id == server.context.span_id
    digests = {
        span.name: (attrs(span)["loragate.adapter.version"], attrs(span)["loragate.adapter.sha256"])
        for span in (server, primary, shadow)
    }
    assert digests == {
        "chat chat": ("triage@1", f"{1:064d}"),
        "chat triage@1": ("triage@1", f"{1:064d}"),
        "chat triage@2": ("triage@2", f"{2:064d}"),
    }
    assert attrs(shadow)["gen_ai.response.model"] == "triage@2"
    assert attrs(shadow)["gen_ai.usage.output_tokens"] == 3
    assert attrs(server)["gen_ai.response.model"] == "triage@1"


@pytest.mark.parametrize(("engine_status", "status"), [(400, 400), (500, 502)])
async def test_a_failed_engine_call_marks_both_spans_with_its_error(
    sqlite_url: str, tmp_path: Path, engine: TracedEngine, engine_status: int, status: int
) -> None:
    engine.then(Behaviour(kind="status", status=engine_status))
    async with traced(sqlite_url, tmp_path, engine) as (h, exporter):
        r = await h.client.post(CHAT, json=chat_body(), headers=h.auth())
        assert r.status_code == status, r.text
        spans = await spans_when(h, exporter, lambda s: len(s) == 2)
    code = r.json()["error"]["code"]
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    assert attrs(server)["error.type"] == attrs(client)["error.type"] == code
    assert client.status.status_code is StatusCode.ERROR
    # The request's span is an error when the gateway failed, not when the caller's was refused.
    assert server.status.status_code is (StatusCode.ERROR if status >= 500 else StatusCode.UNSET)
