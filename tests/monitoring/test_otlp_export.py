"""Traces leave the gateway the way it is configured in production (``otlp_endpoint``: the SDK's
OTLP/HTTP exporter) and arrive at a receiver as protobuf, GenAI attributes and all; the managed
engine is told to export its own spans to the same endpoint."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service.engine.managed import vllm_command, vllm_environment
from service.settings import ManagedEngineSettings
from tests.conftest import chat_body, make_settings, running_gateway
from tests.fake_engine import MODEL, FakeEngine
from tests.monitoring.otlp_receiver import CLIENT, SERVER, ReceivedSpan, receiving


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def test_spans_arrive_over_otlp_http_with_their_genai_attributes(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    with receiving() as receiver:
        settings = make_settings(sqlite_url, tmp_path, [engine.url], otlp_endpoint=receiver.url)
        async with running_gateway(settings) as h:
            body = chat_body(max_tokens=9)
            r = await h.client.post("/v1/chat/completions", json=body, headers=h.auth())
            assert r.status_code == 200, r.text
            await asyncio.to_thread(h.app.state.tracer_provider.force_flush)
            spans = await asyncio.to_thread(
                receiver.wait_for,
                lambda got: bool(named(got, "chat chat") and named(got, f"chat {MODEL}")),
            )
    (server,) = named(spans, "chat chat")
    (client,) = named(spans, f"chat {MODEL}")
    assert (server.kind, client.kind) == (SERVER, CLIENT)
    assert server.service == client.service == "loragate"
    assert client.trace_id == server.trace_id and client.parent_span_id == server.span_id
    answer = r.json()
    assert server.attributes["loragate.request_id"] == r.headers["x-request-id"]
    for span in (server, client):
        got = span.attributes
        assert got["gen_ai.operation.name"] == "chat"
        assert got["gen_ai.request.max_tokens"] == 9
        assert got["gen_ai.response.id"] == answer["id"]
        assert got["gen_ai.response.model"] == MODEL
        assert got["gen_ai.response.finish_reasons"] == ("stop",)
        assert (got["gen_ai.usage.input_tokens"], got["gen_ai.usage.output_tokens"]) == (7, 4)
        assert got["loragate.route"] == "chat"


def test_the_managed_engine_exports_its_spans_where_the_gateway_does(tmp_path: Path) -> None:
    config = ManagedEngineSettings()
    endpoint = "http://collector:4318/v1/traces"
    command = vllm_command(config, tmp_path, endpoint)
    flag = command.index("--otlp-traces-endpoint")
    assert command[flag + 1] == endpoint
    env = vllm_environment(config, endpoint)
    # vLLM's exporter speaks gRPC unless told; the gateway's endpoint is OTLP over HTTP.
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_SERVICE_NAME"] == "vllm"
    # No endpoint, no tracing flags.
    assert "--otlp-traces-endpoint" not in vllm_command(config, tmp_path)
    protocol = vllm_environment(config).get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    assert protocol == os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
