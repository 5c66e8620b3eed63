"""Keeping a claim alive from the reviewer UI (heartbeat), and unparking parked items through
the API and the UI. Over HTTP on SQLite and PostgreSQL; the heartbeat also in Chromium."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from service.auth import Role
from service.db.models import ReviewItem
from service.review import model, queue, reads
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.fake_engine import FakeEngine
from tests.review.test_risk_api import add_key
from tests.review.test_risk_ui import sign_in_as
from tests.review.test_ui import GOOD, HAVE_BROWSER, ORIGIN, chromium, routes_file

ITEMS = "/v1/reviews/items"
AUDIT = "/v1/admin/audit"


@pytest.fixture
async def h(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    async with running_gateway(settings) as h:
        yield h


async def add(
    h: Harness, *, name: str = "req", state: str = "pending", reviews_needed: int = 1,
    votes: int = 0, expiries: int = 0, route: str = "triage",
) -> str:  # fmt: skip
    async with h.app.state.gateway.sessions.begin() as session:
        item_id = await queue.enqueue(
            session,
            queue.NewItem(
                request_id=name, route=route, target="m@1", reason="always", answer=GOOD,
                created_at=datetime.now(UTC), reviews_needed=reviews_needed,
                risk="critical" if reviews_needed > 1 else "medium",
            ),
        )  # fmt: skip
        await session.flush()
        await session.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id)
            .values(state=state, votes=votes, expiries=expiries)
        )
    return item_id


async def stored(h: Harness, item_id: str) -> model.ReviewItemView:
    async with h.app.state.gateway.sessions() as session:
        return await reads.get(session, item_id)


async def audit_events(h: Harness, action: str) -> list[dict[str, Any]]:
    page = await h.client.get(AUDIT, params={"action": action}, headers=h.auth(Role.ADMIN))
    assert page.status_code == 200, page.text
    events: list[dict[str, Any]] = page.json()["data"]
    return events


# --- unpark through the API -------------------------------------------------------------------


async def test_unpark_returns_a_parked_item_to_the_queue_with_its_event(h: Harness) -> None:
    item_id = await add(h, state="parked", expiries=3)
    url = f"{ITEMS}/{item_id}/unpark"
    refused = await h.client.post(url, headers=h.auth(Role.REVIEWER))
    assert refused.status_code == 403
    done = await h.client.post(url, headers=h.auth(Role.LEAD))
    assert done.status_code == 200, done.text
    assert done.json() == {"item_id": item_id, "state": "pending"}
    item = await stored(h, item_id)
    assert (item.state, item.expiries) == (model.ItemState.PENDING, 0)
    detail = (await h.client.get(f"{ITEMS}/{item_id}", headers=h.auth(Role.LEAD))).json()
    assert detail["history"][-1]["kind"] == "unparked"
    (event,) = await audit_events(h, "review.unpark")
    assert event["object"] == f"review_item:{item_id}" and event["actor_role"] == "lead"
    assert (event["before"]["state"], event["after"]["state"]) == ("parked", "pending")
    # Not parked any more: 409 in the error envelope, and no second event.
    again = await h.client.post(url, headers=h.auth(Role.ADMIN))
    assert again.status_code == 409
    assert "not parked" in again.json()["error"]["message"]
    assert len(await audit_events(h, "review.unpark")) == 1
    missing = await h.client.post(f"{ITEMS}/nope/unpark", headers=h.auth(Role.ADMIN))
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    # The unparked item is handed out again.
    claimed = await h.client.post("/v1/reviews/claim", json={}, headers=h.auth(Role.REVIEWER))
    assert claimed.status_code == 200 and claimed.json()["item"]["id"] == item_id


async def test_an_item_with_both_decisions_goes_back_to_the_adjudicators(h: Harness) -> None:
    item_id = await add(h, state="parked", reviews_needed=2, votes=2, expiries=3)
    done = await h.client.post(f"{ITEMS}/{item_id}/unpark", headers=h.auth(Role.ADMIN))
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "disputed"
    assert (await stored(h, item_id)).state is model.ItemState.DISPUTED
    half = await add(h, name="half", state="parked", reviews_needed=2, votes=1, expiries=3)
    done = await h.client.post(f"{ITEMS}/{half}/unpark", headers=h.auth(Role.ADMIN))
    assert done.json()["state"] == "pending"


async def test_unpark_stays_within_the_key_s_routes(h: Harness) -> None:
    item_id = await add(h, state="parked", expiries=3)
    elsewhere = await add_key(h, Role.LEAD, allowed_routes=["chat"])
    hidden = await h.client.post(f"{ITEMS}/{item_id}/unpark", headers=elsewhere)
    assert hidden.status_code == 404
    assert (await stored(h, item_id)).state is model.ItemState.PARKED
    assert await audit_events(h, "review.unpark") == []


async def test_a_first_of_two_decisions_is_audited_as_a_vote(h: Harness) -> None:
    item_id = await add(h, reviews_needed=2)
    reviewer = h.auth(Role.REVIEWER)
    claimed = (await h.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
    body = {"token": claimed["token"], "kind": "approve"}
    done = await h.client.post(f"{ITEMS}/{item_id}/decision", json=body, headers=reviewer)
    assert done.status_code == 200 and done.json()["outcome"] == "voted"
    (event,) = await audit_events(h, "review.approve")
    assert (event["after"]["state"], event["after"]["outcome"]) == ("pending", "voted")


# --- unpark and heartbeat in the UI -------------------------------------------------------------


async def test_the_ui_unparks_for_leads_only(h: Harness) -> None:
    item_id = await add(h, state="parked", expiries=3)
    page_url = f"/review/items/{item_id}"
    await sign_in_as(h, Role.REVIEWER)
    assert 'id="unpark"' not in (await h.client.get(page_url)).text
    refused = await h.client.post(f"{page_url}/unpark", headers=ORIGIN)
    assert refused.status_code == 403
    await sign_in_as(h, Role.LEAD)
    assert 'id="unpark"' in (await h.client.get(page_url)).text
    cross = await h.client.post(f"{page_url}/unpark", headers={"Origin": "http://evil"})
    assert cross.status_code == 403
    done = await h.client.post(f"{page_url}/unpark", headers=ORIGIN)
    assert done.status_code == 303, done.text
    page = await h.client.get(done.headers["location"])
    assert "back in the queue" in page.text and 'id="unpark"' not in page.text
    assert (await stored(h, item_id)).state is model.ItemState.PENDING


async def test_the_ui_heartbeat_renews_only_a_live_claim(h: Harness) -> None:
    await add(h)
    await sign_in_as(h, Role.REVIEWER)
    claimed = await h.client.post("/review/claim", headers=ORIGIN)
    item_id = claimed.headers["location"].rsplit("/", 1)[1]
    page = await h.client.get(claimed.headers["location"])
    assert 'id="lease"' in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    token = (await stored(h, item_id)).claim_token
    url = f"/review/items/{item_id}/heartbeat"
    beat = await h.client.post(url, data={"token": str(token)}, headers=ORIGIN)
    assert beat.status_code == 200, beat.text
    assert beat.json()["lease_until"] and beat.json()["token"] == token
    assert (await h.client.post(url, data={"token": str(token)})).status_code == 403
    stale = await h.client.post(url, data={"token": str(token + 1)}, headers=ORIGIN)
    assert stale.status_code == 409 and "not current" in stale.json()["error"]["message"]
    await h.client.post("/review/logout", headers=ORIGIN)
    signed_out = await h.client.post(url, data={"token": str(token)}, headers=ORIGIN)
    assert signed_out.status_code == 401


def lease_in_browser(
    base: str, key: str, check: Callable[[], Any], steal: Callable[[], Any], wait_s: float
) -> dict[str, Any]:
    """Open an item, stay past its lease, approve; open another, lose it to someone else."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            wait = WebDriverWait(driver, 15)
            driver.get(f"{base}/review/login")
            driver.find_element(By.ID, "key").send_keys(key)
            driver.find_element(By.ID, "sign-in").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "claim-next")))
            driver.find_element(By.ID, "claim-next").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "lease")))
            time.sleep(wait_s)  # past the lease: only the page's heartbeats keep the claim
            lease = driver.find_element(By.ID, "lease")
            seen["renewals"] = int(lease.get_attribute("data-renewals") or 0)
            seen["held"] = check()
            driver.find_element(By.ID, "approve").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
            seen["notice"] = driver.find_element(By.ID, "notice").text
            # The next item: another reviewer takes it over (its token moves on).
            driver.find_element(By.ID, "claim-next").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "lease")))
            steal()
            wait.until(expected_conditions.visibility_of_element_located((By.ID, "lease-lost")))
            seen["lost"] = driver.find_element(By.ID, "lease-lost").text
            seen["approve_enabled"] = driver.find_element(By.ID, "approve").is_enabled()
            # A decision sent anyway is refused, with the reason.
            driver.execute_script("document.getElementById('approve-form').submit();")
            wait.until(expected_conditions.presence_of_element_located((By.ID, "error")))
            seen["refused"] = driver.find_element(By.ID, "error").text
        finally:
            driver.quit()
    return seen


@pytest.mark.heavy
async def test_in_a_browser_the_open_page_keeps_its_claim(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    lease_s = 3.0
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path),
        review_ui_lease_s=lease_s,
    )  # fmt: skip
    async with running_gateway(settings) as h:
        first = await add(h, name="first")
        second = await add(h, name="second")
        loop = asyncio.get_running_loop()
        reviewer = next(k for k in h.app.state.gateway.snapshot.current.keys.values()
                        if k.principal.role is Role.REVIEWER).principal.key_id  # fmt: skip

        async def held() -> tuple[str, str | None, bool]:
            item = await stored(h, first)
            live = item.lease_until is not None and item.lease_until > datetime.now(UTC)
            return item.state.value, item.claimed_by, live

        async def take_over() -> None:
            async with h.app.state.gateway.sessions.begin() as session:
                await session.execute(
                    update(ReviewItem)
                    .where(ReviewItem.id == second)
                    .values(claimed_by="someone-else", claim_token=ReviewItem.claim_token + 1)
                )

        def check() -> Any:
            return asyncio.run_coroutine_threadsafe(held(), loop).result(10)

        def steal() -> Any:
            return asyncio.run_coroutine_threadsafe(take_over(), loop).result(10)

        async with served(h.app) as base:
            seen = await asyncio.to_thread(
                lease_in_browser, base, h.keys[Role.REVIEWER], check, steal, lease_s * 1.7
            )
        assert seen["renewals"] >= 2
        assert seen["held"] == ("claimed", reviewer, True)
        assert seen["notice"] == "Approved."
        assert (await stored(h, first)).state is model.ItemState.APPROVED
        assert "claim on this item was lost" in seen["lost"]
        assert seen["approve_enabled"] is False
        assert "not current" in seen["refused"]
        assert (await stored(h, second)).claimed_by == "someone-else"
