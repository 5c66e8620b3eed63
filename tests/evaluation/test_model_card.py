"""An adapter version's model card: its evaluations, its rollout stopped at evaluate, the audit
events on all of them and the drift of the route serving the stable version; JSON, HTML and
the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from service.auth import Role
from service.cli.app import app as cli
from service.db.models import AdapterVersion
from tests.conftest import Harness, served
from tests.evaluation import test_runs
from tests.evaluation.test_evaluate_step import evaluated
from tests.evaluation.test_runs import ROUTE, ended, start
from tests.rollout.test_rollouts import quick_spec

gw = test_runs.gw  # route 'triage' on triage@1; triage@2 answers billing to everything


async def test_the_card_gathers_evaluations_rollouts_audit_and_drift(
    gw: Harness, tmp_path: Path
) -> None:
    sre = gw.auth(Role.SRE)
    async with gw.app.state.gateway.sessions.begin() as session:
        await session.execute(
            update(AdapterVersion)
            .where(AdapterVersion.id == "triage@2")
            .values(changelog="labels from the <new> pipeline")
        )
    by_hand = await ended(gw, (await start(gw)).json()["id"])
    r = await gw.client.post(f"/v1/admin/rollouts/{ROUTE}", json=quick_spec(), headers=sre)
    assert r.status_code == 200, r.text
    back = await evaluated(gw)
    assert back["phase"] == "rolled_back"

    card = (await gw.client.get("/v1/admin/adapters/triage@2/card", headers=sre)).json()
    assert card["version"]["changelog"] == "labels from the <new> pipeline"
    assert [run["id"] for run in card["evaluations"]] == [by_hand["id"], back["evaluation_run"]]
    (rollout,) = card["rollouts"]
    assert rollout["phase"] == "rolled_back" and rollout["evaluation_run"] == back["evaluation_run"]
    assert rollout["events"][-1]["reason"].startswith("evaluation failed, before any live request")
    actions = {(e["action"], e["object"]) for e in card["audit"]}
    assert ("rollout.start", f"rollout:{rollout['id']}") in actions
    assert ("eval.run.start", f"eval_run:{by_hand['id']}") in actions
    assert card["serving"] == {}
    stable = (await gw.client.get("/v1/admin/adapters/triage@1/card", headers=sre)).json()
    assert len(stable["evaluations"]) == 2  # the baseline of both
    assert stable["serving"][ROUTE]["drift"]["status"] in {"ok", "insufficient"}

    page = await gw.client.get("/v1/admin/adapters/triage@2/card?format=html", headers=sre)
    assert page.headers["content-type"].startswith("text/html")
    assert "labels from the &lt;new&gt; pipeline" in page.text and "<new>" not in page.text
    assert f"data-run='{by_hand['id']}'" in page.text and "data-phase='rolled_back'" in page.text
    missing = await gw.client.get("/v1/admin/adapters/nobody@1/card", headers=sre)
    assert missing.status_code == 404

    key, runner, out = gw.keys[Role.SRE], CliRunner(), tmp_path / "card.html"
    async with served(gw.app) as url:
        shown = await asyncio.to_thread(
            runner.invoke, cli, ["adapters", "card", "triage@2", "--key", key, "--url", url]
        )
        args = ["adapters", "card", "triage@2", "--html", "--out", str(out)]
        written = await asyncio.to_thread(runner.invoke, cli, [*args, "--key", key, "--url", url])
    assert shown.exit_code == 0, shown.output
    assert f"rollout {rollout['id']} on {ROUTE}: rolled_back (evaluation failed" in shown.output
    assert written.exit_code == 0 and "data-phase='rolled_back'" in out.read_text()
