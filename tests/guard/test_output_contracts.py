"""Routes with an output contract, against the fake engine: the schema is sent to the engine,
answers are validated and scored from logprobs, invalid ones retried, low-confidence ones
escalated to the review queue in the same transaction as their request record."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from adapters.dataset import example_data
from service.db.models import RequestRecord, ReviewItem
from service.routes.config import RoutesConfigError, load_routes_file
from tests.conftest import Harness, chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine

CHAT = "/v1/chat/completions"
ROUTE = "triage"
TOKENS = ['{"', "category", '":"', "billing", '","', "urgency", '":', "2", ',"', "next_action",
          '":"', "Refund", " the", " charge", '"}']  # fmt: skip
SURE = [0.0] * len(TOKENS)


def unsure_urgency() -> list[float]:
    logprobs = list(SURE)
    logprobs[TOKENS.index("2")] = -2.0
    return logprobs


def unsure_next_action() -> list[float]:
    """What real models do with a free-text field: its words are never sure."""
    logprobs = list(SURE)
    logprobs[TOKENS.index("Refund")] = -1.5
    logprobs[TOKENS.index(" charge")] = -2.5
    return logprobs


def routes_file(tmp_path: Path, review: dict[str, Any] | None = None) -> Path:
    schema_path = tmp_path / "tickets.schema.json"
    schema_path.write_text(example_data("tickets.schema.json").read_text())
    route: dict[str, Any] = {"name": ROUTE, "output_schema": "tickets.schema.json"}
    if review is not None:
        route["review"] = review
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, route]}))
    return path


@pytest.fixture
async def gw(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    review = {"escalate": "below", "threshold": 0.5, "invalid": "escalate", "retry_invalid": 1}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    async with running_gateway(settings) as harness:
        yield harness


async def ask(h: Harness, **extra: Any) -> Any:
    return await h.client.post(CHAT, json=chat_body(ROUTE, **extra), headers=h.auth())


async def ask_and_approve_held(h: Harness) -> None:
    """Ask a hold route, then claim and approve the held answer as a reviewer."""
    from service.auth import Role

    held = (await ask(h)).json()
    await record_of(h, held["request_id"])
    reviewer = h.auth(Role.REVIEWER)
    claim = (await h.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
    url = f"/v1/reviews/items/{held['review_id']}/decision"
    decision = {"token": claim["token"], "kind": "approve"}
    assert (await h.client.post(url, json=decision, headers=reviewer)).status_code == 200


async def record_of(h: Harness, request_id: str) -> RequestRecord:
    async def written() -> RequestRecord | None:
        async with h.app.state.gateway.sessions() as session:
            return await session.get(RequestRecord, request_id)

    await wait_until(written, what="the request record")
    found = await written()
    assert found is not None
    return found


async def review_items(h: Harness) -> list[ReviewItem]:
    async with h.app.state.gateway.sessions() as session:
        return list((await session.scalars(select(ReviewItem))).all())


async def test_the_schema_goes_to_the_engine_and_a_sure_answer_passes(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    r = await ask(gw)
    assert r.status_code == 200, r.text
    sent = engine.requests[-1]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == [
        "category", "urgency", "next_action",
    ]  # fmt: skip
    assert sent["logprobs"] is True
    body = r.json()
    assert body["choices"][0]["logprobs"] is None  # asked for by the gateway, not the client
    meta = body["loragate"]
    assert (meta["schema_valid"], meta["confidence"], meta["review_id"]) == (True, 1.0, None)
    assert set(meta["field_confidence"]) == {"/category", "/urgency", "/next_action"}
    assert meta["confidence_fields"] == ["/category", "/urgency"]
    row = await record_of(gw, r.headers["x-request-id"])
    assert (row.schema_valid, row.confidence, row.escalated) == (True, 1.0, False)
    assert await review_items(gw) == []


async def test_a_low_confidence_answer_is_flagged_and_queued_with_its_record(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_urgency())
    r = await ask(gw, logprobs=True)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["logprobs"]["content"][0]["token"] == '{"'  # the client asked
    meta = body["loragate"]
    assert meta["confidence"] == pytest.approx(math.exp(-2.0))
    assert meta["field_confidence"]["/urgency"] == pytest.approx(math.exp(-2.0))
    assert meta["field_confidence"]["/category"] == 1.0
    row = await record_of(gw, r.headers["x-request-id"])
    assert row.escalated is True
    (item,) = await review_items(gw)
    assert (item.id, item.request_id, item.reason) == (meta["review_id"], row.id, "low_confidence")
    assert item.state == "pending" and json.loads(item.answer)["category"] == "billing"
    assert item.field_confidence is not None and item.field_confidence["/category"] == 1.0
    metrics = await gw.metrics()
    assert 'loragate_escalations_total{reason="low_confidence",route="triage"} 1.0' in metrics
    assert 'loragate_answer_confidence_count{route="triage",target="fake-base"} 1.0' in metrics


async def test_an_unsure_free_text_field_does_not_send_a_sure_answer_to_review(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_next_action())
    r = await ask(gw)
    assert r.status_code == 200
    meta = r.json()["loragate"]
    assert meta["field_confidence"]["/next_action"] == pytest.approx(math.exp(-2.5))
    assert (meta["confidence"], meta["confidence_fields"]) == (1.0, ["/category", "/urgency"])
    assert meta["review_id"] is None
    row = await record_of(gw, r.headers["x-request-id"])
    assert (row.confidence, row.escalated) == (1.0, False)
    assert await review_items(gw) == []


async def test_a_route_can_name_the_fields_its_confidence_comes_from(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    review = {"escalate": "below", "threshold": 0.5, "confidence_fields": ["/next_action"]}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_next_action())
    async with running_gateway(settings) as h:
        r = await ask(h)
        assert r.status_code == 200
        meta = r.json()["loragate"]
        assert meta["confidence"] == pytest.approx(math.exp(-2.5))
        assert meta["confidence_fields"] == ["/next_action"]
        row = await record_of(h, r.headers["x-request-id"])
        assert row.escalated is True
        (item,) = await review_items(h)
        assert (item.id, item.reason) == (meta["review_id"], "low_confidence")


async def test_an_invalid_answer_is_asked_again_once(gw: Harness, engine: FakeEngine) -> None:
    engine.then(Behaviour(tokens=["Sure", "!"]))
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    r = await ask(gw)
    assert r.status_code == 200
    assert r.json()["loragate"]["schema_valid"] is True
    assert len(engine.requests) == 2


async def test_an_answer_still_invalid_is_escalated_first_in_the_queue(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=['{"category":', '"billing"}'])
    r = await ask(gw)
    assert r.status_code == 200
    meta = r.json()["loragate"]
    assert meta["schema_valid"] is False and "urgency" in " ".join(meta["schema_errors"])
    row = await record_of(gw, r.headers["x-request-id"])
    assert (row.schema_valid, row.escalated) == (False, True)
    (item,) = await review_items(gw)
    assert (item.reason, item.priority) == ("invalid", 1)


async def test_a_route_that_refuses_invalid_answers_answers_422(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    review = {"invalid": "refuse", "retry_invalid": 0, "escalate": "never"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    engine.default = Behaviour(tokens=["not", " json"])
    async with running_gateway(settings) as h:
        r = await ask(h)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "output_schema_violation"
        assert len(engine.requests) == 1
        row = await record_of(h, r.headers["x-request-id"])
        assert (row.status_code, row.schema_valid) == (422, False)


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"response_format": {"type": "json_object"}}, "response_format")],
)  # fmt: skip
async def test_what_a_contract_route_does_not_take(
    gw: Harness, engine: FakeEngine, extra: dict[str, Any], param: str
) -> None:
    r = await ask(gw, **extra)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert engine.requests == []


async def test_routes_without_a_contract_are_untouched(gw: Harness, engine: FakeEngine) -> None:
    r = await gw.client.post(CHAT, json=chat_body("chat"), headers=gw.auth())
    assert r.status_code == 200 and "loragate" not in r.json()
    assert "response_format" not in engine.requests[-1] and "logprobs" not in engine.requests[-1]


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, "ref"),
        ({"type": "string", "pattern": "(a+)+b"}, "pattern"),
        ({"type": 12}, "meta-schema"),
    ],
)
def test_hostile_route_schemas_are_refused_when_routes_load(
    tmp_path: Path, schema: dict[str, Any], fragment: str
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"name": "x", "output_schema": schema}]}))
    with pytest.raises(RoutesConfigError, match=fragment):
        load_routes_file(path)


def test_a_schema_1000_levels_deep_is_refused_when_routes_load(tmp_path: Path) -> None:
    text = '{"type": "array", "items": ' * 1000 + '{"type": "string"}' + "}" * 1000
    (tmp_path / "deep.json").write_text(text)
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"name": "x", "output_schema": "deep.json"}]}))
    with pytest.raises(RoutesConfigError, match="depth"):
        load_routes_file(path)


def test_a_review_policy_is_checked_when_routes_load(tmp_path: Path) -> None:
    path = routes_file(tmp_path, {"escalate": "sometimes"})
    with pytest.raises(RoutesConfigError, match="escalate"):
        load_routes_file(path)


@pytest.mark.parametrize(
    ("review", "fragment"),
    [
        ({"confidence_fields": ["/categroy"]}, "names no field"),
        ({"confidence_fields": ["category"]}, "confidence_fields"),  # not a JSON pointer
        ({"confidence_fields": []}, "confidence_fields"),
    ],
)
def test_confidence_fields_are_checked_against_the_schema_when_routes_load(
    tmp_path: Path, review: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(RoutesConfigError, match=fragment):
        load_routes_file(routes_file(tmp_path, review))


def test_confidence_fields_need_an_output_schema(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    route = {"name": "free", "review": {"confidence_fields": ["/category"]}}
    path.write_text(yaml.safe_dump({"routes": [route]}))
    with pytest.raises(RoutesConfigError, match="needs an output schema"):
        load_routes_file(path)


def test_a_confidence_annotation_must_be_a_boolean(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string",
              "x-loragate-confidence": "yes"}}}  # fmt: skip
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"name": "x", "output_schema": schema}]}))
    with pytest.raises(RoutesConfigError, match="annotation"):
        load_routes_file(path)


async def test_a_correction_that_breaks_the_schema_is_refused(
    gw: Harness, engine: FakeEngine
) -> None:
    from service.auth import Role

    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_urgency())
    r = await ask(gw)
    await record_of(gw, r.headers["x-request-id"])
    reviewer = gw.auth(Role.REVIEWER)
    claim = (await gw.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
    item_id, token = claim["item"]["id"], claim["token"]
    url = f"/v1/reviews/items/{item_id}/decision"
    broken = {"token": token, "kind": "correct", "corrected_answer": '{"category": "billing"}'}
    refused = await gw.client.post(url, json=broken, headers=reviewer)
    assert refused.status_code == 422 and "urgency" in refused.json()["error"]["message"]
    fixed = '{"category":"billing","urgency":3,"next_action":"Refund the charge"}'
    ok = await gw.client.post(
        url, json={"token": token, "kind": "correct", "corrected_answer": fixed}, headers=reviewer
    )
    assert ok.status_code == 200, ok.text


async def test_queue_gauges_follow_the_database(gw: Harness, engine: FakeEngine) -> None:
    from service.auth import Role
    from service.clock import now
    from service.review.stats import ReviewStats

    gateway = gw.app.state.gateway
    stats = ReviewStats(gateway.sessions, gateway.metrics, now, 3600)
    engine.default = Behaviour(tokens=TOKENS, logprobs=unsure_urgency())
    for _ in range(2):
        r = await ask(gw)
        await record_of(gw, r.headers["x-request-id"])
    await stats.refresh()
    metrics = await gw.metrics()
    assert 'loragate_review_queue_depth{route="triage"} 2.0' in metrics
    reviewer = gw.auth(Role.REVIEWER)
    for _ in range(2):
        claim = (await gw.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
        decision = {"token": claim["token"], "kind": "approve"}
        url = f"/v1/reviews/items/{claim['item']['id']}/decision"
        assert (await gw.client.post(url, json=decision, headers=reviewer)).status_code == 200
    await stats.refresh()
    metrics = await gw.metrics()
    assert 'loragate_review_queue_depth{route="triage"} 0.0' in metrics
    assert 'loragate_review_decisions{kind="approve",target="fake-base"} 2.0' in metrics
    assert 'loragate_review_approved_unchanged_share{target="fake-base"} 1.0' in metrics


async def test_a_held_answer_is_read_back_and_posted_once_decided(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    from aiohttp import web

    from service.auth import Role

    posted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/review", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    review = {"escalate": "always", "delivery": "hold", "callback_url": f"{base}/hooks/review"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review),
        review_callback_allowlist=[f"{base}/hooks/"],
    )  # fmt: skip
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    try:
        async with running_gateway(settings) as h:
            r = await ask(h)
            assert r.status_code == 202
            held = r.json()
            assert held["status"] == "pending" and "choices" not in held
            row = await record_of(h, held["request_id"])
            assert row.status_code == 202 and row.response_body is not None
            assert json.loads(row.response_body)["choices"][0]["message"]["content"]
            result_url = held["result_url"]
            assert (await h.client.get(result_url, headers=h.auth())).json()["status"] == "pending"
            other = await h.client.get(result_url, headers=h.auth(Role.SRE))
            assert other.status_code == 403
            reviewer = h.auth(Role.REVIEWER)
            claim = (await h.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
            fixed = '{"category":"account","urgency":1,"next_action":"Reset the password"}'
            decision = {"token": claim["token"], "kind": "correct", "corrected_answer": fixed}
            url = f"/v1/reviews/items/{held['review_id']}/decision"
            assert (await h.client.post(url, json=decision, headers=reviewer)).status_code == 200
            result = (await h.client.get(result_url, headers=h.auth())).json()
            assert (result["status"], result["answer"]) == ("corrected", fixed)
            await wait_until(lambda: posted, what="the callback")
            assert posted == [result]
    finally:
        await runner.cleanup()


async def test_a_callback_outside_the_allow_list_is_not_sent(
    db_url: str, tmp_path: Path, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:

    review = {"escalate": "always", "delivery": "hold", "callback_url": "http://10.0.0.1/x"}
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review)
    )
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    async with running_gateway(settings) as h:
        await ask_and_approve_held(h)
        await wait_until(lambda: "not in the allow-list" in caplog.text, what="the refusal")


async def test_a_route_reviewed_without_a_schema_scores_the_sequence(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    path = tmp_path / "routes.yaml"
    route = {"name": "free", "review": {"escalate": "below", "threshold": 0.5}}
    path.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, route]}))
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=path)
    engine.default = Behaviour(tokens=["Refund", " it", "."], logprobs=[-0.1, -2.0, -0.3])
    async with running_gateway(settings) as h:
        r = await h.client.post(
            CHAT, json=chat_body("free", response_format={"type": "text"}), headers=h.auth()
        )
        assert r.status_code == 200, r.text
        sent = engine.requests[-1]
        assert sent["logprobs"] is True and sent["response_format"] == {"type": "text"}
        meta = r.json()["loragate"]
        assert meta["schema_valid"] is None and meta["field_confidence"] == {}
        assert meta["confidence_fields"] == []
        assert meta["confidence"] == pytest.approx(math.exp((-0.1 - 2.0 - 0.3) / 3))
        assert meta["review_id"] is not None  # 0.45 is below 0.5
        row = await record_of(h, r.headers["x-request-id"])
        assert (row.schema_valid, row.escalated) == (None, True)
