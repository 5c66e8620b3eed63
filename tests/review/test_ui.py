"""The reviewer web UI at /review: sign-in, the queue, an item, decisions, escaping, a browser.

The HTTP tests run on SQLite and PostgreSQL through the ASGI client, with the JSON API's
``review_clock`` replaced by a fixed clock. The browser test drives Debian's Chromium with
Selenium against the app served on a real port.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text

from adapters.dataset import example_data
from service.auth import Role
from service.keys import store as key_store
from service.review import api as reviews
from service.review import model, queue, reads
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.fake_engine import FakeEngine

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ORIGIN = {"Origin": "http://gateway"}
EVIL = '{"category": "<script>alert(1)</script>", "next_action": "=HYPERLINK(\\"http://x\\")"}'
GOOD = '{"category": "billing", "urgency": 2, "next_action": "Refund the charge"}'


def routes_file(tmp_path: Path) -> Path:
    (tmp_path / "tickets.schema.json").write_text(example_data("tickets.schema.json").read_text())
    path = tmp_path / "routes.yaml"
    triage = {"name": "triage", "output_schema": "tickets.schema.json"}
    path.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, triage]}))
    return path


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    async with running_gateway(settings) as h:
        h.app.dependency_overrides[reviews.review_clock] = lambda: NOW
        yield h


async def add(
    h: Harness, *, answer: str = GOOD, route: str = "triage", priority: int = 0,
    now: datetime = NOW, schema_errors: list[Any] | None = None,
    request_body: str | None = None,
) -> str:  # fmt: skip
    async with h.app.state.gateway.sessions.begin() as session:
        return await queue.enqueue(
            session,
            queue.NewItem(
                request_id=f"req-{priority}-{now.timestamp()}",
                route=route,
                target="m@1",
                reason="low_confidence",
                answer=answer,
                created_at=now,
                priority=priority,
                confidence=0.4,
                field_confidence={"/category": 0.3, "/urgency": 0.9},
                schema_errors=schema_errors,
                request_body=request_body,
            ),
        )


async def sign_in(h: Harness, role: Role = Role.REVIEWER) -> httpx.Response:
    response = await h.client.post("/review/login", data={"key": h.keys[role]}, headers=ORIGIN)
    return response


async def claim(h: Harness) -> tuple[str, int]:
    response = await h.client.post("/review/claim", headers=ORIGIN)
    assert response.status_code == 303, response.text
    item_id = response.headers["location"].rsplit("/", 1)[1]
    page = await h.client.get(f"/review/items/{item_id}")
    token = re.search(r'name="token" value="(\d+)"', page.text)
    assert token, page.text
    return item_id, int(token.group(1))


async def stored(h: Harness, item_id: str) -> model.ReviewItemView:
    async with h.app.state.gateway.sessions() as session:
        return await reads.get(session, item_id)


async def test_sign_in_required(harness: Harness) -> None:
    h = harness
    item = await add(h)
    for path in ("/review", f"/review/items/{item}"):
        response = await h.client.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/review/login"
    response = await h.client.post("/review/claim", headers=ORIGIN)
    assert response.status_code == 303 and response.headers["location"] == "/review/login"
    login = await h.client.get("/review/login")
    assert login.status_code == 200 and 'name="key"' in login.text


async def test_bad_keys_refused(harness: Harness) -> None:
    h = harness
    bad = await h.client.post("/review/login", data={"key": "lg-nope-nope"}, headers=ORIGIN)
    assert bad.status_code == 401 and 'class="error"' in bad.text
    assert "set-cookie" not in bad.headers
    forged = h.keys[Role.REVIEWER][:-3] + "xyz"
    assert (
        await h.client.post("/review/login", data={"key": forged}, headers=ORIGIN)
    ).status_code == 401
    for role in (Role.APP, Role.SRE):
        refused = await sign_in(h, role)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        # A key set by hand as the cookie is no session.
        h.client.cookies.set("lg_review_session", h.keys[role], path="/review")
        assert (await h.client.get("/review")).status_code == 303
        h.client.cookies.clear()


async def test_sign_in_cookie_and_sign_out(harness: Harness) -> None:
    h = harness
    response = await sign_in(h)
    assert response.status_code == 303 and response.headers["location"] == "/review"
    cookie = response.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/review"):
        assert attribute in cookie
    page = await h.client.get("/review")
    assert page.status_code == 200 and "Claim next" in page.text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    out = await h.client.post("/review/logout", headers=ORIGIN)
    assert out.status_code == 303
    h.client.cookies.clear()  # the ASGI client keeps cookies by domain; the browser drops it
    assert (await h.client.get("/review")).status_code == 303


async def test_the_cookie_holds_a_session_not_the_key(harness: Harness) -> None:
    """The cookie once carried the raw API key. Now a random token of a server-side
    session, which ends at sign-out, at expiry and when its key is revoked."""
    h = harness
    response = await sign_in(h)
    token = h.client.cookies["lg_review_session"]
    key = h.keys[Role.REVIEWER]
    assert token and key not in response.headers["set-cookie"] and key.split("-", 2)[2] not in token
    assert f"max-age={8 * 3600}" in response.headers["set-cookie"].lower()
    assert "secure" not in response.headers["set-cookie"].lower()  # plain http, no setting
    async with h.app.state.gateway.sessions() as session:
        rows = (await session.execute(text("SELECT token_hash, key_id FROM review_sessions"))).all()
    assert [(r.key_id, token in r.token_hash) for r in rows] == [(key.split("-")[1], False)]
    assert (await h.client.get("/review")).status_code == 200
    # Signed out: the same cookie, replayed, is no session any more.
    assert (await h.client.post("/review/logout", headers=ORIGIN)).status_code == 303
    h.client.cookies.set("lg_review_session", token, path="/review")
    assert (await h.client.get("/review")).status_code == 303
    h.client.cookies.clear()


async def test_a_session_ends_at_expiry_and_with_its_key(harness: Harness) -> None:
    h = harness
    await sign_in(h)
    assert (await h.client.get("/review")).status_code == 200
    later = NOW + timedelta(hours=8, seconds=1)
    h.app.dependency_overrides[reviews.review_clock] = lambda: later
    assert (await h.client.get("/review")).status_code == 303
    h.app.dependency_overrides[reviews.review_clock] = lambda: NOW
    assert (await h.client.get("/review")).status_code == 200
    gw = h.app.state.gateway
    async with gw.sessions.begin() as session:
        await key_store.revoke_key(session, h.keys[Role.REVIEWER].split("-")[1], NOW)
    await gw.snapshot.reload()
    assert (await h.client.get("/review")).status_code == 303


async def test_secure_cookies_behind_tls(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    settings = make_settings(sqlite_url, tmp_path, [engine.url], secure_cookies=True)
    async with running_gateway(settings) as h:
        response = await sign_in(h)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"].lower()
        for attribute in ("secure", "httponly", "samesite=strict", "path=/review"):
            assert attribute in cookie


async def test_cross_site_posts_refused(harness: Harness) -> None:
    h = harness
    await add(h)
    await sign_in(h)
    for headers in ({}, {"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}):
        response = await h.client.post("/review/claim", headers=headers)
        assert response.status_code == 403, headers
    login = await h.client.post(
        "/review/login", data={"key": h.keys[Role.REVIEWER]}, headers={"Origin": "http://evil"}
    )
    assert login.status_code == 403
    ok = await h.client.post("/review/claim", headers={"Referer": "http://gateway/review"})
    assert ok.status_code == 303


async def test_queue_lists_and_filters(harness: Harness) -> None:
    h = harness
    first = await add(h, priority=5, now=NOW - timedelta(minutes=3))
    other = await add(h, route="chat", now=NOW - timedelta(hours=2))
    await sign_in(h)
    page = await h.client.get("/review")
    assert page.text.index(first) < page.text.index(other)
    assert "3m" in page.text and "2h 0m" in page.text
    only = await h.client.get("/review", params={"route": "chat"})
    assert other in only.text and first not in only.text
    claimed = await h.client.get("/review", params={"state": "claimed"})
    assert first not in claimed.text and other not in claimed.text
    bad = await h.client.get("/review", params={"state": "<b>x</b>"})
    assert bad.status_code == 200 and "&lt;b&gt;x&lt;/b&gt;" in bad.text


async def test_model_output_is_escaped(harness: Harness) -> None:
    h = harness
    body = (
        '{"model": "triage", "messages": [{"role": "system", "content": "<img src=x onerror=1>"},'
        ' {"role": "user", "content": [{"type": "text", "text": "<script>alert(2)</script>"}]}]}'
    )
    errors = [{"path": "/category", "message": "<script>alert(3)</script> is not one of"}]
    item = await add(h, answer=EVIL, schema_errors=errors, request_body=body)
    await sign_in(h)
    page = await h.client.get(f"/review/items/{item}")
    assert page.status_code == 200
    html = page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=1&gt;" in html
    assert "<script>alert" not in html and "<img" not in html
    assert "=HYPERLINK(" in html and 'HYPERLINK("http' not in html  # quotes escaped too
    assert re.search(r'<li class="low"><code>/category</code>: 0.30</li>', html)
    assert re.search(r"<li><code>/urgency</code>: 0.90</li>", html)
    assert "Approve" not in html  # not claimed by this reviewer: no decision forms


async def test_approve_through_the_form(harness: Harness) -> None:
    h = harness
    item = await add(h)
    await sign_in(h)
    claimed, token = await claim(h)
    assert claimed == item
    page = await h.client.get(f"/review/items/{item}")
    assert 'id="approve-form"' in page.text and 'id="corrected_answer"' in page.text
    response = await h.client.post(
        f"/review/items/{item}/decision", data={"token": token, "kind": "approve"}, headers=ORIGIN
    )
    assert response.status_code == 303 and response.headers["location"] == "/review?notice=approve"
    assert "Approved." in (await h.client.get(response.headers["location"])).text
    row = await stored(h, item)
    assert row.state is model.ItemState.APPROVED
    assert row.decided_by == h.keys[Role.REVIEWER].split("-", 2)[1]
    empty = await h.client.post("/review/claim", headers=ORIGIN)
    assert empty.headers["location"] == "/review?notice=empty"


async def test_stale_token_shows_409(harness: Harness) -> None:
    h = harness
    item = await add(h)
    await sign_in(h)
    _, token = await claim(h)
    response = await h.client.post(
        f"/review/items/{item}/decision",
        data={"token": token + 7, "kind": "reject", "reason": "<b>off</b>"},
        headers=ORIGIN,
    )
    assert response.status_code == 409
    assert "is not current" in response.text
    assert 'value="&lt;b&gt;off&lt;/b&gt;"' in response.text  # the reason typed is kept
    assert (await stored(h, item)).state is model.ItemState.CLAIMED


async def test_correction_must_follow_the_schema(harness: Harness) -> None:
    h = harness
    item = await add(h)
    await sign_in(h)
    _, token = await claim(h)
    broken = '{"category": "<i>nope</i>", "urgency": 2, "next_action": "x"}'
    response = await h.client.post(
        f"/review/items/{item}/decision",
        data={"token": token, "kind": "correct", "corrected_answer": broken},
        headers=ORIGIN,
    )
    assert response.status_code == 422
    assert "breaks the route&#39;s output schema" in response.text
    assert "<i>nope</i>" not in response.text and "&lt;i&gt;nope&lt;/i&gt;" in response.text
    no_reason = await h.client.post(
        f"/review/items/{item}/decision",
        data={"token": token, "kind": "reject", "reason": ""},
        headers=ORIGIN,
    )
    assert no_reason.status_code == 422 and "reject needs a reason" in no_reason.text
    fixed = await h.client.post(
        f"/review/items/{item}/decision",
        data={"token": token, "kind": "correct", "corrected_answer": GOOD},
        headers=ORIGIN,
    )
    assert fixed.status_code == 303
    row = await stored(h, item)
    assert row.state is model.ItemState.CORRECTED and row.corrected_answer == GOOD


async def test_unknown_item(harness: Harness) -> None:
    h = harness
    await sign_in(h)
    response = await h.client.get("/review/items/<nope>")
    assert response.status_code == 404 and "&lt;nope&gt;" in response.text


# --- a real browser ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAVE_BROWSER = CHROMIUM.exists() and CHROMEDRIVER.exists()


def chromium(profile: str) -> Any:
    """Debian's Chromium, headless, with nothing reaching out to the network on its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def browser_session(base: str, key: str, edited: str) -> dict[str, Any]:
    """Sign in, claim, check the page, correct one item; claim another and approve it by key."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            wait = WebDriverWait(driver, 15)
            driver.get(f"{base}/review")
            wait.until(expected_conditions.url_contains("/review/login"))
            driver.find_element(By.ID, "key").send_keys(key)
            driver.find_element(By.ID, "sign-in").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "claim-next")))
            driver.find_element(By.ID, "claim-next").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "answer")))
            seen["first_url"] = driver.current_url
            seen["answer"] = driver.find_element(By.ID, "answer").text
            seen["low"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "li.low")]
            try:
                driver.switch_to.alert.dismiss()
                seen["alert"] = True
            except NoAlertPresentException:
                seen["alert"] = False
            # `e` focuses the edit box; then replace its text and save.
            ActionChains(driver).send_keys("e").perform()
            box = driver.find_element(By.ID, "corrected_answer")
            seen["focused"] = driver.switch_to.active_element == box
            box.clear()
            box.send_keys(edited)
            driver.find_element(By.ID, "save-correction").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
            seen["notice"] = driver.find_element(By.ID, "notice").text
            # The next item, approved with the `a` shortcut.
            driver.find_element(By.ID, "claim-next").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "approve-form")))
            seen["second_url"] = driver.current_url
            ActionChains(driver).send_keys("a").perform()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
            seen["notice2"] = driver.find_element(By.ID, "notice").text
        finally:
            driver.quit()
    return seen


@pytest.mark.heavy
async def test_in_a_browser(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    settings = make_settings(sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path))
    now = datetime.now(UTC)
    async with running_gateway(settings) as h:
        first = await add(h, answer=EVIL, route="chat", priority=5, now=now)
        second = await add(h, priority=1, now=now)
        edited = '{"category": "billing", "note": "<b>checked</b>"}'
        async with served(h.app) as base:
            seen = await asyncio.to_thread(browser_session, base, h.keys[Role.REVIEWER], edited)
        assert seen["first_url"].endswith(f"/review/items/{first}")
        assert "<script>alert(1)</script>" in seen["answer"]
        assert '=HYPERLINK(\\"http://x\\")' in seen["answer"]
        assert seen["alert"] is False
        assert seen["low"] == ["/category: 0.30"]
        assert seen["focused"] is True
        assert seen["notice"] == "Correction saved."
        assert seen["second_url"].endswith(f"/review/items/{second}")
        assert seen["notice2"] == "Approved."
        one, two = await stored(h, first), await stored(h, second)
        assert one.state is model.ItemState.CORRECTED and one.corrected_answer == edited
        assert two.state is model.ItemState.APPROVED
