"""The rollout console at /console: sign-in, the rollouts list, one rollout's page, the SRE
commands and who may use them, and one run in a real browser.

The HTTP tests run on SQLite and PostgreSQL through the ASGI client on the rollout tests'
gateway (route 'chat' serving triage@1, triage@2 registered; ticks driven by the test). The
browser test drives Debian's Chromium with Selenium against the app served on a real port.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth import Role
from tests.conftest import Harness, served
from tests.review.test_ui import HAVE_BROWSER, chromium
from tests.rollout import test_rollouts
from tests.rollout.test_rollouts import Clock, shadowed, status

# The rollout tests' fixtures: a gateway with a route to roll out on, and the clock it ticks on.
gw = test_rollouts.gw
clock = test_rollouts.clock
ORIGIN = {"Origin": "http://gateway"}
PAGE = "/console/rollouts/chat"


def browser_of(h: Harness) -> httpx.AsyncClient:
    """A client of its own (its own cookies), as a second person's browser is."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://gateway")


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/console/login", data={"key": key}, headers=ORIGIN)


async def test_an_sre_sees_every_route_and_pauses_a_rollout(gw: Harness, clock: Clock) -> None:
    await shadowed(gw, clock, 0)
    assert (await gw.client.get("/console/rollouts")).headers["location"] == "/console/login"
    signed = await sign_in(gw.client, gw.keys[Role.SRE])
    assert (signed.status_code, signed.headers["location"]) == (303, "/console/rollouts")
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie

    listed = await gw.client.get("/console/rollouts")
    assert listed.status_code == 200
    assert "script-src 'nonce-" in listed.headers["content-security-policy"]
    row = listed.text.split('data-route="chat"')[1].split("</tr>")[0]
    assert f'href="{PAGE}"' in row and "triage@2" in row and "shadow" in row
    assert "1 of 2" in row  # the first step

    page = (await gw.client.get(PAGE)).text
    assert '<td class="phase" id="phase">shadow</td>' in page
    for offered in ('id="pause"', 'id="promote"', 'id="abort"'):
        assert offered in page
    assert 'id="resume"' not in page
    assert 'data-gate="error_rate"' in page and 'data-gate="agreement"' in page

    paused = await gw.client.post(f"{PAGE}/pause", data={"reason": "a look"}, headers=ORIGIN)
    assert (paused.status_code, paused.headers["location"]) == (303, f"{PAGE}?notice=pause")
    assert (await status(gw))["phase"] == "paused"
    page = (await gw.client.get(f"{PAGE}?notice=pause")).text
    assert '<td class="phase" id="phase">paused</td>' in page and 'id="resume"' in page
    assert '<td class="reason">a look</td>' in page and "Pause: done." in page

    # A command the phase does not allow: the control's 409, in words on the page.
    refused = await gw.client.post(f"{PAGE}/pause", headers=ORIGIN)
    assert refused.status_code == 303  # pausing again is idempotent
    await gw.client.post(f"{PAGE}/abort", headers=ORIGIN)
    conflict = await gw.client.post(f"{PAGE}/resume", headers=ORIGIN)
    assert conflict.status_code == 409 and 'id="error"' in conflict.text
    # A form posted from another site is refused before anything runs.
    other = await gw.client.post(f"{PAGE}/promote", headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and (await status(gw))["phase"] == "aborted"


async def test_a_reviewer_reads_without_buttons_and_is_refused_a_command(
    gw: Harness, clock: Clock
) -> None:
    await shadowed(gw, clock, 0)
    async with browser_of(gw) as reviewer:
        assert (await sign_in(reviewer, gw.keys[Role.REVIEWER])).status_code == 303
        page = await reviewer.get(PAGE)
        assert page.status_code == 200 and 'id="phase">shadow<' in page.text
        assert 'id="commands"' not in page.text and 'id="pause"' not in page.text
        refused = await reviewer.post(f"{PAGE}/pause", headers=ORIGIN)
        assert refused.status_code == 403
        assert "role &#39;reviewer&#39; may not change rollouts" in refused.text
    assert (await status(gw))["phase"] == "shadow"
    async with browser_of(gw) as app:
        denied = await sign_in(app, gw.keys[Role.APP])
        assert denied.status_code == 403 and "set-cookie" not in denied.headers


def browser_run(base: str, sre: str, reviewer: str, shot: Path) -> dict[str, Any]:
    """The SRE signs in, opens the rollout from the list and pauses it (screenshot); then a
    reviewer signs in, sees no buttons, and a POST from the page is refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            wait = WebDriverWait(driver, 15)

            def sign_in_as(key: str) -> None:
                driver.get(f"{base}/console/rollouts")
                wait.until(expected_conditions.url_contains("/console/login"))
                driver.find_element(By.ID, "key").send_keys(key)
                driver.find_element(By.ID, "sign-in").click()
                wait.until(expected_conditions.presence_of_element_located((By.ID, "rollouts")))

            sign_in_as(sre)
            seen["listed"] = driver.find_element(By.CSS_SELECTOR, 'tr[data-route="chat"]').text
            driver.find_element(By.LINK_TEXT, "chat").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "pause")))
            seen["before"] = driver.find_element(By.ID, "phase").text
            driver.find_element(By.ID, "pause").click()
            wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
            seen["after"] = driver.find_element(By.ID, "phase").text
            seen["resume"] = bool(driver.find_elements(By.ID, "resume"))
            driver.set_window_size(1280, 1400)
            seen["shot"] = driver.save_screenshot(str(shot))
            driver.find_element(By.CSS_SELECTOR, "header button").click()  # sign out
            wait.until(expected_conditions.url_contains("/console/login"))

            sign_in_as(reviewer)
            driver.get(f"{base}/console/rollouts/chat")
            wait.until(expected_conditions.presence_of_element_located((By.ID, "phase")))
            seen["reviewer_buttons"] = driver.find_elements(By.CSS_SELECTOR, ".commands button")
            seen["reviewer_post"] = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/console/rollouts/chat/resume', {method: 'POST',"
                " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: ''})"
                ".then(r => done(r.status), e => done(String(e)));"
            )
        finally:
            driver.quit()
    return seen


@pytest.mark.heavy
async def test_in_a_browser(gw: Harness, clock: Clock, tmp_path: Path) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    if not gw.url.startswith("sqlite"):
        pytest.skip("one browser run is enough: the HTTP tests cover both databases")
    await shadowed(gw, clock, 0)
    shot = tmp_path / "console-rollout.png"
    async with served(gw.app) as base:
        seen = await asyncio.to_thread(
            browser_run, base, gw.keys[Role.SRE], gw.keys[Role.REVIEWER], shot
        )
    assert "triage@2" in seen["listed"] and "shadow" in seen["listed"]
    assert (seen["before"], seen["after"], seen["resume"]) == ("shadow", "paused", True)
    assert seen["shot"] is True and shot.read_bytes().startswith(b"\x89PNG")
    assert seen["reviewer_buttons"] == [] and seen["reviewer_post"] == 403
    assert (await status(gw))["phase"] == "paused"
