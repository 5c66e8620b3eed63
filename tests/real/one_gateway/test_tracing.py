"""A real call traced end to end: the package's gateway and its managed vLLM export to an
OTLP/HTTP receiver (`otlp` in conftest.py); the gateway's GenAI spans name the adapter version
and its digest, and vLLM's own span joins the caller's trace under the gateway's client span."""

from __future__ import annotations

import secrets
import sqlite3

import httpx
import pytest
import yaml

from tests.conftest import prepared_model
from tests.monitoring.otlp_receiver import CLIENT, SERVER, OtlpReceiver, ReceivedSpan
from tests.real.live import LiveGateway
from tests.real.test_real_adapters import key_for, make_adapters

pytestmark = pytest.mark.slow
ROUTE = "traced"


def in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def complete(spans: list[ReceivedSpan]) -> bool:
    """The gateway's server and client spans and vLLM's span are all in."""
    services = [(s.service, s.kind) for s in spans]
    return (
        ("loragate", SERVER) in services
        and ("loragate", CLIENT) in services
        and any(service == "vllm" for service, _ in services)
    )


@pytest.mark.timeout(900)
def test_a_real_call_is_traced_from_the_caller_through_the_gateway_into_vllm(
    live: LiveGateway, otlp: OtlpReceiver
) -> None:
    adapter = live.workdir / "traced-adapter"
    make_adapters(prepared_model(), [(adapter, 5, False, 8)])
    live.cli("adapters", "register", ROUTE, str(adapter))
    with sqlite3.connect(live.db_path) as db:
        (sha256,) = db.execute(
            "SELECT sha256 FROM adapter_versions WHERE id = ?", (f"{ROUTE}@1",)
        ).fetchone()
    routes = live.workdir / "traced-routes.yaml"
    routes.write_text(yaml.safe_dump({"routes": [{"name": ROUTE}]}))
    live.cli("routes", "sync", str(routes))
    # Switched through the gateway: it returns once every replica generates with the version.
    live.cli("routes", "set-target", ROUTE, f"{ROUTE}@1", "--key", key_for(live, "sre"),
             "--url", live.url)  # fmt: skip
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": "Say hello."}],
              "max_tokens": 8, "temperature": 0},
        headers={"Authorization": f"Bearer {key_for(live, 'app')}",
                 "traceparent": f"00-{trace_id}-{caller_span}-01"},
        timeout=300,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    # vLLM exports its spans in batches (every few seconds): wait for them.
    spans = in_trace(otlp.wait_for(lambda got: complete(in_trace(got, trace_id)), 120), trace_id)
    (server,) = [s for s in spans if s.service == "loragate" and s.kind == SERVER]
    (client,) = [s for s in spans if s.service == "loragate" and s.kind == CLIENT]
    engine = [s for s in spans if s.service == "vllm"]
    assert (server.name, client.name) == (f"chat {ROUTE}", f"chat {ROUTE}@1")
    assert server.parent_span_id == caller_span and client.parent_span_id == server.span_id
    # vLLM's span continues the trace under the call that reached it.
    assert [s.parent_span_id for s in engine] == [client.span_id] * len(engine), engine
    answer = r.json()
    for span in (server, client):
        got = span.attributes
        assert got["gen_ai.operation.name"] == "chat"
        assert got["loragate.adapter.version"] == f"{ROUTE}@1"
        assert got["loragate.adapter.sha256"] == sha256
        assert got["gen_ai.response.model"] == f"{ROUTE}@1"
        assert got["gen_ai.response.id"] == answer["id"]
        assert got["gen_ai.request.max_tokens"] == 8
        assert got["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
        assert got["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
        assert got["gen_ai.response.finish_reasons"] == (answer["choices"][0]["finish_reason"],)
    assert server.attributes["gen_ai.request.model"] == ROUTE
    assert server.attributes["loragate.request_id"] == r.headers["x-request-id"]
