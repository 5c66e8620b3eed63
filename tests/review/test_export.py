"""The training data export: which decisions become examples, redaction, duplicates, the split,
the manifest, the snapshot record, the CLI files (parsed by the trainer's loader) and the API.

Every database test runs on SQLite and on PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from adapters.dataset import load_examples, parse_example
from service.auth import Role
from service.cli.app import app
from service.db.models import RequestRecord, ReviewItem, TrainingSnapshot
from service.db.session import create_engine, session_factory
from service.records.redaction import redact
from service.review import claims, decisions, queue
from service.review.export import (
    ExportFilters,
    build_export,
    export_and_record,
    save_snapshot,
    split_lines,
)
from tests.conftest import make_settings, running_gateway
from tests.fake_engine import FakeEngine

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FORMULA = '=HYPERLINK("http://evil.example/x","click")'
SCRIPT = "<script>alert('x')</script>"


def body(text: str, *, system: str | None = None, route: str = "triage") -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return json.dumps({"model": route, "messages": messages, "temperature": 0})


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


async def add_item(
    sessions: async_sessionmaker[AsyncSession], state: str, *, request_body: str | None,
    answer: str = '{"category": "billing"}', corrected: str | None = None,
    route: str = "triage", decided_at: datetime = NOW, reject_reason: str | None = None,
) -> str:  # fmt: skip
    """An item decided directly in the table (the queue's own path is tested elsewhere)."""
    async with sessions.begin() as session:
        item_id = await queue.enqueue(
            session,
            queue.NewItem(
                request_id=f"req-{os.urandom(6).hex()}",
                route=route,
                target="m@1",
                reason="low_confidence",
                answer=answer,
                created_at=NOW - timedelta(hours=1),
                request_body=request_body,
                confidence=0.4,
            ),
        )
        await session.flush()
        item = await session.get(ReviewItem, item_id)
        assert item is not None
        item.state = state
        if state in ("approved", "corrected", "rejected"):
            item.decided_at = decided_at
            item.decided_by = "rev"
            item.claim_token = 1
            item.corrected_answer = corrected
            item.reject_reason = reject_reason
    return item_id


async def export(sessions: async_sessionmaker[AsyncSession], **kwargs: Any) -> Any:
    async with sessions() as session:
        return await build_export(session, ExportFilters(**kwargs), now=NOW)


def answers(lines: list[str]) -> list[str]:
    return sorted(json.loads(line)["messages"][-1]["content"] for line in lines)


async def test_approved_and_corrected_are_exported_rejected_and_open_items_never(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_item(sessions, "approved", request_body=body("refund?"), answer='{"c": "billing"}')
    await add_item(
        sessions, "corrected", request_body=body("login broken", system="Classify."),
        answer='{"c": "billing"}', corrected='{"c": "account"}',
    )  # fmt: skip
    await add_item(
        sessions, "rejected", request_body=body("spam"), answer='{"c": "bad"}',
        reject_reason="nonsense",
    )  # fmt: skip
    for state in ("pending", "claimed", "parked"):
        await add_item(sessions, state, request_body=body(state), answer=f'{{"c": "{state}"}}')
    data = await export(sessions, val_fraction=0.0)
    assert data.val_lines == []
    assert answers(data.train_lines) == ['{"c": "account"}', '{"c": "billing"}']
    corrected = next(json.loads(x) for x in data.train_lines if "account" in x)
    assert corrected["messages"] == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "login broken"},
        {"role": "assistant", "content": '{"c": "account"}'},
    ]
    counts = data.manifest["counts"]
    assert (counts["approved"], counts["corrected"], counts["unreviewed"]) == (1, 1, 0)
    assert (counts["train"], counts["validation"], counts["skipped"]) == (2, 0, 0)
    for i, line in enumerate(data.train_lines):
        parse_example(line, "export", i)  # what `adapters train` accepts


async def test_a_decision_through_the_queue_is_exported(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        await queue.enqueue(
            session,
            queue.NewItem(
                request_id="r1",
                route="triage",
                target="m@1",
                reason="low_confidence",
                answer='{"c": "x"}',
                created_at=NOW,
                request_body=body("hello"),
            ),
        )
    claimed = await claims.claim_next(sessions, "rev", NOW, 60)
    assert claimed is not None
    await decisions.decide(
        sessions, claimed.item.id, claimed.token, "rev", "correct", '{"c": "y"}', NOW
    )
    data = await export(sessions, val_fraction=0.0)
    assert answers(data.train_lines) == ['{"c": "y"}']


async def test_unusable_requests_are_skipped_and_counted(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    bad_bodies = [
        None,
        "not json",
        json.dumps({"model": "triage", "prompt": "no messages"}),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "tool", "content": "x"}]}),
        json.dumps({"messages": [{"role": "system", "content": "no user"}]}),
        json.dumps({"messages": [{"role": "user", "content": {"not": "text"}}]}),
    ]
    for raw in bad_bodies:
        await add_item(sessions, "approved", request_body=raw)
    await add_item(sessions, "corrected", request_body=body("blank"), corrected="   ")
    parts = json.dumps(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "in parts"}]}]}
    )
    await add_item(sessions, "approved", request_body=parts)
    data = await export(sessions, val_fraction=0.0)
    assert data.manifest["counts"]["skipped"] == len(bad_bodies) + 1
    assert data.manifest["counts"]["approved"] == 1
    assert json.loads(data.train_lines[0])["messages"][0]["content"] == "in parts"


async def test_duplicates_are_removed_after_redaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_item(sessions, "approved", request_body=body("same"), answer="A")
    await add_item(sessions, "approved", request_body=body("same"), answer="A")
    await add_item(sessions, "corrected", request_body=body("same"), answer="B", corrected="A")
    await add_item(sessions, "approved", request_body=body("same"), answer="other answer")
    # Different addresses, the same example once redacted.
    await add_item(sessions, "approved", request_body=body("mail ann@example.com"), answer="ok")
    await add_item(sessions, "approved", request_body=body("mail bob@example.org"), answer="ok")
    data = await export(sessions, val_fraction=0.0)
    assert len(data.train_lines) == 3
    counts = data.manifest["counts"]
    assert counts["duplicates_removed"] == 3
    assert counts["approved"] + counts["corrected"] - counts["duplicates_removed"] == 3
    unredacted = await export(sessions, val_fraction=0.0, redact=False)
    assert len(unredacted.train_lines) == 4
    assert unredacted.manifest["counts"]["duplicates_removed"] == 2


async def test_redaction_masks_emails_phones_and_long_numbers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    text = (
        "I am jane.doe+shop@mail.example.co.uk, call +44 20 7946 0958 or (555) 123-4567; "
        "card 4111 1111 1111 1111, account 123456789012. Order 42 on 2026-11-26, v1.2.3, "
        "ticket AB12345678901, pi 3.14159265358"
    )
    await add_item(
        sessions, "corrected", request_body=body(text, system="Reply to support@corp.example"),
        corrected='{"contact": "jane@example.com", "ref": "5551234567"}',
    )  # fmt: skip
    data = await export(sessions, val_fraction=0.0)
    messages = json.loads(data.train_lines[0])["messages"]
    assert messages[0]["content"] == "Reply to <email>"
    assert messages[1]["content"] == (
        "I am <email>, call <phone> or <phone>; card <number>, account <number>. Order 42 on "
        "2026-11-26, v1.2.3, ticket AB12345678901, pi 3.14159265358"
    )
    assert messages[2]["content"] == '{"contact": "<email>", "ref": "<number>"}'
    raw = await export(sessions, val_fraction=0.0, redact=False)
    assert json.loads(raw.train_lines[0])["messages"][1]["content"] == text
    assert data.snapshot_id != raw.snapshot_id
    assert data.manifest["filters"]["redact"] is True


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("Order 12345678 shipped", "2026-11-26T15:33:00Z", "x=1-2-3", "id a1b2c3d4e5f6789"):
        assert redact(text) == text


async def test_formulas_and_markup_survive_verbatim_as_data(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    answer = json.dumps({"note": FORMULA})
    await add_item(sessions, "approved", request_body=body(SCRIPT), answer=FORMULA)
    await add_item(sessions, "approved", request_body=body("+cmd|' /C calc'!A0"), answer=answer)
    await add_item(sessions, "approved", request_body=body("@SUM(A1:A9)"), answer="-2+3")
    await add_item(sessions, "approved", request_body=body("line\u2028sep\x85"), answer="ok")
    data = await export(sessions, val_fraction=0.0)
    pairs = {tuple(m["content"] for m in json.loads(line)["messages"]) for line in data.train_lines}
    assert pairs == {
        (SCRIPT, FORMULA),
        ("+cmd|' /C calc'!A0", answer),
        ("@SUM(A1:A9)", "-2+3"),
        ("line\u2028sep\x85", "ok"),
    }
    assert any(SCRIPT in line for line in data.train_lines)  # a plain string, not escaped
    assert all("\u2028" not in line and "\x85" not in line for line in data.train_lines)
    path = tmp_path / "x.jsonl"
    path.write_text("".join(f"{line}\n" for line in data.train_lines), encoding="utf-8")
    assert {e.answer.content for e in load_examples(path)} == {FORMULA, answer, "-2+3", "ok"}


def test_split_is_by_content_and_independent_of_order() -> None:
    lines = [json.dumps({"n": i}) for i in range(200)]
    train, val = split_lines(lines, val_fraction=0.2, seed=0)
    assert (train, val) == split_lines(list(reversed(lines)), val_fraction=0.2, seed=0)
    assert set(train) | set(val) == set(lines) and not set(train) & set(val)
    assert 20 <= len(val) <= 60
    # One more example does not move the others.
    train2, val2 = split_lines([*lines, "extra"], val_fraction=0.2, seed=0)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    assert split_lines(lines, val_fraction=0.2, seed=1) != (train, val)
    # Tiny sets still get one example on each side.
    assert [len(p) for p in split_lines(["a", "b"], val_fraction=0.01, seed=0)] == [1, 1]
    assert [len(p) for p in split_lines(["a", "b"], val_fraction=0.0, seed=0)] == [2, 0]


async def test_export_is_deterministic_and_stable_under_reordering(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    examples = [(body(f"question {i}"), f"answer {i}") for i in range(40)]
    for request_body, answer in examples:
        await add_item(sessions, "approved", request_body=request_body, answer=answer)
    first = await export(sessions, val_fraction=0.25)
    again = await export(sessions, val_fraction=0.25)
    assert (first.train_lines, first.val_lines) == (again.train_lines, again.val_lines)
    assert first.val_lines and first.train_lines
    async with sessions.begin() as session:
        await session.execute(delete(ReviewItem))
    for request_body, answer in reversed(examples):  # new ids, another insertion order
        await add_item(sessions, "approved", request_body=request_body, answer=answer)
    reordered = await export(sessions, val_fraction=0.25)
    assert (reordered.train_lines, reordered.val_lines) == (first.train_lines, first.val_lines)
    assert reordered.snapshot_id == first.snapshot_id


async def test_filters_by_route_and_decision_time(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_item(sessions, "approved", request_body=body("a"), answer="a", route="triage")
    await add_item(sessions, "approved", request_body=body("b"), answer="b", route="other")
    old = NOW - timedelta(days=3)
    await add_item(sessions, "approved", request_body=body("c"), answer="c", decided_at=old)
    assert answers((await export(sessions, val_fraction=0.0, routes=["other"])).train_lines) == [
        "b"
    ]
    recent = await export(sessions, val_fraction=0.0, since=NOW - timedelta(days=1))
    assert answers(recent.train_lines) == ["a", "b"]
    before = await export(sessions, val_fraction=0.0, until=NOW - timedelta(days=1))
    assert answers(before.train_lines) == ["c"]
    assert before.manifest["filters"]["until"] == (NOW - timedelta(days=1)).isoformat()
    with pytest.raises(ValueError, match="timezone"):
        await export(sessions, since=datetime(2026, 1, 1))


def record(answer: str | None, **values: Any) -> RequestRecord:
    defaults: dict[str, Any] = {
        "id": os.urandom(8).hex(), "created_at": NOW, "endpoint": "chat", "route": "triage",
        "target": "m@1", "arm": "stable", "stream": False, "status_code": 200,
        "latency_ms": 5.0, "attempts": 1, "request_body": body(f"q {answer}"),
        "response_body": json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        ),
        "schema_valid": True, "confidence": 0.95, "escalated": None,
    }  # fmt: skip
    defaults.update(values)
    return RequestRecord(**defaults)


async def test_unreviewed_confident_answers_only_when_asked(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reviewed = record("under review")
    async with sessions.begin() as session:
        session.add_all([
            record("good"),
            record("good, not escalated", escalated=False, confidence=0.9),
            record("streamed", stream=True, response_body="streamed"),
            record("escalated", escalated=True),
            record("unsure", confidence=0.89),
            record("unjudged", confidence=None),
            record("invalid", schema_valid=False),
            record("unvalidated", schema_valid=None),
            record("shadow", arm="shadow"),
            record("failed", status_code=500),
            record("completion", endpoint="completions"),
            record("other route", route="other"),
            record("unparseable", response_body="{"),
            reviewed,
        ])  # fmt: skip
        await queue.enqueue(
            session,
            queue.NewItem(
                request_id=reviewed.id,
                route="triage",
                target="m@1",
                reason="low_confidence",
                answer="under review",
                created_at=NOW,
                request_body=reviewed.request_body,
            ),
        )
    assert (await export(sessions, val_fraction=0.0)).train_lines == []
    data = await export(sessions, val_fraction=0.0, include_unreviewed_above=0.9)
    assert answers(data.train_lines) == ["good", "good, not escalated", "other route", "streamed"]
    counts = data.manifest["counts"]
    assert (counts["unreviewed"], counts["skipped"]) == (4, 1)  # the unparseable response
    assert data.manifest["filters"]["include_unreviewed_above"] == 0.9
    routed = await export(
        sessions, val_fraction=0.0, include_unreviewed_above=0.9, routes=["other"]
    )
    assert answers(routed.train_lines) == ["other route"]


async def test_snapshot_is_recorded_once_per_content(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_item(sessions, "approved", request_body=body("a"), answer="a")
    await add_item(sessions, "approved", request_body=body("b"), answer="b")
    data = await export(sessions)
    async with sessions.begin() as session:
        assert await save_snapshot(session, data, "someone")
    again = await export_and_record(sessions, ExportFilters(), "other")
    assert not again.created and again.export.snapshot_id == data.snapshot_id
    async with sessions() as session:
        rows = list(await session.scalars(select(TrainingSnapshot)))
    assert len(rows) == 1
    row = rows[0]
    assert (row.id, row.created_by) == (data.snapshot_id, "someone")
    assert row.train_sha256 == data.manifest["sha256"]["train"]
    assert (row.train_examples, row.validation_examples) == (1, 1)
    assert row.manifest["counts"] == data.manifest["counts"]


# -- the CLI ------------------------------------------------------------------------------------


def reviews_cli(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    """``loragate reviews ARGS`` on ``db_url``, with no other setting from the environment."""
    for name in list(os.environ):
        if name.upper().startswith("LORAGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    return CliRunner().invoke(app, ["reviews", *args])


def _cli(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    return reviews_cli(db_url, monkeypatch, tmp_path, "export", *args)


async def _seed(url: str) -> None:
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        for i in range(30):
            state = ("approved", "corrected", "rejected")[i % 3]
            await add_item(
                sessions, state, request_body=body(f"ticket {i} from u{i}@example.com"),
                answer=f'{{"n": {i}}}',
                corrected=f'{{"n": {-i}}}' if state == "corrected" else None,
                reject_reason="bad" if state == "rejected" else None,
            )  # fmt: skip
    finally:
        await engine.dispose()


async def _snapshot_rows(url: str) -> list[TrainingSnapshot]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.scalars(select(TrainingSnapshot)))
    finally:
        await engine.dispose()


def test_cli_writes_files_the_trainer_loads(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_seed(db_url))
    out = tmp_path / "export"
    result = _cli(db_url, monkeypatch, tmp_path, "--out", str(out), "--val-fraction", "0.2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["approved"], counts["corrected"], counts["skipped"]) == (10, 10, 0)
    assert counts["train"] + counts["validation"] == 20 and counts["validation"] >= 1
    for split, name in (("train", "train"), ("validation", "validation")):
        data = (out / f"{name}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"][split]
        assert len(load_examples(out / f"{name}.jsonl")) == counts[split] or counts[split] < 2
    all_bytes = (out / "all.jsonl").read_bytes()
    assert all_bytes == (out / "train.jsonl").read_bytes() + (out / "validation.jsonl").read_bytes()
    assert hashlib.sha256(all_bytes).hexdigest() == manifest["sha256"]["all"]
    examples = load_examples(out / "all.jsonl")
    assert len(examples) == 20
    assert all("@example.com" not in m.content for e in examples for m in e.messages)
    assert manifest["snapshot_id"] in result.output and "recorded" in result.output
    assert "approved 10, corrected 10" in result.output
    rows = asyncio.run(_snapshot_rows(db_url))
    assert [(r.id, r.created_by) for r in rows] == [(manifest["snapshot_id"], "cli")]

    # The same data again: same snapshot, recorded once.
    again = _cli(db_url, monkeypatch, tmp_path, "--out", str(tmp_path / "again"),
                 "--val-fraction", "0.2")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "already recorded" in again.output
    assert (tmp_path / "again" / "all.jsonl").read_bytes() == all_bytes
    assert len(asyncio.run(_snapshot_rows(db_url))) == 1

    refused = _cli(db_url, monkeypatch, tmp_path, "--out", str(out))
    assert refused.exit_code == 1
    assert "not an empty directory" in refused.output


def test_cli_options_and_bad_times(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_seed(db_url))
    out = tmp_path / "raw"
    out.mkdir()  # an empty directory is fine
    result = _cli(
        db_url, monkeypatch, tmp_path, "--out", str(out), "--no-redact", "--route", "triage",
        "--since", "2026-11-01T00:00:00+00:00", "--until", "2026-12-01T00:00:00Z",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filters"]["redact"] is False
    assert manifest["filters"]["routes"] == ["triage"]
    assert "u0@example.com" in (out / "all.jsonl").read_text()
    naive = _cli(
        db_url, monkeypatch, tmp_path, "--out", str(tmp_path / "n"), "--since", "2026-11-01"
    )
    assert naive.exit_code == 1 and "UTC offset" in naive.output
    bad = _cli(db_url, monkeypatch, tmp_path, "--out", str(tmp_path / "b"), "--since", "soon")
    assert bad.exit_code == 1 and "ISO 8601" in bad.output


# -- the API ------------------------------------------------------------------------------------


async def test_api_streams_ndjson_with_the_snapshot_header(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        sessions = h.app.state.gateway.sessions
        await add_item(sessions, "approved", request_body=body(SCRIPT), answer=FORMULA)
        for i in range(20):
            await add_item(sessions, "approved", request_body=body(f"q{i}"), answer=f"a{i}")
        await add_item(sessions, "rejected", request_body=body("no"), answer="rejected")
        url = "/v1/reviews/export"
        response = await h.client.post(url, headers=h.auth(Role.REVIEWER))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        snapshot = response.headers["x-loragate-snapshot"]
        lines = response.text.splitlines()
        assert len(lines) == 21
        for i, line in enumerate(lines):
            parse_example(line, "api", i)
        assert "rejected" not in answers(lines)
        assert FORMULA in answers(lines)
        assert any(SCRIPT in line for line in lines)

        parts = {}
        for split in ("train", "validation"):
            part = await h.client.post(url, params={"split": split}, headers=h.auth(Role.ADMIN))
            assert part.status_code == 200
            assert part.headers["x-loragate-snapshot"] == snapshot
            parts[split] = part.text.splitlines()
        assert parts["train"] + parts["validation"] == lines
        assert parts["validation"]

        async with sessions() as session:
            row = await session.get(TrainingSnapshot, snapshot)
            assert row is not None
            count = await session.scalar(select(func.count()).select_from(TrainingSnapshot))
            assert count == 1

        filtered = await h.client.post(
            url, params={"route": "nothing"}, headers=h.auth(Role.REVIEWER)
        )
        assert filtered.status_code == 200 and filtered.text == ""

        for role in (Role.APP, Role.SRE):
            denied = await h.client.post(url, headers=h.auth(role))
            assert denied.status_code == 403
        assert (await h.client.post(url)).status_code == 401
        naive = await h.client.post(
            url, params={"since": "2026-11-01T00:00:00"}, headers=h.auth(Role.REVIEWER)
        )
        assert naive.status_code == 400
        for number in ("0.5", "1700000000"):  # pydantic would read these as Unix times
            unix = await h.client.post(url, params={"until": number}, headers=h.auth(Role.REVIEWER))
            assert unix.status_code == 400 and unix.json()["error"]["param"] == "until"
        zulu = {"since": "2026-11-01T00:00:00Z", "until": "2026-11-02T00:00:00+00:00"}
        assert (await h.client.post(url, params=zulu, headers=h.auth(Role.REVIEWER))).text == ""
        bad = await h.client.post(url, params={"split": "x"}, headers=h.auth(Role.REVIEWER))
        assert bad.status_code == 400


async def test_the_snapshot_list_gives_times_with_their_offset(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    """Found by schemathesis: SQLite hands times back without their offset, and the
    list passed them on as they came (`"created_at": "2026-12-07T16:33:58.123456"`)."""
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        await add_item(h.app.state.gateway.sessions, "approved", request_body=body("q"))
        made = await h.client.post("/v1/reviews/export", headers=h.auth(Role.REVIEWER))
        assert made.status_code == 200, made.text
        listed = await h.client.get("/v1/reviews/export", headers=h.auth(Role.REVIEWER))
        assert listed.status_code == 200, listed.text
        [snapshot] = listed.json()["data"]
        created = datetime.fromisoformat(snapshot["created_at"])
        assert created.utcoffset() == timedelta(0), snapshot["created_at"]
        assert created == datetime.fromisoformat(snapshot["manifest"]["created_at"])
