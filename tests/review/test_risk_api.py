"""Review by risk through the gateway and the reviewer API: tiers on routes, the two-reviewer
flow with adjudication, reviewer keys limited to tiers and routes, QA samples. Every test runs
on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from adapters.dataset import example_data
from service.auth import Role
from service.db.models import ApiKey, ReviewItem
from service.keys.credentials import generate_key
from service.routes.config import RoutesConfigError, load_routes_file
from tests.conftest import Harness, chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine
from tests.guard.test_output_contracts import SURE, TOKENS, record_of

CHAT = "/v1/chat/completions"
ITEMS = "/v1/reviews/items"


def routes_file(tmp_path: Path) -> Path:
    (tmp_path / "tickets.schema.json").write_text(example_data("tickets.schema.json").read_text())
    schema = "tickets.schema.json"
    routes = [
        {"name": "chat"},
        {"name": "crit", "output_schema": schema, "risk": "critical"},
        {"name": "spot", "output_schema": schema, "risk": "low", "review": {"qa_rate": 1.0}},
        {"name": "plain", "output_schema": schema},
    ]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": routes}))
    return path


@pytest.fixture
async def gw(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    async with running_gateway(settings) as harness:
        yield harness


async def add_key(h: Harness, role: Role, **limits: Any) -> dict[str, str]:
    new = generate_key()
    async with h.app.state.gateway.sessions.begin() as session:
        session.add(
            ApiKey(
                id=new.key_id,
                name="limited",
                role=role.value,
                secret_hash=new.secret_hash,
                created_at=datetime.now(UTC),
                **limits,
            )
        )
    return {"Authorization": f"Bearer {new.plaintext}"}


async def claim(h: Harness, headers: dict[str, str], **body: Any) -> dict[str, Any] | None:
    response = await h.client.post("/v1/reviews/claim", json=body, headers=headers)
    if response.status_code == 204:
        return None
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def decide(
    h: Harness, headers: dict[str, str], claimed: dict[str, Any], kind: str, **extra: Any
) -> dict[str, Any]:
    item_id = claimed["item"]["id"]
    body = {"token": claimed["token"], "kind": kind, **extra}
    response = await h.client.post(f"{ITEMS}/{item_id}/decision", json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_critical_answer_needs_two_reviewers_and_an_adjudicator_when_they_differ(
    gw: Harness,
) -> None:
    h = gw
    held = await h.client.post(CHAT, json=chat_body("crit"), headers=h.auth())
    assert held.status_code == 202, held.text
    review_id = held.json()["review_id"]
    await record_of(h, held.json()["request_id"])
    ann = h.auth(Role.REVIEWER)
    bob = await add_key(h, Role.REVIEWER)

    first = await claim(h, ann)
    assert first is not None and first["item"]["risk"] == "critical"
    assert first["item"]["reviews_needed"] == 2 and first["item"]["votes"] == 0
    assert (await decide(h, ann, first, "approve"))["outcome"] == "voted"
    assert await claim(h, ann) is None  # not the same reviewer twice

    # The second reviewer sees that a decision exists, never what it was.
    seen = (await h.client.get(f"{ITEMS}/{review_id}", headers=bob)).json()
    assert seen["votes"] == 1 and seen["reviews"] == [] and seen["state"] == "pending"
    assert [e["kind"] for e in seen["history"]] == ["vote"]
    assert seen["history"][0]["payload"] == {"seq": 1}
    result = await h.client.get(f"/v1/review-results/{review_id}", headers=h.auth())
    assert result.json()["status"] == "pending"

    second = await claim(h, bob)
    assert second is not None and second["item"]["id"] == review_id
    outcome = await decide(h, bob, second, "reject", reason="wrong urgency")
    assert outcome["outcome"] == "disputed"

    assert await claim(h, await add_key(h, Role.REVIEWER)) is None  # not for reviewers
    lead = h.auth(Role.LEAD)
    adjudication = await claim(h, lead)
    assert adjudication is not None and adjudication["item"]["state"] == "claimed"
    detail = (await h.client.get(f"{ITEMS}/{review_id}", headers=lead)).json()
    assert [(v["seq"], v["kind"]) for v in detail["reviews"]] == [(1, "approve"), (2, "reject")]
    final = await decide(h, lead, adjudication, "approve")
    assert final["outcome"] == "decided"
    result = await h.client.get(f"/v1/review-results/{review_id}", headers=h.auth())
    assert result.json()["status"] == "approved"

    stats = (await h.client.get("/v1/reviews/stats", headers=lead)).json()
    crit = stats["agreement"]["crit"]
    assert crit["items"] == 1 and crit["observed"] == 0.0 and crit["kappa"] == 0.0
    assert len(stats["pairs"]) == 1


async def test_reviewer_keys_limited_to_tiers_and_routes(gw: Harness) -> None:
    h = gw
    held = await h.client.post(CHAT, json=chat_body("crit"), headers=h.auth())
    review_id = held.json()["review_id"]
    await record_of(h, held.json()["request_id"])
    only_low = await add_key(h, Role.REVIEWER, allowed_tiers=["low"])
    only_plain = await add_key(h, Role.REVIEWER, allowed_routes=["plain"])
    for headers in (only_low, only_plain):
        assert await claim(h, headers) is None
        assert (await h.client.get(ITEMS, headers=headers)).json() == []
        hidden = await h.client.get(f"{ITEMS}/{review_id}", headers=headers)
        assert hidden.status_code == 404
    critical = await add_key(h, Role.REVIEWER, allowed_tiers=["critical"])
    listed = (await h.client.get(f"{ITEMS}?tier=critical", headers=critical)).json()
    assert [i["id"] for i in listed] == [review_id]
    bad = await h.client.get(f"{ITEMS}?tier=extreme", headers=critical)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_a_qa_sample_is_queued_without_the_client_noticing(gw: Harness) -> None:
    h = gw
    answer = await h.client.post(CHAT, json=chat_body("spot"), headers=h.auth())
    assert answer.status_code == 200
    body = answer.json()
    assert body["loragate"]["review_id"] is None
    record = await record_of(h, answer.headers["x-request-id"])
    assert record.escalated is False

    async def queued() -> list[ReviewItem]:
        async with h.app.state.gateway.sessions() as session:
            return list((await session.scalars(select(ReviewItem))).all())

    await wait_until(queued, what="the QA sample")
    (item,) = await queued()
    assert (item.reason, item.priority, item.risk) == ("qa_sample", -1, "low")
    plain = await h.client.post(CHAT, json=chat_body("plain"), headers=h.auth())
    assert plain.status_code == 200 and plain.json()["loragate"]["review_id"] is None
    reviewer = h.auth(Role.REVIEWER)
    claimed = await claim(h, reviewer, reason="qa_sample")
    assert claimed is not None
    fixed = '{"category": "technical", "urgency": 1, "next_action": "Reset"}'
    await decide(h, reviewer, claimed, "correct", corrected_answer=fixed)
    stats = (await h.client.get("/v1/reviews/stats", headers=reviewer)).json()
    qa = stats["qa"]["spot"]
    assert (qa["sampled"], qa["decided"], qa["changed"], qa["changed_share"]) == (1, 1, 1, 1.0)
    assert 0 < qa["low"] < 1 and qa["high"] == 1.0


def test_a_route_tier_is_checked_when_routes_load(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    for route, message in (
        ({"name": "r", "risk": "extreme"}, "risk"),
        ({"name": "r", "risk": "critical", "review": {"agreement_rate": 0.5}}, "agreement_rate"),
        ({"name": "r", "review": {"risk": "high"}}, "declare 'risk' on the route"),
        ({"name": "r", "review": {"qa_rate": 2}}, "qa_rate"),
    ):
        path.write_text(yaml.safe_dump({"routes": [route]}))
        with pytest.raises(RoutesConfigError, match=message):
            load_routes_file(path)


async def test_the_admin_routes_api_shows_each_route_tier(gw: Harness) -> None:
    r = await gw.client.get("/v1/admin/routes", headers=gw.auth(Role.SRE))
    assert r.status_code == 200, r.text
    tiers = {route["name"]: route["risk"] for route in r.json()}
    assert tiers == {"chat": "medium", "crit": "critical", "spot": "low", "plain": "medium"}
    schema = (await gw.client.get("/openapi.json")).json()["components"]["schemas"]["RouteOut"]
    assert "risk tier" in schema["properties"]["risk"]["description"]


async def _decided_crit_and_spot(h: Harness) -> None:
    """A critical item approved by two reviewers, and a low-tier QA sample approved."""
    held = await h.client.post(CHAT, json=chat_body("crit"), headers=h.auth())
    assert held.status_code == 202, held.text
    other = [{"role": "user", "content": "another ticket"}]  # not a duplicate of crit's
    spot = await h.client.post(CHAT, json=chat_body("spot", messages=other), headers=h.auth())
    await record_of(h, held.json()["request_id"])
    await record_of(h, spot.headers["x-request-id"])
    reviewer, second = h.auth(Role.REVIEWER), await add_key(h, Role.REVIEWER)
    for headers in (reviewer, second):
        claimed = await claim(h, headers, route="crit")
        assert claimed is not None
        await decide(h, headers, claimed, "approve")
    claimed = await claim(h, reviewer, reason="qa_sample")
    assert claimed is not None and claimed["item"]["route"] == "spot"
    await decide(h, reviewer, claimed, "approve")


async def test_scoped_keys_export_and_count_only_their_routes_and_tiers(gw: Harness) -> None:
    h = gw
    await _decided_crit_and_spot(h)
    everything = await h.client.post("/v1/reviews/export", headers=h.auth(Role.ADMIN))
    assert everything.headers["x-loragate-examples"] == "2"
    only_spot = await add_key(h, Role.REVIEWER, allowed_routes=["spot"])
    only_low = await add_key(h, Role.REVIEWER, allowed_tiers=["low"])

    refused = await h.client.post("/v1/reviews/export?route=crit", headers=only_spot)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "permission_denied" and "crit" in refused.text
    unreviewed = "/v1/reviews/export?include_unreviewed_above=0.5"
    assert (await h.client.post(unreviewed, headers=only_low)).status_code == 403
    for headers in (only_spot, only_low):
        own = await h.client.post("/v1/reviews/export", headers=headers)
        assert own.status_code == 200, own.text
        assert own.headers["x-loragate-examples"] == "1"

        stats = (await h.client.get("/v1/reviews/stats", headers=headers)).json()
        assert set(stats["qa"]) == {"spot"}
        assert "crit" not in stats["agreement"] and stats["pairs"] == []
        assert stats["depth"] == {} and stats["claimed"] == {}

        listed = (await h.client.get("/v1/reviews/export", headers=headers)).json()["data"]
        ids = {snapshot["id"] for snapshot in listed}
        assert everything.headers["x-loragate-snapshot"] not in ids
        if headers is only_spot:  # the tier key's export is the same data: the same snapshot
            assert own.headers["x-loragate-snapshot"] in ids

    lead = (await h.client.get("/v1/reviews/stats", headers=h.auth(Role.LEAD))).json()
    assert set(lead["agreement"]) == {"crit"} and len(lead["pairs"]) == 1
