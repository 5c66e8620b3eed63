"""The inference API through the whole app (httpx ASGI client) in front of the fake engine."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.auth import Role
from service.engine.pool import ReplicaState
from service.keys import store as key_store
from service.routes.config import RouteSpec, sync_routes
from tests.conftest import (
    Harness,
    chat_body,
    free_port,
    insert_key,
    make_settings,
    running_gateway,
    served,
    wait_until,
)
from tests.fake_engine import MODEL, Behaviour, FakeEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def key_id(key: str) -> str:
    return key.split("-")[1]


def expect_error(harness: Harness, response: httpx.Response, status: int, code: str) -> dict:
    """The OpenAI envelope with ``code``; no traceback and no key anywhere in the body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    for key in harness.keys.values():
        assert key not in response.text and key.split("-", 2)[2] not in response.text
    return error


def sse_events(text: str) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, in order; every event ends with a blank line."""
    assert text.endswith("\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events), events
    return [block[len("data: ") :].encode() for block in events]


async def add_route(harness: Harness, name: str) -> None:
    gw = harness.app.state.gateway
    async with gw.sessions.begin() as session:
        await sync_routes(session, [RouteSpec(name=name)], gw.settings.engine_pools())
    await gw.snapshot.reload()


# --- success paths ------------------------------------------------------------------------


async def test_chat_non_streaming(gateway: Harness, engine: FakeEngine) -> None:
    r = await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["choices"][0]["message"]["content"] == "Hello from the fake"
    sent = engine.requests[-1]
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == 256  # the default when the client sends none
    record = (await gateway.records(1))[0]
    assert (record.route, record.target, record.status_code) == ("chat", MODEL, 200)
    assert record.error_code is None and record.stream is False
    assert (record.tokens_in, record.tokens_out, record.finish_reason) == (7, 4, "stop")
    assert record.replica == engine.url and record.attempts == 1
    assert record.key_id == key_id(gateway.keys[Role.APP])
    assert record.latency_ms > 0 and record.ttft_ms is None
    assert "hi" in (record.request_body or "")
    assert "Hello from the fake" in (record.response_body or "")


async def test_completions_non_streaming(gateway: Harness, engine: FakeEngine) -> None:
    body = {"model": "chat", "prompt": "Say hi", "max_tokens": 8}
    r = await gateway.client.post(COMPLETIONS, json=body, headers=gateway.auth())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "Hello from the fake"
    assert engine.requests[-1] == {"model": MODEL, "prompt": "Say hi", "max_tokens": 8}
    record = (await gateway.records(1))[0]
    assert record.endpoint == "completions" and record.status_code == 200


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_stream_relayed_and_usage_chunk_only_on_request(
    gateway: Harness, engine: FakeEngine, path: str, include_usage: bool
) -> None:
    body: dict[str, Any] = (
        chat_body(stream=True) if path == CHAT else {"model": "chat", "prompt": "x", "stream": True}
    )
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = await gateway.client.post(path, json=body, headers=gateway.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    # Upstream always asked for usage; the client sees it only if it asked.
    assert engine.requests[-1]["stream_options"] == {"include_usage": True}
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    else:
        assert usage_chunks == []
    # role chunk + one chunk per token (+ usage), in the engine's order
    content = [c for c in chunks if c["choices"]]
    assert len(content) == 5
    key = "delta" if path == CHAT else None
    pieces = [c["choices"][0][key]["content"] if key else c["choices"][0]["text"] for c in content]
    assert "".join(pieces) == "Hello from the fake"
    record = (await gateway.records(1))[0]
    assert record.stream is True and record.status_code == 200 and record.error_code is None
    assert (record.tokens_in, record.tokens_out, record.finish_reason) == (7, 4, "stop")
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert record.replica == engine.url
    assert record.response_body == "Hello from the fake"


async def test_stream_reaches_the_client_before_the_engine_finishes(
    gateway: Harness, engine: FakeEngine
) -> None:
    engine.then(Behaviour(token_delay_s=0.2))
    async with (
        served(gateway.app) as base,
        aiohttp.ClientSession() as http,
        http.post(base + CHAT, json=chat_body(stream=True), headers=gateway.auth()) as response,
    ):
        assert response.status == 200
        first_token = None
        async for line in response.content:
            if b'"Hello"' in line:
                first_token = line
                break
        assert first_token is not None
        # The first token was relayed while the engine was still generating the rest.
        assert engine.completed == 0
        rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    await wait_until(lambda: engine.completed == 1, what="the engine to finish")


# --- /v1/models ---------------------------------------------------------------------------


async def test_models_lists_only_routes_the_key_may_use(gateway: Harness) -> None:
    await add_route(gateway, "summarize")
    limited = await insert_key(gateway.url, Role.APP, ["chat"])

    async def model_ids(key: str) -> list[str]:
        r = await gateway.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "list"
        return [m["id"] for m in r.json()["data"]]

    assert await model_ids(gateway.keys[Role.APP]) == ["chat", "summarize"]
    assert await model_ids(gateway.keys[Role.ADMIN]) == ["chat", "summarize"]
    assert await model_ids(limited) == ["chat"]
    expect_error(gateway, await gateway.client.get("/v1/models"), 401, "missing_api_key")
    r = await gateway.client.get("/v1/models", headers=gateway.auth(Role.REVIEWER))
    expect_error(gateway, r, 403, "permission_denied")


async def test_one_model_is_retrieved_only_by_keys_that_may_use_it(gateway: Harness) -> None:
    await add_route(gateway, "summarize")
    limited = {"Authorization": f"Bearer {await insert_key(gateway.url, Role.APP, ['chat'])}"}
    r = await gateway.client.get("/v1/models/summarize", headers=gateway.auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "summarize", "object": "model", "created": 0, "owned_by": "loragate"}
    assert (await gateway.client.get("/v1/models/chat", headers=limited)).json()["id"] == "chat"
    hidden = await gateway.client.get("/v1/models/summarize", headers=limited)
    unknown = await gateway.client.get("/v1/models/nope", headers=limited)
    for r in (hidden, unknown):
        error = expect_error(gateway, r, 404, "model_not_found")
        assert error["param"] == "model"
    # Not permitted reads exactly like unknown: the key learns nothing of other routes.
    assert (
        hidden.json()["error"]["message"].replace("summarize", "nope")
        == (unknown.json()["error"]["message"])
    )
    expect_error(gateway, await gateway.client.get("/v1/models/chat"), 401, "missing_api_key")
    r = await gateway.client.get("/v1/models/chat", headers=gateway.auth(Role.REVIEWER))
    expect_error(gateway, r, 403, "permission_denied")
    paths = (await gateway.client.get("/openapi.json")).json()["paths"]
    assert "404" in paths["/v1/models/{model}"]["get"]["responses"]


# --- errors: envelope + record ------------------------------------------------------------


def deep_schema_body(levels: int = 1000) -> bytes:
    """Written by hand: orjson (and so the gateway) cannot encode past 254 levels."""
    schema = '{"type": "array", "items": ' * levels + '{"type": "string"}' + "}" * levels
    response_format = '{"type": "json_schema", "json_schema": {"name": "a", "schema": %s}}'
    body = orjson.dumps(chat_body())[:-1] + b', "response_format": '
    return body + (response_format % schema).encode() + b"}"


RequestKw = Callable[[Harness], dict[str, Any]]
ERROR_CASES: list[tuple[str, RequestKw, int, str, Role | None]] = [
    # (id, request kwargs, status, code, role of the key the record names)
    ("unknown_route", lambda h: {"json": chat_body("nope"), "headers": h.auth()},
     404, "model_not_found", Role.APP),
    ("missing_key", lambda h: {"json": chat_body()}, 401, "missing_api_key", None),
    ("not_bearer", lambda h: {"json": chat_body(), "headers": {"Authorization": "Basic abc"}},
     401, "missing_api_key", None),
    ("wrong_secret", lambda h: {"json": chat_body(), "headers": {
        "Authorization": f"Bearer lg-{key_id(h.keys[Role.APP])}-wrongsecret"}},
     401, "invalid_api_key", None),
    ("unknown_key", lambda h: {"json": chat_body(), "headers": {"Authorization": "Bearer sk-1"}},
     401, "invalid_api_key", None),
    ("sre_role", lambda h: {"json": chat_body(), "headers": h.auth(Role.SRE)},
     403, "permission_denied", Role.SRE),
    ("reviewer_role", lambda h: {"json": chat_body(), "headers": h.auth(Role.REVIEWER)},
     403, "permission_denied", Role.REVIEWER),
    ("max_tokens_over_cap", lambda h: {"json": chat_body(max_tokens=5000), "headers": h.auth()},
     400, "value_out_of_range", Role.APP),
    ("n_over_max_choices", lambda h: {"json": chat_body(n=5), "headers": h.auth()},
     400, "value_out_of_range", Role.APP),
    ("guided_json", lambda h: {"json": chat_body(guided_json={"type": "object"}),
                               "headers": h.auth()}, 400, "legacy_guided_field", Role.APP),
    ("unknown_field", lambda h: {"json": chat_body(best_of=3), "headers": h.auth()},
     400, "unsupported_parameter", Role.APP),
    ("malformed_json", lambda h: {"content": b'{"model": "chat", ', "headers": h.auth()},
     400, "malformed_json", Role.APP),
    ("schema_1000_deep", lambda h: {"content": deep_schema_body(),
                                    "headers": h.auth()}, 400, "value_out_of_range", Role.APP),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "status", "code", "key_role"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_error_cases_have_envelope_and_record(
    gateway: Harness,
    engine: FakeEngine,
    make: RequestKw,
    status: int,
    code: str,
    key_role: Role | None,
) -> None:
    r = await gateway.client.post(CHAT, **make(gateway))
    expect_error(gateway, r, status, code)
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert engine.requests == []
    if status == 401:
        # No key of ours: counted, not recorded (a flood of made-up keys costs no rows).
        ok = await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())
        assert ok.status_code == 200
        records = await gateway.records(1)
        assert [(x.status_code, x.id) for x in records] == [(200, ok.headers["x-request-id"])]
        metrics = await gateway.metrics()
        assert f'loragate_unauthenticated_requests_total{{code="{code}"}} 1.0' in metrics
        return
    record = (await gateway.records(1))[0]
    assert (record.status_code, record.error_code) == (status, code)
    assert record.key_id == (key_id(gateway.keys[key_role]) if key_role else None)


async def test_revoked_key_is_refused(gateway: Harness) -> None:
    key = await insert_key(gateway.url, Role.APP)
    assert (await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())).is_success
    headers = {"Authorization": f"Bearer {key}"}
    assert (await gateway.client.post(CHAT, json=chat_body(), headers=headers)).status_code == 200
    gw = gateway.app.state.gateway
    async with gw.sessions.begin() as session:
        assert await key_store.revoke_key(session, key_id(key), datetime.now(UTC))
    await gw.snapshot.reload()
    r = await gateway.client.post(CHAT, json=chat_body(), headers=headers)
    expect_error(gateway, r, 401, "invalid_api_key")
    assert key not in r.text
    records = await gateway.records(2)
    assert [x.status_code for x in records] == [200, 200]  # a refused key gets no record


async def test_key_limited_to_another_route_is_refused(
    gateway: Harness, engine: FakeEngine
) -> None:
    await add_route(gateway, "summarize")
    key = await insert_key(gateway.url, Role.APP, ["summarize"])
    r = await gateway.client.post(
        CHAT, json=chat_body(), headers={"Authorization": f"Bearer {key}"}
    )
    # Not permitted reads exactly like a route that does not exist (issue 11): a key limited
    # to some routes learns nothing of the others.
    limited = {"Authorization": f"Bearer {key}"}
    unknown = await gateway.client.post(CHAT, json=chat_body("no-such-route"), headers=limited)
    for response in (r, unknown):
        error = expect_error(gateway, response, 404, "model_not_found")
        assert error["param"] == "model"
    hidden_message = r.json()["error"]["message"].replace("'chat'", "'no-such-route'")
    assert hidden_message == unknown.json()["error"]["message"]
    assert engine.requests == []
    record = (await gateway.records(1))[0]
    assert (record.status_code, record.error_code, record.key_id) == (
        404, "model_not_found", key_id(key),
    )  # fmt: skip


async def test_oversized_body_is_refused(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    settings = make_settings(sqlite_url, tmp_path, [engine.url], max_body_bytes=300)
    async with running_gateway(settings) as harness:
        big = chat_body(messages=[{"role": "user", "content": "x" * 400}])
        r = await harness.client.post(CHAT, json=big, headers=harness.auth())
        expect_error(harness, r, 413, "body_too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted while read
            for _ in range(10):
                yield b" " * 100
            yield orjson.dumps(chat_body())

        r = await harness.client.post(CHAT, content=chunked(), headers=harness.auth())
        expect_error(harness, r, 413, "body_too_large")
        small = await harness.client.post(CHAT, json=chat_body(), headers=harness.auth())
        assert small.status_code == 200
        records = await harness.records(3)
    assert [(x.status_code, x.error_code) for x in records] == [
        (413, "body_too_large"), (413, "body_too_large"), (200, None),
    ]  # fmt: skip
    assert len(engine.requests) == 1


async def test_internal_failure_hides_details(
    gateway: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(_: bytes) -> dict[str, object]:
        raise RuntimeError(f"secret detail /work/main/service {gateway.keys[Role.APP]}")

    monkeypatch.setattr("service.gateway.pipeline.parse_reply", explode)
    r = await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())
    error = expect_error(gateway, r, 500, "internal_error")
    assert "secret" not in r.text and "/work" not in r.text
    assert error["type"] == "server_error"
    record = (await gateway.records(1))[0]
    assert (record.status_code, record.error_code) == (500, "internal_error")


# --- records, metrics, health, tracing ----------------------------------------------------


async def test_redacted_bodies_are_not_stored(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    settings = make_settings(sqlite_url, tmp_path, [engine.url], redact_bodies=True)
    async with running_gateway(settings) as harness:
        ok = await harness.client.post(CHAT, json=chat_body(), headers=harness.auth())
        streamed = await harness.client.post(
            CHAT, json=chat_body(stream=True), headers=harness.auth()
        )
        assert ok.status_code == streamed.status_code == 200
        records = await harness.records(2)
    assert len(records) == 2
    for record in records:
        assert record.request_body is None and record.response_body is None
        assert record.tokens_out == 4  # everything else is still recorded


async def test_a_refused_request_keeps_only_the_start_of_its_body(
    gateway: Harness, engine: FakeEngine
) -> None:
    """A 16 KiB schema the gateway refuses, then the same size accepted: only the answered
    request's record keeps its whole body."""
    schema = {"anyOf": [{"type": "string", "maxLength": n} for n in range(700)]}
    refused = chat_body(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    r = await gateway.client.post(CHAT, json=refused, headers=gateway.auth())
    assert r.status_code == 400, r.text
    padded = chat_body(messages=[{"role": "user", "content": "x" * 16_000}])
    assert (await gateway.client.post(CHAT, json=padded, headers=gateway.auth())).status_code == 200
    first, second = sorted(await gateway.records(2), key=lambda record: record.created_at)
    assert first.status_code == 400 and second.status_code == 200
    assert first.request_body is not None and len(first.request_body) < 1200
    assert first.request_body.startswith('{"model":') and '"anyOf":' in first.request_body
    assert "refused before the engine" in first.request_body
    assert second.request_body is not None and "x" * 16_000 in second.request_body


async def test_metrics_count_requests_by_route_and_status(gateway: Harness) -> None:
    assert (await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())).is_success
    r = await gateway.client.post(CHAT, json=chat_body("no-such-route"), headers=gateway.auth())
    assert r.status_code == 404
    # The labels name replica addresses: the page needs an sre or admin key (issue 11).
    expect_error(gateway, await gateway.client.get("/metrics"), 401, "missing_api_key")
    r = await gateway.client.get("/metrics", headers=gateway.auth(Role.APP))
    expect_error(gateway, r, 403, "permission_denied")
    r = await gateway.client.get("/metrics", headers=gateway.auth(Role.ADMIN))
    assert r.status_code == 200
    samples = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "loragate_requests_total"
    }
    assert samples == {("chat", "200"): 1.0, ("-", "404"): 1.0}
    assert "no-such-route" not in r.text
    assert key_id(gateway.keys[Role.APP]) not in r.text


async def test_framework_errors_say_what_happened_and_reflect_no_host(gateway: Harness) -> None:
    unknown = await gateway.client.get("/v1/nothing-here", headers=gateway.auth())
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"  # not a model that was not found
    wrong_method = await gateway.client.delete("/v1/models", headers=gateway.auth())
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert wrong_method.json()["error"]["code"] == "http_error"
    # No redirect built from the client's Host header.
    slash = await gateway.client.get(
        "/v1/models/", headers={**gateway.auth(), "Host": "evil.example"}
    )
    assert slash.status_code == 404 and "location" not in slash.headers


async def test_the_openapi_description_says_400_for_invalid_requests(gateway: Harness) -> None:
    spec = (await gateway.client.get("/openapi.json")).text
    assert "Validation Error" not in spec and "HTTPValidationError" not in spec
    claim = json.loads(spec)["paths"]["/v1/reviews/claim"]["post"]["responses"]
    assert "invalid_request" in claim["400"]["description"]
    bad = await gateway.client.post(
        "/v1/reviews/claim", json={"lease_s": "long"}, headers=gateway.auth(Role.REVIEWER)
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


async def test_healthz(gateway: Harness) -> None:
    r = await gateway.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_once_a_probe_passed(gateway: Harness, engine: FakeEngine) -> None:
    async def ready() -> bool:
        return (await gateway.client.get("/readyz")).status_code == 200

    await wait_until(ready, what="readyz 200")
    assert engine.probes >= 1
    checks = (await gateway.client.get("/readyz")).json()["checks"]
    assert checks["database"] == "ok"
    assert checks["engines"]["default"]["healthy_replicas"] == 1


async def test_readyz_503_when_the_only_engine_is_down(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO, logger="service.engine.pool")
    async with running_gateway(make_settings(sqlite_url, tmp_path, [dead])) as harness:
        replica = harness.app.state.gateway.engines.pools["default"].replicas[0]
        await wait_until(lambda: replica.state is ReplicaState.EJECTED, what="failed probe")
        r = await harness.client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready"
    pool = body["checks"]["engines"]["default"]
    assert pool["healthy_replicas"] == 0
    # It never answered: starting (vLLM loading, the model being prepared), not "ejected".
    assert pool["replicas"][0]["state"] == "starting"
    assert "probe failed" in pool["replicas"][0]["last_error"]
    said = [r.getMessage() for r in caplog.records if r.name == "service.engine.pool"]
    assert any(f"replica {dead} of pool default is starting" in m for m in said), said
    assert not any("ejecting" in m for m in said), said


async def test_every_answer_names_its_request_record(gateway: Harness) -> None:
    ok = await gateway.client.post(CHAT, json=chat_body(), headers=gateway.auth())
    streamed = await gateway.client.post(CHAT, json=chat_body(stream=True), headers=gateway.auth())
    refused = await gateway.client.post(CHAT, json=chat_body("nope"), headers=gateway.auth())
    ids = [r.headers["x-request-id"] for r in (ok, streamed, refused)]
    records = await gateway.records(3)
    assert sorted(ids) == sorted(r.id for r in records)
    by_id = {r.id: r for r in records}
    assert (by_id[ids[1]].stream, by_id[ids[2]].status_code) == (True, 404)
