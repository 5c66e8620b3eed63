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
    assert lines[3].startswith("judged as a route: 7 features tested at a 1.0 % false-alarm")
    assert lines[4].startswith("minimums: reference 400, window 100 (measured at 250 / 100:")
    header = lines[6]
    assert header.split() == [
        "feature", "kind", "stat", "score", "p-value", "adj.", "p", "status", "reference",
        "current",
    ]  # fmt: skip
    end = lines.index("", 6)
    features = lines[7:end]
    body = {line.split()[0]: line.split() for line in features}
    assert body["answer.category"][6] == "DRIFT" and body["prompt_tokens"][6] == "DRIFT"
    assert body["answer.urgency"][6] == "ok" and "latency_ms" not in body
    # Worst first, and the columns line up under the header.
    assert [row[6] for row in body.values()].index("ok") > 0
    column = header.index("status")
    assert all(line[column - 1] == " " for line in features)
    # Service health after it, against the gateway's default targets; never drift.
    assert lines[end + 1] == "service ok (against the route's targets; never drift)"
    service = {line.split()[0]: line.split() for line in lines[end + 3 : end + 7]}
    assert service["latency_p95_ms"][-1] == "ok" and service["ttft_p95_ms"][-1] == "insufficient"
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
    assert order == [line.split()[0] for line in features]
    assert '<section class="service" id="service" data-status="ok">' in out.read_text()


def test_the_minimums_command_prints_what_each_choice_costs() -> None:
    result = run("minimums")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "at most its false-alarm rate" in lines[0]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:]}
    assert rows[("500", "200")][2:4] == ["1.0", "%"]  # the defaults: false alarms held at 1 %
    assert rows[("50", "20")][-2:] == ["36.8", "%"]  # tiny windows miss most shuffled mixes


def test_the_report_escapes_what_comes_from_data() -> None:
    payload = {
        "route": "r<x>", "target": "t@1", "status": "insufficient",
        "reference": {"since": None, "until": None, "samples": 3, "source": None, "needed": 500,
                      "ready": False, "ready_in_s": None},
        "current": {"since": None, "until": None, "samples": 0},
        "judgement": {"false_alarm_rate": 0.01, "p_value": None, "tested": 0,
                      "min_samples": 200, "reference_min_samples": 500, "measured": None},
        "features": [{
            "name": "answer.kind", "kind": "category", "statistic": "js", "score": None,
            "p_value": None, "adjusted_p_value": None, "status": "insufficient",
            "threshold": {"warn": 0.1, "drift": 0.2},
            "reference": [], "current": [{"label": "<script>alert(1)</script>", "count": 1,
                                          "share": 1.0}],
        }],
        "service": {"status": "insufficient", "signals": [], "error_classes": {"<b>": 1}},
    }  # fmt: skip
    page = render_html(DriftOut.model_validate(payload))
    assert "<script>" not in page and "&lt;script&gt;" in page and "r&lt;x&gt;" in page
    assert "3 of 500 records (not ready; no traffic in the last day)" in page


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
            seen["service"] = driver.find_element(By.ID, "service").get_attribute("data-status")
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


@pytest.mark.heavy
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
    assert seen["statuses"]["feature-answer.urgency"] == "ok"
    assert seen["service"] == "ok"  # service health beside the drift, not a feature
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
