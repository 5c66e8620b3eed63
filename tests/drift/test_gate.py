"""The rollout gate ``output_drift``: the candidate's categorical answer fields against stable's
over the same window (Jensen-Shannon distance). Pure tick by tick, then through the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rollout.core.figures import ArmFigures, Sample, Window, window
from rollout.core.gates import Verdict, judge
from rollout.core.spec import GateName, RolloutSpec
from rollout.core.split import Arm
from service.auth import Role
from tests.adapters.test_placement import add_version
from tests.conftest import chat_body, make_settings, running_gateway
from tests.drift.test_api import CHAT, VALID
from tests.fake_engine import Behaviour, FakeEngine
from tests.review.test_ui import routes_file
from tests.rollout.test_rollouts import Clock, flushed

TECHNICAL = Behaviour(
    tokens=['{"category":', '"technical",', '"urgency":', "2,", '"next_action":', '"Reboot"}']
)


def spec(**thresholds: Any) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "candidate": "t@2",
            "steps": [{"kind": "shadow", "weight": 100, "min_duration_s": 0, "min_samples": 50}],
            "gates": ["output_drift"],
            "thresholds": thresholds,
        }
    )


def arm(**counts: dict[str, int]) -> ArmFigures:
    return ArmFigures(samples=1000, output_fields=counts)


def verdict(stable: ArmFigures, candidate: ArmFigures) -> tuple[Verdict, str]:
    s = spec()
    (result,) = judge(s, s.steps[0], Window(stable, candidate))
    assert result.gate is GateName.OUTPUT_DRIFT
    return result.verdict, result.detail


def test_the_same_category_mix_passes_and_a_different_one_fails() -> None:
    stable = arm(category={"billing": 600, "technical": 400})
    assert verdict(stable, arm(category={"billing": 580, "technical": 420}))[0] is Verdict.PASS
    moved, detail = verdict(stable, arm(category={"billing": 100, "technical": 900}))
    assert moved is Verdict.FAIL and detail.startswith("category: Jensen-Shannon distance")
    # The worst field decides.
    two = verdict(
        arm(category={"a": 600}, urgency={"1": 500, "2": 500}),
        arm(category={"a": 600}, urgency={"3": 1000}),
    )
    assert two[0] is Verdict.FAIL and two[1].startswith("urgency")


def test_too_few_answers_or_no_fields_is_inconclusive_never_a_pass() -> None:
    few = verdict(arm(category={"a": 60}), arm(category={"a": 49}))
    assert few == (
        Verdict.INCONCLUSIVE, "too few answers: no answer field with 50 values on both arms"
    )  # fmt: skip
    assert verdict(arm(), arm())[0] is Verdict.INCONCLUSIVE
    # The same mix over 100 answers each cannot show the distance is small: undecided.
    same = verdict(arm(category={"b": 60, "t": 40}), arm(category={"b": 58, "t": 42}))
    assert same[0] is Verdict.INCONCLUSIVE and "undecided" in same[1]


def test_figures_count_the_answers_values_per_arm() -> None:
    samples = [
        Sample(Arm.STABLE, 200, 10.0, fields={"category": "billing", "score": 3.5}),
        Sample(Arm.SHADOW, 200, 10.0, fields={"category": "technical"}),
        Sample(Arm.SHADOW, 500, 10.0, fields={"category": "billing"}),  # failed: not counted
        Sample(Arm.SHADOW, 200, 10.0, fields=None),
    ]
    w = window(samples, Arm.SHADOW, ("category", "score"))
    assert w.stable.output_fields == {"category": {"billing": 1}}  # numbers are not categories
    assert w.candidate.output_fields == {"category": {"technical": 1}}


def test_the_spec_takes_the_gate_and_its_thresholds() -> None:
    s = spec(max_output_drift=0.15, output_drift_fields=["category"])
    assert s.thresholds.max_output_drift == 0.15
    assert s.thresholds.output_drift_fields == ("category",)
    assert spec().thresholds.max_output_drift == 0.2


async def test_a_candidate_answering_another_category_mix_fails_the_gate_in_shadow(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    clock = Clock()
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path),
        rollout_tick_s=3600, drift_interval_s=0,
    )  # fmt: skip
    async with running_gateway(settings, clock=clock) as h:
        await add_version(h, "triage", 1, tmp_path)
        await add_version(h, "triage", 2, tmp_path)
        sre = h.auth(Role.SRE)
        r = await h.client.put(
            "/v1/admin/routes/triage/target", json={"target": "triage@1"}, headers=sre
        )
        assert r.status_code == 200, r.text
        engine.by_model["triage@1"], engine.by_model["triage@2"] = VALID, TECHNICAL
        body = {
            "candidate": "triage@2",
            "steps": [{"kind": "shadow", "weight": 100, "min_duration_s": 1, "min_samples": 6}],
            "gates": ["error_rate", "output_drift"],
            # As in the rollout tests' quick spec: small samples decide only with a wide
            # tolerance and a high alpha.
            "thresholds": {"max_error_rate_increase": 0.3},
            "alpha": 0.5,
            "progress_deadline_s": 600,
        }
        started = await h.client.post("/v1/admin/rollouts/triage", json=body, headers=sre)
        assert started.status_code == 200, started.text
        control = h.app.state.rollouts
        await control.tick_all()
        answers = await asyncio.gather(
            *(h.client.post(CHAT, json=chat_body("triage"), headers=h.auth()) for _ in range(24))
        )
        assert {a.status_code for a in answers} == {200}
        await flushed(h, "shadow", 24)
        clock.advance(5)
        await control.tick_all()
        status = (await h.client.get("/v1/admin/rollouts/triage", headers=sre)).json()
        gates = {g["gate"]: g for g in status["last_verdicts"]}
        assert gates["output_drift"]["verdict"] == "fail", gates
        assert gates["output_drift"]["candidate"] == 1.0  # billing against technical: disjoint
        assert gates["error_rate"]["verdict"] == "pass"
        assert status["last_figures"]["candidate"]["output_fields"]["category"] == {"technical": 24}
        assert status["last_figures"]["stable"]["output_fields"]["urgency"] == {"2": 24}
