"""Output contracts and review end to end: `loragate serve` with its managed vLLM (the bundled
model), a schema-bound route, real logprobs, escalation to the review queue, a reviewer's
correction, the export, and `loragate adapters train` reading that export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from adapters.dataset import example_data, load_examples
from tests.conftest import prepared_model
from tests.real.live import LiveGateway
from tests.real.test_real_adapters import key_for

pytestmark = pytest.mark.slow
ROUTE = "ticket-triage"


@pytest.fixture(scope="module")
def keys(live: LiveGateway) -> tuple[str, str]:
    """(app, reviewer) keys on the session's gateway, whose `ticket-triage` route reviews every
    answer under 0.9 (tests/real/conftest.py)."""
    return key_for(live, "app"), key_for(live, "reviewer")


def tickets(n: int) -> list[list[dict[str, str]]]:
    examples = load_examples(Path(str(example_data("tickets.jsonl"))))[:n]
    return [[{"role": m.role, "content": m.content} for m in e.prompt] for e in examples]


@pytest.fixture(scope="module")
def answers(live: LiveGateway, keys: tuple[str, str]) -> list[dict[str, Any]]:
    gateway, (app, _) = live, keys
    out = []
    with httpx.Client(timeout=300) as http:
        for messages in tickets(4):
            r = http.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": ROUTE, "messages": messages, "temperature": 0},
                headers={"Authorization": f"Bearer {app}"},
            )
            assert r.status_code == 200, r.text
            out.append({**r.json(), "request_id": r.headers["x-request-id"]})
    return out


def test_a_schema_bound_route_returns_valid_json_scored_from_logprobs(
    answers: list[dict[str, Any]],
) -> None:
    schema = json.loads(example_data("tickets.schema.json").read_text())
    valid = [a for a in answers if a["loragate"]["schema_valid"]]
    assert valid, [a["choices"][0] for a in answers]
    for answer in answers:
        choice, meta = answer["choices"][0], answer["loragate"]
        assert choice["logprobs"] is None  # the client did not ask
        assert 0.0 <= meta["confidence"] <= 1.0
        if answer in valid:
            Draft202012Validator(schema).validate(json.loads(choice["message"]["content"]))
            assert set(meta["field_confidence"]) == {"/category", "/urgency", "/next_action"}
            # The free-text next_action is reported but does not pull the score down.
            assert meta["confidence_fields"] == ["/category", "/urgency"]
            assert meta["confidence"] == min(
                meta["field_confidence"][p] for p in meta["confidence_fields"]
            )
        else:  # grammar-constrained, so only a cut-off answer can break the schema
            assert choice["finish_reason"] == "length" and meta["review_id"] is not None


def test_low_confidence_answers_are_escalated_with_their_records(
    live: LiveGateway, keys: tuple[str, str], answers: list[dict[str, Any]]
) -> None:
    gateway, (_, reviewer) = live, keys
    low = [a for a in answers if a["loragate"]["confidence"] < 0.9]
    assert low, [a["loragate"]["confidence"] for a in answers]
    for answer in answers:
        record = gateway.wait_record(lambda r, i=answer["request_id"]: r["id"] == i)
        escalated = answer["loragate"]["confidence"] < 0.9
        assert bool(record["escalated"]) is escalated
        assert (answer["loragate"]["review_id"] is not None) is escalated
    items = httpx.get(
        f"{gateway.url}/v1/reviews/items", headers={"Authorization": f"Bearer {reviewer}"}
    ).json()
    assert {i["id"] for i in items} == {a["loragate"]["review_id"] for a in low}


@pytest.mark.timeout(1200)
def test_a_reviewer_corrects_in_the_browser_and_the_export_trains(
    live: LiveGateway, keys: tuple[str, str], answers: list[dict[str, Any]], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.review.test_ui import HAVE_BROWSER, chromium

    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    gateway, (_, reviewer) = live, keys
    headers = {"Authorization": f"Bearer {reviewer}"}
    escalated = [a for a in answers if a["loragate"]["review_id"]]
    corrected = '{"category":"billing","urgency":2,"next_action":"Check the invoice"}'
    driver = chromium(str(tmp_path / "profile"))
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(f"{gateway.url}/review")
        wait.until(expected_conditions.url_contains("/review/login"))
        driver.find_element(By.ID, "key").send_keys(reviewer)
        driver.find_element(By.ID, "sign-in").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "claim-next")))
        driver.find_element(By.ID, "claim-next").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "corrected_answer")))
        box = driver.find_element(By.ID, "corrected_answer")
        box.clear()
        box.send_keys(corrected)
        driver.find_element(By.ID, "save-correction").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
    finally:
        driver.quit()
    items = httpx.get(f"{gateway.url}/v1/reviews/items", headers=headers).json()
    done = [i for i in items if i["state"] == "corrected"]
    assert len(done) == 1 and json.loads(done[0]["corrected_answer"]) == json.loads(corrected)
    # The rest are approved through the API, so the export has more than one example.
    for _ in escalated[1:]:
        claim = httpx.post(f"{gateway.url}/v1/reviews/claim", json={}, headers=headers).json()
        decision = {"token": claim["token"], "kind": "approve"}
        url = f"{gateway.url}/v1/reviews/items/{claim['item']['id']}/decision"
        assert httpx.post(url, json=decision, headers=headers).status_code == 200
    out = tmp_path / "export"
    printed = gateway.cli("reviews", "export", "--out", str(out), "--val-fraction", "0.3")
    assert "snapshot" in printed
    lines = (out / "all.jsonl").read_text().splitlines()
    exported = [json.loads(line)["messages"][-1]["content"] for line in lines]
    assert corrected in exported and len(lines) == len(escalated)
    trained = gateway.cli(
        "adapters", "train", "--data", str(out / "all.jsonl"), "--name", "triage",
        "--out", str(tmp_path / "adapter"), "--epochs", "1", "--max-len", "256",
        "--val-fraction", "0.3", "--base-model-dir", str(prepared_model()),
    )  # fmt: skip
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists(), trained
