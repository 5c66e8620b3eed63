"""The tutorial's demo parts against the fake engine: the route and spec files `adapters demo`
writes, the traffic clients, and the demo reviewer working the queue through the real API.
(tests/real/test_tutorial.py runs the whole tutorial on real vLLM.)"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters import demo
from rollout.core.spec import RolloutSpec
from service.auth import Role
from service.evaluation.cases import kind_counts, parse_jsonl
from service.routes.config import load_routes_file
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.fake_engine import Behaviour, FakeEngine

# A schema-valid answer: billing, urgency 2; the urgency token unsure, so it is escalated.
TOKENS = ['{"', "category", '":"', "billing", '","', "urgency", '":', "2", ',"', "next_action",
          '":"', "Refund", '"}']  # fmt: skip
UNSURE = [0.0] * len(TOKENS)
UNSURE[TOKENS.index("2")] = -2.0


def test_the_demo_writes_a_route_that_loads_and_a_spec_that_validates(tmp_path: Path) -> None:
    demo.write_route_files(tmp_path)
    (spec,) = load_routes_file(tmp_path / "routes.yaml")
    assert spec.name == demo.ROUTE and isinstance(spec.output_schema, dict)
    assert spec.output_schema["required"] == ["category", "urgency", "next_action"]
    rollout = RolloutSpec.model_validate(
        {**json.loads((tmp_path / "rollout.json").read_text()), "candidate": "ticket-triage@2"}
    )
    assert rollout.steps[0].kind == "shadow" and "agreement" in rollout.gates
    cases = parse_jsonl((tmp_path / "eval-pack.jsonl").read_text())
    assert kind_counts(cases) == {"held_out": 12, "injection": 2, "formatting": 2}
    assert all(case.fields == ("category",) for case in cases)
    categories = Counter(json.loads(case.expected)["category"] for case in cases[:12])
    assert categories == dict.fromkeys(demo.PACK_CATEGORIES, 3)


def test_the_demo_reviewer_approves_right_answers_and_corrects_the_others() -> None:
    truth = demo.bundled_answers()
    ticket, expected = next(iter(truth.items()))
    request = json.dumps({"messages": [{"role": "user", "content": ticket}]})
    right = {"request_body": request, "answer": json.dumps({**expected, "next_action": "x"})}
    assert demo.review_decision(right, truth) == {"kind": "approve"}
    wrong = {"request_body": request, "answer": json.dumps({**expected, "urgency": 0})}
    assert demo.review_decision(wrong, truth) == {
        "kind": "correct", "corrected_answer": expected,
    }  # fmt: skip
    assert demo.review_decision({**right, "answer": "not json"}, truth)["kind"] == "correct"
    other = json.dumps({"messages": [{"role": "user", "content": "no such ticket"}]})
    assert demo.review_decision({"request_body": other}, truth)["kind"] == "reject"
    assert demo.review_decision({"request_body": None}, truth)["kind"] == "reject"


@pytest.fixture
async def gw(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    demo.write_route_files(tmp_path)
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=tmp_path / "routes.yaml"
    )
    async with running_gateway(settings) as harness:
        yield harness


async def test_traffic_then_the_demo_reviewer_works_the_queue(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=UNSURE)
    async with served(gw.app) as url:
        key = gw.keys[Role.APP]
        report = await demo.send_traffic(
            url, key, demo.ROUTE, concurrency=2, duration_s=60, count=6
        )
        assert report.sent == 6 and report.statuses == {200: 6} and report.escalated == 6
        assert report.line() == "sent 6 requests (200 x6), 6 escalated"
        prompts = demo.ticket_prompts()
        asked = sorted(json.dumps(r["messages"]) for r in engine.requests)
        assert asked == sorted(json.dumps(p) for p in prompts[:6])
        truth = demo.bundled_answers()
        right = sum(
            truth[p[-1]["content"]]["category"] == "billing"
            and truth[p[-1]["content"]]["urgency"] == 2
            for p in prompts[:6]
        )
        # Escalated answers reach the queue with their records, which are shipped after the
        # answers return: wait for them so the reviewer finds all six.
        assert len(await gw.records(6, timeout_s=60)) == 6
        reviewer = gw.keys[Role.REVIEWER]
        reviewed = await asyncio.to_thread(demo.review_queue, url, reviewer, demo.ROUTE, 100)
    assert reviewed.decided == {"approve": right, "correct": 6 - right}
    items = (await gw.client.get("/v1/reviews/items", headers=gw.auth(Role.REVIEWER))).json()
    states = sorted(i["state"] for i in items)
    assert states == sorted(["approved"] * right + ["corrected"] * (6 - right))


@pytest.mark.slow
# The session's demo set is trained under this test: on a cold cache, beside the real tier's two
# vLLMs, that took over ten minutes (the subprocess itself is limited to 30).
@pytest.mark.timeout(1800)
def test_the_demo_trains_a_good_a_shuffled_and_a_second_good_version(demo_set: Path) -> None:
    """The three versions the tutorial rolls out, trained for real on the bundled model."""
    manifests = {
        label: json.loads((demo_set / label / "manifest.json").read_text())
        for label, _, _ in demo.VERSIONS
    }
    for label, seed, shuffled in demo.VERSIONS:
        manifest = manifests[label]
        assert (manifest["seed"], manifest["hyperparameters"]["labels_shuffled"]) == (
            seed, shuffled,
        )  # fmt: skip
        assert (demo_set / label / "adapter_model.safetensors").stat().st_size > 0
    good, bad, good2 = (manifests[label] for label in ("good", "bad", "good2"))
    # The held-out answers are the true ones: the good versions learn them, the shuffled one
    # learns worse.
    assert good["val_loss_after"] < good["val_loss_before"]
    assert good2["val_loss_after"] < good2["val_loss_before"]
    assert bad["val_loss_after"] > good["val_loss_after"]
    (route,) = load_routes_file(demo_set / "routes.yaml")
    assert route.name == demo.ROUTE
