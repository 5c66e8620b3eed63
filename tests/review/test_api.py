"""The reviewer API over the review queue: roles, listing, claims, heartbeats, decisions, stats.

Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixture). The API's time comes from
the ``review_clock`` dependency, which these tests replace with a clock they move.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.auth import Role
from service.db import session as db_session
from service.db.session import sqlite_file
from service.review import api as reviews
from service.review import model, queue
from service.routes.config import RouteSpec, sync_routes
from tests.conftest import Harness, make_settings, running_gateway
from tests.fake_engine import FakeEngine

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ITEMS = "/v1/reviews/items"
CLAIM = "/v1/reviews/claim"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def harness(
    db_url: str, tmp_path: Path, engine: FakeEngine, clock: Clock
) -> AsyncIterator[Harness]:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        h.app.dependency_overrides[reviews.review_clock] = clock
        yield h


async def add(
    h: Harness, *, route: str = "triage", reason: str = "low_confidence", priority: int = 0,
    age_s: float = 0.0, answer: str = '{"category": "billing"}',
) -> str:  # fmt: skip
    async with h.app.state.gateway.sessions.begin() as session:
        return await queue.enqueue(
            session,
            queue.NewItem(
                request_id=f"req-{route}-{priority}-{age_s}",
                route=route,
                target="m@1",
                reason=reason,
                answer=answer,
                created_at=NOW - timedelta(seconds=age_s),
                priority=priority,
                confidence=0.4,
                field_confidence={"category": 0.4},
            ),
        )


async def with_route(h: Harness, spec: RouteSpec) -> None:
    gw = h.app.state.gateway
    async with gw.sessions.begin() as session:
        await sync_routes(session, [spec], gw.settings.engine_pools())
    await gw.snapshot.reload()


def reviewer(h: Harness) -> dict[str, str]:
    return h.auth(Role.REVIEWER)


def key_id(h: Harness, role: Role = Role.REVIEWER) -> str:
    return h.keys[role].split("-", 2)[1]


async def claim(h: Harness, role: Role = Role.REVIEWER, **body: Any) -> dict[str, Any]:
    response = await h.client.post(CLAIM, json=body, headers=h.auth(role))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def decide(
    h: Harness, item_id: str, token: int, kind: str, *, role: Role = Role.REVIEWER, **extra: Any
) -> Any:
    return await h.client.post(
        f"{ITEMS}/{item_id}/decision",
        json={"token": token, "kind": kind, **extra},
        headers=h.auth(role),
    )


async def test_only_reviewers_and_admins(harness: Harness) -> None:
    h = harness
    await add(h)
    for role in (Role.APP, Role.SRE):
        for method, path in (("GET", ITEMS), ("POST", CLAIM), ("GET", "/v1/reviews/stats")):
            response = await h.client.request(method, path, json={}, headers=h.auth(role))
            assert response.status_code == 403, (role, path)
            assert response.json()["error"]["code"] == "permission_denied"
    assert (await h.client.get(ITEMS)).status_code == 401
    for role in (Role.REVIEWER, Role.ADMIN):
        assert (await h.client.get(ITEMS, headers=h.auth(role))).status_code == 200


async def test_list_in_queue_order_with_filters(harness: Harness) -> None:
    h = harness
    young = await add(h, age_s=10)
    old = await add(h, age_s=100)
    urgent = await add(h, priority=5, age_s=1)
    other = await add(h, route="summarise", reason="schema_invalid", age_s=50)
    response = await h.client.get(ITEMS, headers=reviewer(h))
    assert response.status_code == 200
    assert [i["id"] for i in response.json()] == [urgent, old, other, young]
    first = response.json()[0]
    assert first["state"] == "pending" and first["claim_token"] == 0
    assert first["field_confidence"] == {"category": 0.4}

    by_route = await h.client.get(ITEMS, params={"route": "triage"}, headers=reviewer(h))
    assert [i["id"] for i in by_route.json()] == [urgent, old, young]
    by_reason = await h.client.get(ITEMS, params={"reason": "schema_invalid"}, headers=reviewer(h))
    assert [i["id"] for i in by_reason.json()] == [other]
    page = await h.client.get(ITEMS, params={"limit": 2, "offset": 1}, headers=reviewer(h))
    assert [i["id"] for i in page.json()] == [old, other]

    await claim(h)
    claimed = await h.client.get(ITEMS, params={"state": "claimed"}, headers=reviewer(h))
    assert [i["id"] for i in claimed.json()] == [urgent]
    bad = await h.client.get(ITEMS, params={"state": "nonsense"}, headers=reviewer(h))
    assert bad.status_code == 400


async def test_claim_then_approve(harness: Harness, clock: Clock) -> None:
    h = harness
    item_id = await add(h)
    claimed = await claim(h, lease_s=60)
    assert claimed["item"]["id"] == item_id
    assert claimed["item"]["state"] == "claimed"
    assert claimed["item"]["claimed_by"] == key_id(h)
    assert claimed["token"] == 1
    assert datetime.fromisoformat(claimed["lease_until"]) == NOW + timedelta(seconds=60)

    clock.advance(30)
    response = await decide(h, item_id, claimed["token"], "approve")
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["kind"] == "approve" and decision["reviewer"] == key_id(h)
    assert decision["token"] == 1
    assert datetime.fromisoformat(decision["at"]) == NOW + timedelta(seconds=30)

    item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
    assert item["state"] == "approved" and item["decided_by"] == key_id(h)
    assert [(e["kind"], e["reviewer"], e["claim_token"]) for e in item["history"]] == [
        ("approve", key_id(h), 1)
    ]


async def test_claim_when_nothing_is_claimable(harness: Harness) -> None:
    h = harness
    response = await h.client.post(CLAIM, json={}, headers=reviewer(h))
    assert response.status_code == 204 and response.content == b""
    await add(h, route="triage")
    response = await h.client.post(CLAIM, json={"route": "other"}, headers=reviewer(h))
    assert response.status_code == 204
    response = await h.client.post(CLAIM, json={"reason": "other"}, headers=reviewer(h))
    assert response.status_code == 204
    assert (await claim(h, route="triage"))["token"] == 1
    response = await h.client.post(CLAIM, json={}, headers=reviewer(h))
    assert response.status_code == 204


@pytest.mark.parametrize("lease_s", [5, 3601, 0, -1])
async def test_lease_bounds(harness: Harness, lease_s: float) -> None:
    h = harness
    await add(h)
    response = await h.client.post(CLAIM, json={"lease_s": lease_s}, headers=reviewer(h))
    assert response.status_code == 400


async def test_correct_needs_json(harness: Harness) -> None:
    h = harness
    item_id = await add(h)
    token = (await claim(h))["token"]
    response = await decide(h, item_id, token, "correct", corrected_answer="billing, I think")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "review_decision_invalid"
    response = await decide(h, item_id, token, "correct")
    assert response.status_code == 422
    response = await decide(h, item_id, token, "correct", corrected_answer="   ")
    assert response.status_code == 422
    response = await decide(h, item_id, token, "correct", corrected_answer="{}", reason="x")
    assert response.status_code == 422

    answer = '{"category": "technical"}'
    response = await decide(h, item_id, token, "correct", corrected_answer=answer)
    assert response.status_code == 200, response.text
    assert response.json()["corrected_answer"] == answer
    item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
    assert item["state"] == "corrected" and item["corrected_answer"] == answer
    assert item["history"][-1]["payload"] == {"corrected_answer": answer}


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ({"category": "technical"}, '{"category":"technical"}'),
        ('{"category": "technical"}', '{"category": "technical"}'),
    ],
)
async def test_a_correction_may_be_a_json_value_or_json_text(
    harness: Harness, sent: Any, stored: str
) -> None:
    h = harness
    item_id = await add(h, route="chat")
    token = (await claim(h))["token"]
    response = await decide(h, item_id, token, "correct", corrected_answer=sent)
    assert response.status_code == 200, response.text
    assert response.json()["corrected_answer"] == stored
    again = await decide(h, item_id, token, "correct", corrected_answer=sent)
    assert (again.status_code, again.json()["corrected_answer"]) == (200, stored)


async def test_a_json_correction_on_a_schema_route_must_follow_the_schema(
    harness: Harness,
) -> None:
    h = harness
    schema = {"type": "object", "properties": {"category": {"type": "string"}}}
    await with_route(h, RouteSpec(name="triage-schema", output_schema=schema))
    item_id = await add(h, route="triage-schema")
    token = (await claim(h))["token"]
    for wrong in ({"category": 7}, ["billing"], "billing"):
        response = await decide(h, item_id, token, "correct", corrected_answer=wrong)
        assert response.status_code == 422, (wrong, response.text)
        assert response.json()["error"]["code"] == "review_decision_invalid"
    response = await decide(h, item_id, token, "correct", corrected_answer={"category": "x"})
    assert response.status_code == 200, response.text
    assert response.json()["corrected_answer"] == '{"category":"x"}'


async def test_a_json_correction_on_a_free_text_route_is_kept_as_its_json_text(
    harness: Harness,
) -> None:
    h = harness
    await with_route(h, RouteSpec(name="notes", review={"escalate": "always"}))
    item_id = await add(h, route="notes", answer="some words")
    token = (await claim(h))["token"]
    response = await decide(h, item_id, token, "correct", corrected_answer=[1, "two"])
    assert (response.status_code, response.json()["corrected_answer"]) == (200, '[1,"two"]')


async def test_invalid_bodies_get_a_readable_openai_error_without_the_input(
    harness: Harness,
) -> None:
    h = harness
    item_id = await add(h)
    response = await decide(h, item_id, "secret-ish-value", "maybe")  # type: ignore[arg-type]
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "invalid_request", "token",
    )  # fmt: skip
    assert error["message"].startswith("token: Input should be a valid integer")
    assert "kind: Input should be 'approve', 'correct' or 'reject'" in error["message"]
    assert "secret-ish-value" not in response.text and "maybe" not in response.text
    as_json = {**reviewer(h), "content-type": "application/json"}
    broken = await h.client.post(CLAIM, content=b"{not json", headers=as_json)
    assert broken.status_code == 400
    assert broken.json()["error"]["message"].startswith("body: JSON decode error")
    query = await h.client.get(ITEMS, params={"limit": 9999}, headers=reviewer(h))
    assert query.status_code == 400
    assert query.json()["error"]["message"].startswith("limit: Input should be less than")


def test_a_long_list_of_validation_errors_is_cut_short() -> None:
    from service.api.errors import invalid_request

    errors = [{"loc": ("body", "lines", i, "sku"), "msg": "Field required"} for i in range(5)]
    error = invalid_request(errors)
    assert (error.status, error.code, error.param) == (400, "invalid_request", "lines.0.sku")
    assert error.message == (
        "lines.0.sku: Field required; lines.1.sku: Field required; "
        "lines.2.sku: Field required (and 2 more)"
    )


async def test_reject_needs_reason_and_approve_takes_nothing(harness: Harness) -> None:
    h = harness
    item_id = await add(h)
    token = (await claim(h))["token"]
    missing: list[dict[str, Any]] = [{}, {"reason": ""}, {"corrected_answer": "{}"}]
    for extra in missing:
        response = await decide(h, item_id, token, "reject", **extra)
        assert response.status_code == 422, extra
        assert response.json()["error"]["code"] == "review_decision_invalid"
    extras: list[dict[str, Any]] = [{"reason": "why"}, {"corrected_answer": "{}"}]
    for extra in extras:
        assert (await decide(h, item_id, token, "approve", **extra)).status_code == 422
    assert (await decide(h, item_id, token, "maybe")).status_code == 400

    response = await decide(h, item_id, token, "reject", reason="made up a category")
    assert response.status_code == 200
    assert response.json()["reject_reason"] == "made up a category"
    item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
    assert item["state"] == "rejected" and item["reject_reason"] == "made up a category"


async def test_second_claimant_cannot_use_first_token(harness: Harness, clock: Clock) -> None:
    h = harness
    item_id = await add(h)
    first = await claim(h, lease_s=10)
    clock.advance(11)  # the first lease ran out; the admin claims the item back from the queue
    second = await claim(h, Role.ADMIN, lease_s=60)
    assert second["item"]["id"] == item_id and second["token"] == first["token"] + 1
    assert second["item"]["expiries"] == 1

    stale = await decide(h, item_id, first["token"], "approve")
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "review_conflict"
    # The current token, but from someone who does not hold the claim.
    assert (await decide(h, item_id, second["token"], "approve")).status_code == 409
    response = await decide(h, item_id, second["token"], "approve", role=Role.ADMIN)
    assert response.status_code == 200
    assert response.json()["reviewer"] == key_id(h, Role.ADMIN)

    item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
    assert [(e["kind"], e["reviewer"]) for e in item["history"]] == [
        ("expired", key_id(h)),
        ("approve", key_id(h, Role.ADMIN)),
    ]


async def test_repeated_decision_is_idempotent(harness: Harness, clock: Clock) -> None:
    h = harness
    item_id = await add(h)
    token = (await claim(h))["token"]
    first = await decide(h, item_id, token, "reject", reason="wrong")
    assert first.status_code == 200
    clock.advance(5)
    again = await decide(h, item_id, token, "reject", reason="wrong")
    assert again.status_code == 200
    assert again.json() == first.json()

    later: list[tuple[str, dict[str, Any]]] = [("reject", {"reason": "other"}), ("approve", {})]
    for kind, extra in later:
        response = await decide(h, item_id, token, kind, **extra)
        assert response.status_code == 409, (kind, extra)
        assert response.json()["error"]["code"] == "review_conflict"
    response = await decide(h, item_id, token, "correct", corrected_answer="{}")
    assert response.status_code == 409
    item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
    assert len(item["history"]) == 1


async def test_heartbeat(harness: Harness, clock: Clock) -> None:
    h = harness
    item_id = await add(h)
    token = (await claim(h, lease_s=30))["token"]
    clock.advance(20)
    url = f"{ITEMS}/{item_id}/heartbeat"
    response = await h.client.post(url, json={"token": token, "lease_s": 30}, headers=reviewer(h))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == item_id and body["token"] == token
    assert datetime.fromisoformat(body["lease_until"]) == NOW + timedelta(seconds=50)

    stale = await h.client.post(url, json={"token": token + 1}, headers=reviewer(h))
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "review_conflict"
    other = await h.client.post(url, json={"token": token}, headers=h.auth(Role.ADMIN))
    assert other.status_code == 409
    bounds = await h.client.post(url, json={"token": token, "lease_s": 1}, headers=reviewer(h))
    assert bounds.status_code == 400

    clock.advance(25)  # past the first lease (+30 s), inside the extended one (+50 s)
    assert (await decide(h, item_id, token, "approve")).status_code == 200
    after = await h.client.post(url, json={"token": token}, headers=reviewer(h))
    assert after.status_code == 409


async def test_lease_runs_out(harness: Harness, clock: Clock) -> None:
    h = harness
    item_id = await add(h)
    token = (await claim(h, lease_s=30))["token"]
    clock.advance(31)
    url = f"{ITEMS}/{item_id}/heartbeat"
    assert (await h.client.post(url, json={"token": token}, headers=reviewer(h))).status_code == 409
    assert (await decide(h, item_id, token, "approve")).status_code == 409


async def test_unknown_item(harness: Harness) -> None:
    h = harness
    missing = "0" * 32
    responses = [
        await h.client.get(f"{ITEMS}/{missing}", headers=reviewer(h)),
        await h.client.post(f"{ITEMS}/{missing}/heartbeat", json={"token": 1}, headers=reviewer(h)),
        await decide(h, missing, 1, "approve"),
        await decide(h, missing, 1, "correct", corrected_answer="{}"),
        await decide(h, missing, 1, "reject", reason="no"),
    ]
    for response in responses:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "review_item_not_found"


async def test_a_locked_database_is_a_503_to_try_again_and_the_retry_decides_once(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_MS", 200)
    async with running_gateway(make_settings(sqlite_url, tmp_path, [engine.url])) as h:
        h.app.dependency_overrides[reviews.review_clock] = Clock()
        item_id = await add(h)
        token = (await claim(h, lease_s=60))["token"]
        path = sqlite_file(sqlite_url)
        assert path is not None
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            locked = await decide(h, item_id, token, "approve")
        finally:
            holder.rollback()
            holder.close()
        assert locked.status_code == 503, locked.text
        assert locked.json()["error"]["code"] == "store_unavailable"
        assert locked.headers["retry-after"] == "1"
        item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
        assert item["state"] == "claimed" and item["history"] == []  # nothing half-written

        retried = await decide(h, item_id, token, "approve")
        assert retried.status_code == 200, retried.text
        again = await decide(h, item_id, token, "approve")
        assert again.json() == retried.json()
        item = (await h.client.get(f"{ITEMS}/{item_id}", headers=reviewer(h))).json()
        assert [e["kind"] for e in item["history"]] == ["approve"]


async def test_numbers_too_large_to_store_are_a_400_not_a_crash(harness: Harness) -> None:
    h = harness
    item = await add(h)
    huge = 100000000000000000000
    responses = [
        await h.client.get(f"{ITEMS}?offset=26879089908655882240", headers=reviewer(h)),
        await h.client.post(f"{ITEMS}/{item}/heartbeat", json={"token": huge}, headers=reviewer(h)),
        await decide(h, item, huge, "approve"),
    ]
    for response in responses:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
    # The largest storable values are still ordinary requests.
    edge = await h.client.get(f"{ITEMS}?offset={model.MAX_INT}", headers=reviewer(h))
    assert edge.status_code == 200 and edge.json() == []
    assert (await decide(h, item, model.MAX_INT, "approve")).status_code == 409


async def test_stats(harness: Harness, clock: Clock) -> None:
    h = harness
    empty = (await h.client.get("/v1/reviews/stats", headers=reviewer(h))).json()
    assert empty == {
        "depth": {}, "claimed": {}, "oldest_pending_age_s": None, "parked": 0,
        "sla_target_s": {"low": 86400.0, "medium": 14400.0, "high": 3600.0, "critical": 900.0},
        "overdue": {"low": 0, "medium": 0, "high": 0, "critical": 0},
        "qa": {}, "agreement": {}, "pairs": [], "calibration": [],
    }  # fmt: skip

    await add(h, route="triage", age_s=100)
    await add(h, route="triage", age_s=40)
    await add(h, route="summarise", age_s=10)
    decided = await add(h, route="summarise", priority=9, age_s=5)
    token = (await claim(h, route="summarise"))["token"]
    assert (await decide(h, decided, token, "approve")).status_code == 200
    await claim(h, route="triage", lease_s=60)  # the oldest triage item, now held

    clock.advance(20)
    stats = (await h.client.get("/v1/reviews/stats", headers=reviewer(h))).json()
    assert stats["depth"] == {"triage": 2, "summarise": 1}
    assert stats["claimed"] == {"triage": 1}
    assert stats["oldest_pending_age_s"] == pytest.approx(60.0)
    assert stats["parked"] == 0
