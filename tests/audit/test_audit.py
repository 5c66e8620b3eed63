"""The audit trail: every writer adds exactly one event in the transaction of its change, the
API and CLI read it with filters, and nothing (no endpoint, no SQL) updates or deletes an event
except retention past its cutoff."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from typer.testing import CliRunner, Result

import adapters.cli
import adapters.registry_db
import service.keys.cli
from adapters.registry import Registry
from adapters.registry_db import build_registry
from service.audit.store import prune_events
from service.auth import Role
from service.cli.app import app
from service.clock import as_utc
from service.db.models import AdapterVersion, ApiKey, AuditEvent
from service.db.session import create_engine, session_factory
from service.review import queue
from service.settings import Settings
from tests.adapter_factory import write_adapter, write_base_model
from tests.adapters.test_registry import json_inspector, pool_settings
from tests.audit.trail import write_events
from tests.conftest import Harness, make_settings, running_gateway
from tests.fake_engine import MODEL, FakeEngine

runner = CliRunner()
AUDIT = "/v1/admin/audit"


def cli(*args: str) -> Result:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


async def events_in(url: str) -> list[AuditEvent]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all())
    finally:
        await engine.dispose()


def events(url: str) -> list[AuditEvent]:
    return asyncio.run(events_in(url))


@pytest.fixture
def cli_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    yield db_url


def test_every_key_command_adds_one_event_with_the_os_user(cli_db: str) -> None:
    key_id = cli("keys", "create", "--role", "app", "--name", "billing", "--quiet").output
    key_id = key_id.strip().split("-")[1]
    cli("keys", "limits", key_id, "--rpm", "60")
    cli("keys", "revoke", key_id)
    found = events(cli_db)
    assert [e.action for e in found] == ["key.create", "key.limits", "key.revoke"]
    assert {e.object for e in found} == {f"key:{key_id}"}
    assert {(e.actor, e.actor_role, e.os_user) for e in found} == {("cli", None, "alice")}
    assert found[0].after is not None and found[0].after["role"] == "app"
    assert "secret" not in str(found[0].after) and "hash" not in str(found[0].after)
    assert found[1].before == {"limits": None}
    assert found[1].after is not None and found[1].after["limits"]["rpm"] == 60
    assert (found[2].before, found[2].after) == ({"state": "active"}, {"state": "revoked"})


def test_routes_sync_adds_one_event(cli_db: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, {"name": "triage"}]}))
    cli("routes", "sync", str(routes))
    (event,) = events(cli_db)
    assert event.action == "routes.sync" and event.object == f"routes-file:{routes}"
    assert event.after is not None and set(event.after["targets"]) == {"chat", "triage"}


def test_a_change_that_fails_after_its_event_leaves_neither(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = cli("keys", "create", "--role", "app", "--quiet").output.strip().split("-")[1]

    record_event = service.keys.cli.record_event

    async def then_fail(*args: Any, **kwargs: Any) -> None:
        await record_event(*args, **kwargs)
        raise OSError("the change could not be written")

    # ``keys limits`` records its event in the change's transaction: fail right after it.
    monkeypatch.setattr(service.keys.cli, "record_event", then_fail)
    result = runner.invoke(app, ["keys", "limits", key_id, "--rpm", "5"])
    assert result.exit_code == 1
    assert [e.action for e in events(cli_db)] == ["key.create"]

    async def limits() -> object:
        engine = create_engine(cli_db)
        try:
            async with session_factory(engine)() as session:
                return await session.scalar(select(ApiKey.limits).where(ApiKey.id == key_id))
        finally:
            await engine.dispose()

    assert asyncio.run(limits()) is None


async def test_the_database_refuses_updates_and_deletes(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    await write_events(db_url, [old, new], monkeypatch)
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    try:
        for statement in (
            "UPDATE audit_events SET actor = 'someone else'",
            "DELETE FROM audit_events",
        ):
            with pytest.raises((DBAPIError, IntegrityError)) as refused:
                async with sessions.begin() as session:
                    await session.execute(text(statement))
            assert "append-only" in str(refused.value)
        # Retention deletes what is past its cutoff, and nothing else (then records it).
        async with sessions.begin() as session:
            assert await prune_events(session, datetime(2026, 3, 1, tzinfo=UTC)) == 1
        async with sessions() as session:
            left = (await session.execute(select(AuditEvent.at, AuditEvent.action))).all()
            assert as_utc(left[0].at) == new
            assert [action for _, action in left] == ["key.create", "audit.prune"]
            # The cutoff lived only inside the pruning transaction.
            assert await session.scalar(text("SELECT count(*) FROM audit_prune_cutoffs")) == 0
        with pytest.raises((DBAPIError, IntegrityError)):
            async with sessions.begin() as session:
                await session.execute(text("DELETE FROM audit_events"))
    finally:
        await engine.dispose()


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> Any:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        yield h


def key_id(h: Harness, role: Role) -> str:
    return h.keys[role].split("-", 2)[1]


async def count_events(h: Harness) -> int:
    async with h.app.state.gateway.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


async def test_a_review_decision_adds_one_event_with_key_request_and_client(
    harness: Harness,
) -> None:
    h = harness
    async with h.app.state.gateway.sessions.begin() as session:
        item_id = await queue.enqueue(
            session,
            queue.NewItem(
                request_id="req-1", route="chat", target="m@1", reason="low_confidence",
                answer='{"a": 1}', created_at=datetime.now(UTC),
            ),
        )  # fmt: skip
    reviewer = h.auth(Role.REVIEWER)
    claimed = (await h.client.post("/v1/reviews/claim", json={}, headers=reviewer)).json()
    decision = {"token": claimed["token"], "kind": "reject", "reason": "wrong"}
    headers = {**reviewer, "x-request-id": "trace-42"}
    url = f"/v1/reviews/items/{item_id}/decision"
    assert (await h.client.post(url, json=decision, headers=headers)).status_code == 200
    # The same decision again changes nothing, and adds no event.
    assert (await h.client.post(url, json=decision, headers=reviewer)).status_code == 200
    page = (await h.client.get(AUDIT, headers=h.auth(Role.SRE))).json()
    (event,) = page["data"]
    assert (event["actor"], event["actor_role"]) == (key_id(h, Role.REVIEWER), "reviewer")
    assert (event["action"], event["object"]) == ("review.reject", f"review_item:{item_id}")
    assert event["request_id"] == "trace-42" and event["client"]
    assert event["after"]["reject_reason"] == "wrong" and page["next_cursor"] is None


async def test_an_export_adds_one_event(harness: Harness) -> None:
    h = harness
    r = await h.client.post("/v1/reviews/export", headers=h.auth(Role.REVIEWER))
    assert r.status_code == 200, r.text
    snapshot = r.headers["x-loragate-snapshot"]
    page = (await h.client.get(AUDIT, params={"action": "review.export"},
                               headers=h.auth(Role.ADMIN))).json()  # fmt: skip
    (event,) = page["data"]
    assert event["object"] == f"snapshot:{snapshot}" and event["after"]["created"] is True
    # Listing snapshots reads only.
    listed = await h.client.get("/v1/reviews/export", headers=h.auth(Role.REVIEWER))
    assert listed.status_code == 200 and listed.json()["data"][0]["id"] == snapshot
    assert await count_events(h) == 1


async def test_the_api_filters_pages_and_has_no_way_to_change_an_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    base = datetime(2026, 5, 1, tzinfo=UTC)
    await write_events(
        h.url, [base + timedelta(minutes=n) for n in range(5)], monkeypatch,
        actors=["k1" if n % 2 else "cli" for n in range(5)],
    )  # fmt: skip
    sre = h.auth(Role.SRE)
    first = (await h.client.get(AUDIT, params={"limit": 2}, headers=sre)).json()
    assert [e["object"] for e in first["data"]] == ["key:4", "key:3"]
    second = (
        await h.client.get(AUDIT, params={"limit": 2, "cursor": first["next_cursor"]}, headers=sre)
    ).json()
    assert [e["object"] for e in second["data"]] == ["key:2", "key:1"]
    only = (await h.client.get(AUDIT, params={"actor": "k1"}, headers=sre)).json()
    assert [e["object"] for e in only["data"]] == ["key:3", "key:1"]
    since = (base + timedelta(minutes=3)).isoformat()
    recent = (await h.client.get(AUDIT, params={"since": since}, headers=sre)).json()
    assert [e["object"] for e in recent["data"]] == ["key:4", "key:3"]
    bad = await h.client.get(AUDIT, params={"since": "2026-05-01T00:00:00"}, headers=sre)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    assert (await h.client.get(AUDIT, headers=h.auth(Role.APP))).status_code == 403
    assert (await h.client.get(AUDIT, headers=h.auth(Role.REVIEWER))).status_code == 403
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        refused = await h.client.request(method, AUDIT, headers=h.auth(Role.ADMIN))
        assert refused.status_code == 405, method
        refused = await h.client.request(method, f"{AUDIT}/1", headers=h.auth(Role.ADMIN))
        assert refused.status_code in (404, 405), method
    assert await count_events(h) == 5


def test_the_cli_lists_with_filters(cli_db: str) -> None:
    cli("keys", "create", "--role", "app", "--quiet")
    cli("keys", "create", "--role", "sre", "--quiet")
    listed = cli("audit", "list", "--action", "key.create", "--limit", "1").output
    assert listed.count("key.create") == 1 and "cli(alice)" in listed
    assert "more: --cursor" in listed
    refused = runner.invoke(app, ["audit", "list", "--since", "2026-01-01T00:00:00"])
    assert refused.exit_code == 1 and "UTC offset" in refused.output


# -- adapter registration, route switches and the bootstrap key --------------------------------


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base_model(tmp_path_factory.mktemp("models") / "tiny-base")


@pytest.fixture
async def adapter_gateway(
    db_url: str, tmp_path: Path, engine: FakeEngine, base_model_dir: Path
) -> AsyncIterator[Harness]:
    """The gateway with a pool adapters can be validated for (by the torch-free inspector)."""
    settings = make_settings(
        db_url, tmp_path, [], engines=[pool_settings(base_model_dir, engine.url)]
    )
    async with running_gateway(settings, adapter_inspector=json_inspector) as h:
        yield h


async def test_registering_an_adapter_and_switching_a_route_add_one_event_each(
    adapter_gateway: Harness,
) -> None:
    h = adapter_gateway
    imports = Path(h.app.state.gateway.settings.effective_import_root)
    write_adapter(imports / "runs" / "one")
    sre = {**h.auth(Role.SRE), "x-request-id": "trace-7"}
    body = {"name": "triage", "path": "runs/one", "changelog": "first", "data_snapshot_id": "s1"}
    created = await h.client.post("/v1/admin/adapters", json=body, headers=sre)
    assert created.status_code == 201, created.text
    # The same content again returns that version, changes nothing and adds no event.
    again = await h.client.post("/v1/admin/adapters", json=body, headers=h.auth(Role.ADMIN))
    assert again.status_code == 200 and again.json()["id"] == "triage@1"
    page = (await h.client.get(AUDIT, headers=h.auth(Role.SRE))).json()
    (event,) = page["data"]
    assert (event["actor"], event["actor_role"]) == (key_id(h, Role.SRE), "sre")
    assert (event["action"], event["object"]) == ("adapter.register", "adapter:triage@1")
    assert event["request_id"] == "trace-7" and event["client"]
    assert event["after"] == {
        "sha256": created.json()["sha256"], "pool": "default", "changelog": "first",
        "data_snapshot_id": "s1",
    }  # fmt: skip

    url = "/v1/admin/routes/chat/target"
    switched = await h.client.put(url, json={"target": "triage@1"}, headers=h.auth(Role.ADMIN))
    assert switched.status_code == 200, switched.text
    # Idempotent: the same switch again changes nothing and adds no event.
    same = await h.client.put(url, json={"target": "triage@1"}, headers=h.auth(Role.SRE))
    assert same.status_code == 200
    # A switch refused (no such version) changes nothing and adds no event either.
    missing = await h.client.put(url, json={"target": "triage@9"}, headers=h.auth(Role.SRE))
    assert missing.status_code == 404
    page = (await h.client.get(AUDIT, headers=h.auth(Role.SRE))).json()
    assert [e["action"] for e in page["data"]] == ["route.set_target", "adapter.register"]
    event = page["data"][0]
    assert (event["actor"], event["actor_role"]) == (key_id(h, Role.ADMIN), "admin")
    assert event["object"] == "route:chat" and event["request_id"] and event["client"]
    assert (event["before"], event["after"]) == ({"target": MODEL}, {"target": "triage@1"})
    assert await count_events(h) == 2


@pytest.fixture
def adapter_cli(
    cli_db: str, tmp_path: Path, base_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The CLI on ``cli_db`` with a pool adapters can be validated for; the import root."""
    pools = [pool_settings(base_model_dir).model_dump(mode="json")]
    monkeypatch.setenv("LORAGATE_ENGINES", json.dumps(pools))

    def with_json_inspector(settings: Settings, sessions: Any, inspector: Any = None) -> Registry:
        return build_registry(settings, sessions, json_inspector)

    monkeypatch.setattr(adapters.cli, "build_registry", with_json_inspector)
    return tmp_path / "imports"


async def adapter_versions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list((await session.scalars(select(AdapterVersion.id))).all())
    finally:
        await engine.dispose()


def test_the_cli_registering_an_adapter_adds_one_event(adapter_cli: Path, cli_db: str) -> None:
    path = write_adapter(adapter_cli / "one")
    cli("adapters", "register", "triage", str(path), "--changelog", "first")
    cli("adapters", "register", "triage", str(path))  # same content: nothing new
    (event,) = events(cli_db)
    assert (event.actor, event.actor_role, event.os_user) == ("cli", None, "alice")
    assert (event.action, event.object) == ("adapter.register", "adapter:triage@1")
    assert event.after is not None
    assert (event.after["changelog"], event.after["data_snapshot_id"]) == ("first", None)
    assert event.request_id is None and event.client is None


def test_an_adapter_whose_event_cannot_be_written_is_not_registered(
    adapter_cli: Path, cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_adapter(adapter_cli / "one")

    async def refused(*_: Any, **__: Any) -> None:
        raise OSError("the audit event could not be written")

    # The version's row is inserted in the transaction before its event: the failed event
    # must take it back with it.
    with monkeypatch.context() as patched:
        patched.setattr(adapters.registry_db, "record_event", refused)
        result = runner.invoke(app, ["adapters", "register", "triage", str(path)])
    assert result.exit_code != 0 and "registered" not in result.output
    assert "could not be written" in f"{result.output}{result.exception!r}"
    assert events(cli_db) == [] and asyncio.run(adapter_versions(cli_db)) == []
    # Nothing was left half-done: the same adapter registers as the first version.
    assert "registered triage@1" in cli("adapters", "register", "triage", str(path)).output
    assert asyncio.run(adapter_versions(cli_db)) == ["triage@1"]
    assert [e.action for e in events(cli_db)] == ["adapter.register"]


def test_keys_bootstrap_adds_one_event(cli_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext = cli("keys", "bootstrap", "--quiet").output.strip()
    created = plaintext.split("-")[1]
    (event,) = events(cli_db)
    assert (event.actor, event.actor_role, event.os_user) == ("cli", None, "alice")
    assert (event.action, event.object) == ("key.bootstrap", f"key:{created}")
    assert event.after is not None and event.after["role"] == "admin"
    assert plaintext.split("-", 2)[2] not in str(event.after) and "hash" not in str(event.after)
    # Refused once an admin key exists, and a deployment's re-run is a no-op: no events.
    refused = runner.invoke(app, ["keys", "bootstrap"])
    assert refused.exit_code == 1
    monkeypatch.setenv("ADMIN_KEY", f"lg-given-{'s' * 40}")
    assert "nothing to do" in cli("keys", "bootstrap", "--from-env", "ADMIN_KEY").output
    assert len(events(cli_db)) == 1


async def test_times_are_iso_8601_with_an_offset_never_numbers(harness: Harness) -> None:
    sre = harness.auth(Role.SRE)
    for query, param in (("until=0.5", "until"), ("since=1700000000", "since"),
                         ("since=2026-12-01T10:00:00", "since")):  # fmt: skip
        r = await harness.client.get(f"{AUDIT}?{query}", headers=sre)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["error"]["param"] == param
    assert (await harness.client.get(f"{AUDIT}?since=2026-12-01T10:00:00Z", headers=sre)).is_success
