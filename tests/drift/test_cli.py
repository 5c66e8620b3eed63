"""``loragate drift status | reference | report`` against a served gateway, and the HTML report
opened in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.auth import Role
from service.cli.app import app as cli
from service.drift.report import render as render_html
from service.drift.schemas import DriftOut
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.drift.test_api import VALID
from tests.drift.traffic import Traffic, rows, write
from tests.fake_engine import FakeEngine
from tests.review.test_ui import HAVE_BROWSER, chromium, routes_file

SHIFTED = Traffic(
    prompt_scale=3.0,
    categories=("billing", "technical", "legal"),
    shares=(0.2, 0.2, 0.6),
    confidence_shift=0.4,
)


@pytest.fixture
async def drifted(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    """A gateway whose route 'triage' drifted: 400 records as reference three hours ago, 300
    shifted ones in the last hour."""
    engine.default = VALID
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path),
        drift_reference_min_samples=400, drift_min_samples=100, drift_interval_s=0,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    now = datetime.now(UTC)
    async with running_gateway(settings) as h:
        sessions = h.app.state.gateway.sessions
        target = "fake-base"
        await write(sessions, rows(rng, 400, start=now - timedelta(hours=3), target=target))
        current = rows(rng, 300, start=now - timedelta(minutes=30), target=target, traffic=SHIFTED)
        await write(sessions, current)
        yield h


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["drift", *args])
    return result


async def test_status_reference_and_report_commands(drifted: Harness, tmp_path: Path) -> None:
    h = drifted
    key = h.keys[Role.SRE]
    out = tmp_path / "report.html"
    three_hours_ago = datetime.now(UTC) - timedelta(hours=3, minutes=1)
    since = three_hours_ago.strftime("%Y-%m-%dT%H:%M:%S")
    until = (three_hours_ago + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    async with served(h.app) as url:
        common = ["--key", key, "--url", url]
        table = await asyncio.to_thread(run, "status", "triage", *common)
        as_json = await asyncio.to_thread(run, "status", "triage", "--json", *common)
        pinned = await asyncio.to_thread(
            run, "reference", "triage", "--since", since, "--until", until, *common
        )
        unpinned = await asyncio.to_thread(run, "reference", "triage", "--automatic", *common)
        half = await asyncio.to_thread(run, "reference", "triage", "--since", since, *common)
        report = await asyncio.to_thread(run, "report", "triage", "--out", str(out), *common)
        refused = await asyncio.to_thread(run, "status", "triage", "--key", h.keys[Role.APP],
                                          "--url", url)  # fmt: skip
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0] == "route triage: fake-base, drift status drift"
    assert lines[1].startswith("reference (first_records): ") and "400 records" in lines[1]
    assert lines[2].startswith("current: ") and "(1 h, 300 records)" in lines[2]
    header = lines[4]
    assert header.split() == [
        "feature", "kind", "stat", "score", "p-value", "status", "reference", "current",
    ]  # fmt: skip
    body = {line.split()[0]: line.split() for line in lines[5:]}
    assert body["answer.category"][5] == "DRIFT" and body["prompt_tokens"][5] == "DRIFT"
    assert body["latency_ms"][5] == "ok" and body["ttft_ms"][5] == "insufficient"
    # Worst first, and the columns line up under the header.
    assert [row[5] for row in body.values()].index("ok") > 0
    column = header.index("status")
    assert all(line[column - 1] == " " for line in lines[5:])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["route"] == "triage"
    assert pinned.exit_code == 0, pinned.output
    assert "reference pinned to" in pinned.output and "400 records" in pinned.output
    assert unpinned.exit_code == 0 and "automatic" in unpinned.output
    assert half.exit_code == 1 and "needs --since and --until" in half.output
    assert refused.exit_code == 1 and "HTTP 403" in refused.output
    assert report.exit_code == 0, report.output
    assert out.exists() and "features, drift report of triage" in report.output
    # The report lists its features in the table's order: worst first.
    order = re.findall(r'<section class="feature" id="feature-([^"]+)"', out.read_text())
    assert order == [line.split()[0] for line in lines[5:]]


def test_the_report_escapes_what_comes_from_data() -> None:
    payload = {
        "route": "r<x>", "target": "t@1",
        "reference": {"since": None, "until": None, "samples": 0, "source": None},
        "current": {"since": None, "until": None, "samples": 0},
        "features": [{
            "name": "answer.kind", "kind": "category", "statistic": "js", "score": None,
            "p_value": None, "status": "insufficient", "threshold": {"warn": 0.1, "drift": 0.2},
            "reference": [], "current": [{"label": "<script>alert(1)</script>", "count": 1,
                                          "share": 1.0}],
        }],
    }  # fmt: skip
    page = render_html(DriftOut.model_validate(payload))
    assert "<script>" not in page and "&lt;script&gt;" in page and "r&lt;x&gt;" in page


def open_in_chromium(path: Path, screenshot: Path) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            driver.set_window_size(1200, 2400)
            driver.get(path.as_uri())
            seen["title"] = driver.title
            seen["overall"] = driver.find_element(By.ID, "overall").text
            sections = driver.find_elements(By.CSS_SELECTOR, "section.feature")
            seen["statuses"] = {
                s.get_attribute("id"): s.get_attribute("data-status") for s in sections
            }
            category = driver.find_element(By.ID, "feature-answer.category")
            charts = category.find_elements(By.TAG_NAME, "svg")
            seen["charts"] = len(charts)
            seen["bars"] = [len(c.find_elements(By.TAG_NAME, "rect")) for c in charts]
            seen["bar_heights"] = [
                float(r.get_attribute("height") or 0)
                for r in charts[1].find_elements(By.TAG_NAME, "rect")
            ]
            seen["score"] = category.find_element(By.CLASS_NAME, "score").text
            seen["external"] = driver.execute_script(
                "return performance.getEntriesByType('resource').length"
            )
            driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
    return seen


async def test_the_report_opens_in_a_browser(drifted: Harness, tmp_path: Path) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    report = await h_report(drifted)
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "report.png"
    seen = await asyncio.to_thread(open_in_chromium, page, shot)
    assert seen["title"] == "Drift of triage (fake-base)"
    assert seen["overall"].lower() == "drift"
    assert seen["statuses"]["feature-answer.category"] == "drift"
    assert seen["statuses"]["feature-latency_ms"] == "ok"
    assert len(seen["statuses"]) == len(report.features)
    # Side by side: the reference and the current window, each bin a bar; 'legal' is new.
    assert seen["charts"] == 2 and seen["bars"][0] == seen["bars"][1] == 6
    assert max(seen["bar_heights"]) > 0
    assert float(seen["score"]) > 0.2
    assert seen["external"] == 0  # self-contained: nothing loaded from elsewhere
    assert shot.stat().st_size > 10_000


async def h_report(h: Harness) -> DriftOut:
    r = await h.client.get("/v1/admin/drift/triage", headers=h.auth(Role.SRE))
    assert r.status_code == 200, r.text
    return DriftOut.model_validate(r.json())
