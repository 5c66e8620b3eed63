"""Offline evaluation on real vLLM: a LoRA version answers a pack (the last four bundled
tickets, and the demo pack's two injected instructions and two messy tickets) through `loragate
eval run`, under the schema-bound route's contract, against the base model; the run is stored
once with its figures and its HTML report. Evaluation calls are not traffic: no request record
is written. (The pack's inputs are held out of the route's later training exports: the review
test of this package exports answers to the first bundled tickets, so the pack takes the last.)

(How well the demo's trained versions do on a pack was measured once and is in the README,
"Evaluation runs": this test needs no trained version, so the real tier does not wait for the
demo set.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import demo
from adapters.dataset import example_data
from tests.conftest import prepared_model
from tests.real.live import LiveGateway
from tests.real.one_gateway.conftest import REVIEWED_ROUTE
from tests.real.test_real_adapters import key_for, make_adapters

pytestmark = pytest.mark.slow
TICKETS = 4


def pack_cases() -> list[dict[str, Any]]:
    lines = example_data("tickets.jsonl").read_text().splitlines()[-TICKETS:]
    tickets = [{**json.loads(line), "fields": ["category"]} for line in lines]
    suite = [case for case in demo.pack_cases() if case.get("kind") in {"injection", "formatting"}]
    return tickets + suite


CASES = TICKETS + 4


@pytest.fixture(scope="module")
def evaluated(live: LiveGateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random-weight LoRA version registered as `evaluated@1`, the demo pack on the
    schema-bound route, and one run of it against the base model (the route's stable)."""
    adapter = tmp_path_factory.mktemp("evaluated") / "v1"
    make_adapters(prepared_model(), [(adapter, 7, False, 8)])
    live.cli("adapters", "register", "evaluated", str(adapter))
    sre = key_for(live, "sre")
    made = httpx.post(
        f"{live.url}/v1/admin/eval/packs", headers={"Authorization": f"Bearer {sre}"},
        json={"route": REVIEWED_ROUTE, "name": "demo", "cases": pack_cases()}, timeout=60,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    records_before = len(live.records())
    printed = live.cli(
        "eval", "run", REVIEWED_ROUTE, "evaluated@1", "--pack", "demo@1", "--concurrency", "4",
        "--key", sre, "--url", live.url,
    )  # fmt: skip
    run_id = printed.splitlines()[0].split()[1].rstrip(":")
    report = Path(live.workdir) / "run.html"
    live.cli("eval", "runs", "report", run_id, "--out", str(report))
    shown = json.loads(live.cli("eval", "runs", "show", run_id, "--json"))
    return {**shown, "printed": printed, "report": report.read_text(),
            "records_added": len(live.records()) - records_before}  # fmt: skip


def test_a_pack_runs_through_the_real_engine_under_the_route_contract(
    evaluated: dict[str, Any],
) -> None:
    assert evaluated["status"] == "done", evaluated["printed"]
    assert evaluated["baseline_ref"] == "stable" and evaluated["baseline"]  # the base model
    arms = evaluated["figures"]["arms"]
    for arm in ("candidate", "baseline"):
        figures = arms[arm]
        assert figures["failed_calls"] == 0 and figures["passed"]["n"] == CASES
        # Grammar-constrained to the route's schema: only a cut-off answer could break it.
        assert figures["schema_valid"]["n"] == CASES
        assert figures["by_kind"]["injection"]["n"] == 2
        assert set(figures["fields"]) == {"category"} and figures["tokens"]["completion"] > 0
    verdict = evaluated["figures"]["comparison"]["passed"]["verdict"]
    assert verdict in {"better", "worse", "no detectable difference"}
    assert evaluated["records_added"] == 0  # an evaluation is not traffic
    assert "id='confusion-candidate-category'" in evaluated["report"]
    print(f"\n{evaluated['printed']}")
