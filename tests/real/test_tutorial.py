"""The README's "Tutorial: ship a fine-tune safely", run verbatim on real vLLM.

Every ```bash block of that section is run, in order, in one bash process with `set -euo
pipefail`, against `loragate serve` with its managed vLLM, in the environment the tutorial asks
for (the server's data dir, database and port). Then the story is checked from the gateway's
own records: the broken version was rolled back in shadow and answered no client, the good one
was promoted, reviewers' decisions became a recorded snapshot, and the next version was
registered from it. The timeline of each step is printed (run with -s to see it).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import prepared_model
from tests.real.live import ROOT, LiveGateway, serving

pytestmark = pytest.mark.slow
SECTION = "## Tutorial: ship a fine-tune safely"
STEP_MARK = "::step"


def tutorial_blocks(readme: Path) -> list[str]:
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_finds_every_step() -> None:
    blocks = tutorial_blocks(ROOT / "README.md")
    assert len(blocks) == 10
    assert "loragate adapters demo\n" in blocks[1]
    assert "rollout start ticket-triage ticket-triage@2" in blocks[5]
    assert "--data-snapshot $SNAPSHOT" in blocks[9]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("tutorial"), prepared_model())
    # What the tutorial asks of the second shell: the server's environment, port included.
    gateway.env["LORAGATE_PORT"] = str(gateway.port)
    gateway.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{gateway.env['PATH']}"
    with serving(gateway):
        yield gateway


def run_tutorial(gateway: LiveGateway) -> tuple[str, list[tuple[int, float]]]:
    """Run the blocks; return the output and (step, seconds) for each."""
    blocks = tutorial_blocks(ROOT / "README.md")
    # A failing step ends the script; the traffic it started in the background ends with it.
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "".join(
        f"echo '{STEP_MARK} {i + 1}' $(date +%s.%N)\n{block}" for i, block in enumerate(blocks)
    )
    script += f"echo '{STEP_MARK} end' $(date +%s.%N)\n"
    done = subprocess.run(
        ["bash", "-c", script], env=gateway.env, cwd=gateway.workdir,
        capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert done.returncode == 0, failure_report(done, gateway)
    marks = [line.split() for line in done.stdout.splitlines() if line.startswith(STEP_MARK)]
    times = [float(mark[2]) for mark in marks]
    steps = [
        (int(mark[1]), later - now)
        for mark, now, later in zip(marks, times, times[1:], strict=False)
    ]
    return done.stdout, steps


def failure_report(done: subprocess.CompletedProcess[str], gateway: LiveGateway) -> str:
    """What failed first (shown in full even where a long report is cut in the middle): the
    script's errors and the gateway's warnings; then the tails of the output and logs."""
    log = (gateway.workdir / "gateway.log").read_text(errors="replace").splitlines()
    notable = [line for line in log if re.search(r" (WARNING|ERROR) |closed the connection", line)]
    return "\n".join(
        ["stderr:", done.stderr[-2000:], "gateway warnings:", *notable[-30:],
         "stdout:", done.stdout[-4000:], gateway.tail()]
    )  # fmt: skip


def rows(gateway: LiveGateway, query: str, *args: object) -> list[dict[str, Any]]:
    with sqlite3.connect(gateway.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query, args)]


def below_threshold(records: list[dict[str, Any]], threshold: float) -> str:
    judged = [r["confidence"] for r in records if r["confidence"] is not None]
    low = sum(c < threshold for c in judged)
    return f"{low}/{len(judged)}" if judged else "-"


# The whole loop: training three versions, two rollouts, review, export, training the next.
@pytest.mark.timeout(3600)
def test_the_tutorial_runs_verbatim_and_tells_good_from_bad(live: LiveGateway) -> None:
    started = time.monotonic()
    output, steps = run_tutorial(live)
    rollouts = rows(
        live, "SELECT * FROM rollouts WHERE route = 'ticket-triage' ORDER BY created_at"
    )
    assert [(r["candidate"], r["phase"]) for r in rollouts] == [
        ("ticket-triage@2", "rolled_back"),
        ("ticket-triage@3", "promoted"),
    ], output[-4000:]
    bad, good = rollouts
    reason = rows(
        live, "SELECT reason FROM rollout_events WHERE rollout_id = ? ORDER BY version DESC",
        bad["id"],
    )[0]["reason"]  # fmt: skip
    assert "agreement" in reason
    records = live.records()
    bad_answers = [r for r in records if r["target"] == "ticket-triage@2" and r["arm"] != "shadow"]
    bad_shadows = [r for r in records if r["rollout_id"] == bad["id"] and r["arm"] == "shadow"]
    assert bad_answers == [] and bad_shadows
    canary = [r for r in records if r["rollout_id"] == good["id"] and r["arm"] == "canary"]
    assert canary and {r["target"] for r in canary} == {"ticket-triage@3"}
    clients = [r for r in records if r["route"] == "ticket-triage" and r["arm"] != "shadow"]
    assert {r["status_code"] for r in clients} == {200}
    route = rows(live, "SELECT target FROM routes WHERE name = 'ticket-triage'")[0]
    assert route["target"] == "ticket-triage@3"

    decided = rows(live, "SELECT state FROM review_items WHERE state != 'pending'")
    manifest = json.loads((live.workdir / "ticket-export" / "manifest.json").read_text())
    snapshot = rows(live, "SELECT id FROM training_snapshots")
    assert [s["id"] for s in snapshot] == [manifest["snapshot_id"]]
    newest = rows(live, "SELECT id, data_snapshot_id FROM adapter_versions ORDER BY created_at")
    assert newest[-1] == {"id": "ticket-triage@4", "data_snapshot_id": manifest["snapshot_id"]}

    # Shadow answers are never escalated; whether they would have been is their confidence
    # against the route's threshold, the same rule as for client answers.
    threshold = 0.4  # demo/routes.yaml
    low = {
        target: below_threshold(
            [r for r in records if r["target"] == target and r["status_code"] == 200], threshold
        )
        for target in ("ticket-triage@1", "ticket-triage@2", "ticket-triage@3")
    }
    names = {1: "keys", 2: "demo (train 3)", 3: "register 3", 4: "route + set-target",
             5: "traffic", 6: "bad rollout", 7: "good rollout", 8: "review", 9: "export",
             10: "train + register next"}  # fmt: skip
    print(f"\ntutorial on real vLLM, {time.monotonic() - started:.0f} s in all:")
    for step, seconds in steps:
        print(f"  {step:>2}. {names.get(step, '?'):<24}{seconds:7.1f} s")
    print(f"  bad: rolled back in shadow, {len(bad_shadows)} shadow calls, 0 client answers; "
          f"reason: {reason}")  # fmt: skip
    print(f"  good: promoted, {len(canary)} canary answers; under the threshold (of answers): "
          f"{low}; review decisions: {len(decided)}; export: {manifest['counts']}")  # fmt: skip
