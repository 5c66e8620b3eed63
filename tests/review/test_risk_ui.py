"""The reviewer UI with risk tiers: tier and SLA in the queue, the two-reviewer flow with
adjudication, and the quality figures; over HTTP on SQLite and PostgreSQL, and in Chromium."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.auth import Role
from service.review import api as reviews
from service.review import model, queue, reads
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.fake_engine import FakeEngine
from tests.review.test_ui import GOOD, HAVE_BROWSER, ORIGIN, chromium, routes_file

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    async with running_gateway(settings) as h:
        h.app.dependency_overrides[reviews.review_clock] = lambda: NOW
        yield h


async def add(
    h: Harness, *, risk: str = "critical", reviews_needed: int = 2, age: timedelta = timedelta(),
    reason: str = "always", name: str = "req",
) -> str:  # fmt: skip
    async with h.app.state.gateway.sessions.begin() as session:
        return await queue.enqueue(
            session,
            queue.NewItem(
                request_id=name, route="triage", target="m@1", reason=reason, answer=GOOD,
                created_at=NOW - age, risk=risk, reviews_needed=reviews_needed,
            ),
        )  # fmt: skip


async def sign_in_as(h: Harness, role: Role) -> None:
    await h.client.post("/review/logout", headers=ORIGIN)
    response = await h.client.post("/review/login", data={"key": h.keys[role]}, headers=ORIGIN)
    assert response.status_code == 303, response.text


async def claim_and_decide(h: Harness, kind: str, **form: str) -> str:
    claimed = await h.client.post("/review/claim", headers=ORIGIN)
    assert claimed.status_code == 303, claimed.text
    item_id = claimed.headers["location"].rsplit("/", 1)[1]
    page = await h.client.get(f"/review/items/{item_id}")
    token = re.search(r'name="token" value="(\d+)"', page.text)
    assert token, page.text
    done = await h.client.post(
        f"/review/items/{item_id}/decision",
        data={"token": token.group(1), "kind": kind, **form},
        headers=ORIGIN,
    )
    assert done.status_code == 303, done.text
    return str(done.headers["location"])


async def test_the_queue_shows_tiers_and_lists_overdue_items_first(harness: Harness) -> None:
    h = harness
    fresh = await add(h, risk="medium", reviews_needed=1, age=timedelta(hours=3), name="a")
    late = await add(h, risk="critical", age=timedelta(minutes=20), name="b")
    await sign_in_as(h, Role.REVIEWER)
    page = (await h.client.get("/review")).text
    assert page.index(late) < page.index(fresh)  # overdue first, though younger
    row = re.search(rf'<tr data-id="{late}" class="overdue"[^>]*>(.*?)</tr>', page, re.S)
    assert row and 'class="tier tier-critical">critical<' in row.group(1)
    assert "0/2" in row.group(1)
    assert re.search(rf'<tr data-id="{fresh}">', page)
    sla = re.search(r'<table id="sla">(.*?)</table>', page, re.S)
    assert sla and re.search(r"<td>critical</td><td>15m</td><td class=\"count\">1</td>", sla[1])
    only = (await h.client.get("/review", params={"tier": "medium"})).text
    assert fresh in only and late not in only
    bad = await h.client.get("/review", params={"tier": "<b>x</b>"})
    assert "Unknown risk tier" in bad.text and "&lt;b&gt;x&lt;/b&gt;" in bad.text


async def test_two_reviewers_then_an_adjudicator_through_the_forms(harness: Harness) -> None:
    h = harness
    item = await add(h)
    await sign_in_as(h, Role.REVIEWER)
    assert await claim_and_decide(h, "approve") == "/review?notice=voted"
    # Another reviewer's page tells that two decide independently, and shows no decision.
    await sign_in_as(h, Role.ADMIN)
    page = (await h.client.get(f"/review/items/{item}")).text
    assert 'id="independent"' in page and 'id="votes"' not in page
    assert await claim_and_decide(h, "reject", reason="wrong") == "/review?notice=disputed"
    await sign_in_as(h, Role.REVIEWER)
    nothing = await h.client.post("/review/claim", headers=ORIGIN)
    assert nothing.headers["location"] == "/review?notice=empty"
    await sign_in_as(h, Role.LEAD)
    claimed = await h.client.post("/review/claim", headers=ORIGIN)
    assert claimed.headers["location"] == f"/review/items/{item}"
    page = (await h.client.get(f"/review/items/{item}")).text
    votes = re.search(r'<table id="votes">(.*?)</table>', page, re.S)
    assert votes and re.findall(r'class="vote-kind">(\w+)<', votes[1]) == ["approve", "reject"]
    token = re.search(r'name="token" value="(\d+)"', page)
    assert token
    done = await h.client.post(
        f"/review/items/{item}/decision",
        data={"token": token[1], "kind": "correct", "corrected_answer": GOOD},
        headers=ORIGIN,
    )
    assert done.headers["location"] == "/review?notice=correct"
    async with h.app.state.gateway.sessions() as session:
        row = await reads.get(session, item)
    assert row.state is model.ItemState.CORRECTED
    queue_page = (await h.client.get("/review")).text
    agreement = re.search(r'<table id="agreement">(.*?)</table>', queue_page, re.S)
    assert agreement and '<td class="kappa">0.00</td>' in agreement[1]


async def test_qa_figures_in_the_queue_page(harness: Harness) -> None:
    h = harness
    for i in range(2):
        await add(h, risk="low", reviews_needed=1, reason="qa_sample", name=f"qa{i}")
    await sign_in_as(h, Role.REVIEWER)
    await claim_and_decide(h, "approve")
    await claim_and_decide(h, "reject", reason="no")
    page = (await h.client.get("/review")).text
    qa = re.search(r'<table id="qa">(.*?)</table>', page, re.S)
    assert qa and re.search(r'<td class="share">50.0 % \(\d+\.\d\u2013\d+\.\d %\)</td>', qa[1])


def browser_two_reviewers(base: str, keys: dict[str, str]) -> dict[str, Any]:
    """Two reviewers decide one critical item in turn (differently); a lead adjudicates."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            wait = WebDriverWait(driver, 30)

            def sign_in(key: str) -> None:
                driver.get(f"{base}/review/login")
                wait.until(expected_conditions.presence_of_element_located((By.ID, "key")))
                driver.find_element(By.ID, "key").send_keys(key)
                driver.find_element(By.ID, "sign-in").click()
                wait.until(expected_conditions.presence_of_element_located((By.ID, "claim-next")))

            def claim() -> None:
                driver.find_element(By.ID, "claim-next").click()
                wait.until(expected_conditions.presence_of_element_located((By.ID, "answer")))

            def notice() -> str:
                wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
                return str(driver.find_element(By.ID, "notice").text)

            sign_in(keys["reviewer"])
            seen["overdue_rows"] = len(driver.find_elements(By.CSS_SELECTOR, "tr.overdue"))
            claim()
            seen["tier"] = driver.find_element(By.ID, "tier").text
            seen["first_independent"] = bool(driver.find_elements(By.ID, "independent"))
            driver.find_element(By.ID, "approve").click()
            seen["first"] = notice()

            sign_in(keys["admin"])
            claim()
            seen["second_votes_shown"] = bool(driver.find_elements(By.ID, "votes"))
            driver.find_element(By.ID, "reject_reason").send_keys("wrong urgency")
            driver.find_element(By.ID, "reject").click()
            seen["second"] = notice()

            sign_in(keys["lead"])
            claim()
            seen["lead_votes"] = [
                e.text for e in driver.find_elements(By.CSS_SELECTOR, "#votes .vote-kind")
            ]
            driver.find_element(By.ID, "approve").click()
            seen["final"] = notice()
        finally:
            driver.quit()
    return seen


@pytest.mark.heavy
async def test_two_reviewers_and_a_lead_in_a_browser(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    settings = make_settings(sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    async with running_gateway(settings) as h:
        real_now = datetime.now(UTC)
        async with h.app.state.gateway.sessions.begin() as session:
            item = await queue.enqueue(
                session,
                queue.NewItem(
                    request_id="crit", route="triage", target="m@1", reason="always",
                    answer=GOOD, created_at=real_now - timedelta(hours=1), risk="critical",
                    reviews_needed=2,
                ),
            )  # fmt: skip
        keys = {"reviewer": h.keys[Role.REVIEWER], "admin": h.keys[Role.ADMIN],
                "lead": h.keys[Role.LEAD]}  # fmt: skip
        async with served(h.app) as base:
            seen = await asyncio.to_thread(browser_two_reviewers, base, keys)
        assert seen["overdue_rows"] >= 1  # an hour old, past critical's 15 minutes
        assert seen["tier"] == "critical" and seen["first_independent"] is True
        assert seen["first"].startswith("Decision recorded; a second reviewer")
        assert seen["second_votes_shown"] is False  # the first decision stays unseen
        assert seen["second"].startswith("Recorded; it differs")
        assert seen["lead_votes"] == ["approve", "reject"]
        assert seen["final"] == "Approved."
        async with h.app.state.gateway.sessions() as session:
            row = await reads.get(session, item)
        assert row.state is model.ItemState.APPROVED and row.votes == 2
