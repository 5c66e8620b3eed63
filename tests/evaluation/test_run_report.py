"""A run's HTML report: from the API and the CLI, escaped, and read in headless Chromium."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.auth import Role
from service.cli.app import app as cli
from tests.conftest import Harness
from tests.evaluation import test_runs
from tests.evaluation.test_runs import ended, start
from tests.fake_engine import FakeEngine
from tests.review.test_ui import HAVE_BROWSER, chromium

gw = test_runs.gw  # route 'triage' on triage@1 (knows), triage@2 answers billing; pack gold@1


async def report_of(h: Harness) -> tuple[str, str]:
    run = await ended(h, (await start(h)).json()["id"])
    r = await h.client.get(f"/v1/admin/eval/runs/{run['id']}/report", headers=h.auth(Role.SRE))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text
    return run["id"], r.text


async def test_the_report_shows_the_verdict_matrices_and_each_failed_case(
    gw: Harness, engine: FakeEngine, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    engine.writers["triage@2"] = lambda _: ['{"category": "<b>billing</b>", "urgency": 2}']
    run_id, page = await report_of(gw)
    assert "data-verdict='worse'" in page and "<script" not in page
    assert page.count("<tr data-case=") == 12  # every case failed: a category no one expects
    assert "&lt;b&gt;billing&lt;/b&gt;" in page and "<b>billing</b>" not in page
    assert (
        "id='confusion-candidate-category'" in page and "id='confusion-baseline-category'" in page
    )
    assert "language=de" in page
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    out = tmp_path / "run.html"
    written = await asyncio.to_thread(
        CliRunner().invoke, cli, ["eval", "runs", "report", run_id, "--out", str(out)]
    )
    assert written.exit_code == 0, written.output
    assert out.read_text(encoding="utf-8") == page
    missing = await gw.client.get("/v1/admin/eval/runs/run_x/report", headers=gw.auth(Role.SRE))
    assert missing.status_code == 404


def read_in_chromium(path: Path) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile)
        try:
            driver.set_page_load_timeout(30)
            driver.get(path.as_uri())
            seen["title"] = driver.title
            seen["verdict"] = driver.find_element(By.ID, "verdict").get_attribute("data-verdict")
            seen["failed"] = len(driver.find_elements(By.CSS_SELECTOR, "#failed tr[data-case]"))
            matrix = driver.find_element(By.ID, "confusion-candidate-category")
            seen["hits"] = [td.text for td in matrix.find_elements(By.CSS_SELECTOR, "td.hit")]
            seen["rates"] = driver.find_element(By.ID, "rates").text
            seen["external"] = driver.execute_script(
                "return performance.getEntriesByType('resource').length"
            )
        finally:
            driver.quit()
    return seen


@pytest.mark.heavy
async def test_the_report_reads_in_a_browser(gw: Harness, tmp_path: Path) -> None:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    run_id, page = await report_of(gw)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    seen = await asyncio.to_thread(read_in_chromium, path)
    assert seen["title"] == f"Evaluation {run_id}: triage@2 on triage/gold@1"
    assert seen["verdict"] == "worse"
    assert seen["failed"] == 9  # billing was right three times
    # The diagonal, rows in order (account, billing, shipping, technical): only billing right.
    assert seen["hits"] == ["", "3", "", ""]
    assert "cases passed 3/12 = 25.0 %" in seen["rates"]
    assert seen["external"] == 0
