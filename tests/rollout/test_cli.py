"""The ``loragate rollout status`` view: aligned columns, human units, the watch loop. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from rollout import cli as cli_rollout
from rollout.cli import CLEAR_SCREEN, duration, render, watch

CELL = re.compile(r"\S+(?: \S+)*")  # cells hold single spaces ("850 ms"); columns are 2 apart


def arm(samples: int, p95: float | None, **extra: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "samples": samples, "error_rate": 0.0, "latency_p95_ms": p95, "schema_valid_rate": None,
        "escalation_rate": None, "confidence_mean": 0.00001234, "agreement_by_field": {},
    }  # fmt: skip
    return {**figures, **extra}


def status(stable: dict[str, Any], candidate: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "ro1", "route": "chat", "stable": "triage@1", "candidate": "triage@2",
        "phase": "canary", "paused_phase": None, "step": 1, "steps": 2, "canary_weight": 50,
        "shadow_percent": 0, "failures": 0, "inconclusive": 0, "last_verdicts": [],
        "analysis": {
            "window_start": "2026-11-26T12:00:00Z", "verdict": "fail",
            "stable": stable, "candidate": candidate,
            "gates": [
                {"gate": "latency_p95_ratio", "verdict": "fail", "detail": "x31000 (at most x1.5)"},
                {"gate": "error_rate", "verdict": "inconclusive", "detail": "no data"},
            ],
        },
        "events": [], **extra,
    }  # fmt: skip


def table(text: str, first: str) -> list[list[re.Match[str]]]:
    """The cells of the lines from the one starting with ``first`` (after the indent) on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    rows = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        rows.append(list(CELL.finditer(line)))
    return rows


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (None, "-"), (0.0, "0.0 ms"), (0.4, "0.4 ms"), (9.94, "9.9 ms"), (9.96, "10 ms"),
        (850, "850 ms"), (999.4, "999 ms"), (999.6, "1.0 s"), (12_400, "12.4 s"),
        (123_456, "123 s"), (1.5e9, "1500000 s"),
    ],
)  # fmt: skip
def test_latencies_read_in_human_units(ms: float | None, shown: str) -> None:
    assert duration(ms) == shown


def test_the_arm_table_keeps_its_columns_apart_and_aligned_whatever_the_figures() -> None:
    text = render(
        status(
            arm(22, 12_400.0, error_rate=0.125),
            arm(1_234_567, 0.4, agreement_by_field={"category": 0.5, "": 1.0}),
        )
    )
    header, stable, candidate = table(text, "arm")[:3]
    assert [c.group() for c in header] == [
        "arm", "samples", "errors", "p95", "valid", "escal.", "conf.", "agreement",
    ]  # fmt: skip
    assert [c.group() for c in stable][:4] == ["stable", "22", "12.5%", "12.4 s"]
    assert [c.group() for c in candidate][:4] == ["candidate", "1234567", "0.0%", "0.4 ms"]
    assert [c.group() for c in candidate][6:] == ["0.000", "category 50.0%, (whole) 100.0%"]
    for rows in (header, stable, candidate):
        assert len(rows) == 8  # no two cells ran together
    for column in range(1, 7):  # figures are right-aligned under their heading
        assert len({row[column].end() for row in (header, stable, candidate)}) == 1
    for column in (0, 7):
        assert len({row[column].start() for row in (header, stable, candidate)}) == 1
    assert not re.search(r"\de[+-]?\d", text)  # no e-notation anywhere


def test_unknown_figures_are_dashes_in_their_columns() -> None:
    text = render(status(arm(0, None, error_rate=None, confidence_mean=None), arm(0, None)))
    header, stable, _ = table(text, "arm")[:3]
    assert [c.group() for c in stable] == ["stable", "0", "-", "-", "-", "-", "-", "-"]
    assert [c.end() for c in stable[1:7]] == [c.end() for c in header[1:7]]


def test_gate_lines_are_columns_too() -> None:
    gates = table(render(status(arm(1, 1.0), arm(1, 1.0))), "gate")
    assert [[c.group() for c in row] for row in gates] == [
        ["gate latency_p95_ratio", "fail", "x31000 (at most x1.5)"],
        ["gate error_rate", "inconclusive", "no data"],
    ]
    assert gates[0][1].start() == gates[1][1].start()


def test_an_ended_rollout_shows_the_figures_of_its_last_analysis() -> None:
    ended = status(arm(6, 850.0), arm(6, 12_400.0), phase="rolled_back", analysis=None)
    ended["last_figures"] = {
        "analysed_at": "2026-11-26T12:00:22Z", "window_start": "2026-11-26T12:00:00Z",
        "stable": arm(6, 850.0), "candidate": arm(6, 12_400.0),
    }  # fmt: skip
    ended["last_verdicts"] = [{"gate": "agreement", "verdict": "fail", "detail": "0.500 agree"}]
    text = render(ended)
    assert "last analysis at 2026-11-26T12:00:22Z (window since 2026-11-26T12:00:00Z)" in text
    rows = table(text, "arm")
    assert [c.group() for c in rows[1]][:4] == ["stable", "6", "0.0%", "850 ms"]
    assert [c.group() for c in rows[2]][:4] == ["candidate", "6", "0.0%", "12.4 s"]
    assert [c.group() for c in rows[3]] == ["gate agreement", "fail", "0.500 agree"]


def phases(*names: str) -> Iterator[dict[str, Any]]:
    for name in names:
        yield status(arm(1, 1.0), arm(1, 1.0), phase=name)


@pytest.mark.parametrize("last", ["promoted", "rolled_back", "aborted", "paused"])
def test_watch_clears_a_terminal_between_draws_and_stops_when_nothing_moves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], last: str
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(cli_rollout, "_stdout_is_tty", lambda: True)
    monkeypatch.setattr(cli_rollout, "_wait", waits.append)
    draws = phases("shadow", "canary", last, "never drawn")
    watch(lambda: next(draws), 2.5)
    out = capsys.readouterr().out
    assert waits == [2.5, 2.5]
    screens = out.split(CLEAR_SCREEN)
    assert screens[0] == "" and len(screens) == 4  # cleared before each of the three draws
    assert "phase shadow" in screens[1] and "phase canary" in screens[2]
    assert f"phase {last}" in screens[3] and "never drawn" not in out


def test_watch_without_a_terminal_writes_draws_one_after_another(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_rollout, "_stdout_is_tty", lambda: False)
    monkeypatch.setattr(cli_rollout, "_wait", lambda _: None)
    draws = phases("shadow", "aborted")
    watch(lambda: next(draws), 1.0)
    out = capsys.readouterr().out
    assert CLEAR_SCREEN not in out
    first, second = out.split("\n\n")
    assert "phase shadow" in first and "phase aborted" in second


def test_gate_lines_say_the_decision_in_a_sentence_and_events_name_one_phase_once() -> None:
    sentence = (
        "candidate error rate 4.1 % [2.9, 5.6] vs stable 0.8 % [0.5, 1.2] (310 and 5,890 "
        "samples): worse beyond the 2-point tolerance"
    )
    gates = [{"gate": "error_rate", "verdict": "fail", "detail": "old words", "sentence": sentence}]
    events = [
        {"at": "t0", "kind": "created", "from_phase": "pending", "to_phase": "pending",
         "actor": "sre", "reason": "triage@1 -> triage@2"},
        {"at": "t1", "kind": "started", "from_phase": "pending", "to_phase": "shadow",
         "actor": "controller", "reason": "step 1 of 2"},
    ]  # fmt: skip
    current = status(arm(10, 1.0), arm(10, 1.0), events=events, spec={"alpha": 0.05})
    current["analysis"]["gates"] = gates
    text = render(current)
    assert f"gate error_rate  fail  {sentence}" in text
    assert "old words" not in text
    assert "pending -> pending" not in text
    created = next(line for line in text.splitlines() if "created" in line)
    assert re.search(r"created\s+pending\s+by sre", created), created
    assert "pending -> shadow" in text
    assert "alpha 0.05 (every decision of the rollout)" in text
