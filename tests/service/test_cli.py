"""The ``loragate`` command line, configured through ``LORAGATE_*`` variables like a user would.

Database commands run once on a SQLite file and once on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import typer
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from service.cli import common as cli_common
from service.cli.app import app
from service.cli.common import READ_ATTEMPTS, call_gateway
from service.db.models import ApiKey
from service.db.session import create_engine, session_factory, shown_url, sqlite_file
from service.keys import store as key_store
from service.keys.credentials import hash_secret, split_key
from tests.conftest import fresh_database

T = TypeVar("T")
KEY_LINE = re.compile(r"^key:\s+(lg-\S+)$", re.MULTILINE)
NOT_MIGRATED = "loragate db upgrade"

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def failed(*args: str) -> Result:
    """The command exited 1 through typer.Exit: a message, never a traceback."""
    result = invoke(*args)
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in result.output
    assert result.output.startswith("error: "), result.output
    return result


def printed_key(result: Result) -> str:
    keys = KEY_LINE.findall(result.output)
    assert len(keys) == 1, result.output
    assert result.output.count(keys[0]) == 1
    assert keys[0].startswith("lg-")
    return str(keys[0])


def query(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _all_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await key_store.list_keys(session))


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no LORAGATE_* from outside, cwd (and so `.env`) in tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith("LORAGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def unmigrated(
    dialect: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A fresh, empty database named by LORAGATE_DATABASE_URL."""
    async with fresh_database(dialect, cli_env, migrate=False) as url:
        monkeypatch.setenv("LORAGATE_DATABASE_URL", url)
        yield url


@pytest.fixture
async def at_head(
    dialect: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A migrated database (a copy of the tests' template) named by LORAGATE_DATABASE_URL."""
    async with fresh_database(dialect, cli_env) as url:
        monkeypatch.setenv("LORAGATE_DATABASE_URL", url)
        yield url


@pytest.fixture
def migrated(at_head: str) -> str:
    """A database at head, as `db upgrade` says (the upgrade from an empty database is
    test_db_upgrade_creates_the_schema_and_is_repeatable's)."""
    result = ok("db", "upgrade")
    assert result.output.startswith("database at head: ")
    return at_head


# -- db ---------------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_repeatable(unmigrated: str) -> None:
    result = ok("db", "upgrade")
    assert {"api_keys", "routes", "request_records", "alembic_version"} <= tables(unmigrated)
    assert "postgres@" not in result.output  # credentials are not echoed
    ok("db", "upgrade")
    ok("keys", "list")


def test_db_downgrade_goes_back_to_a_revision_and_upgrade_returns(unmigrated: str) -> None:
    ok("db", "upgrade")
    result = ok("db", "downgrade", "0010")
    assert "gateway_peers" not in tables(unmigrated)
    assert "postgres@" not in result.output
    assert "at revision 0010" in failed("db", "check").output
    ok("db", "upgrade")
    assert "gateway_peers" in tables(unmigrated)
    assert "cannot downgrade to 9999" in failed("db", "downgrade", "9999").output


def test_db_downgrade_creates_no_database(cli_env: Path) -> None:
    assert "no loragate database" in failed("db", "downgrade", "base").output
    assert not (cli_env / "loragate.db").exists()


def test_default_database_is_a_sqlite_file_in_the_data_dir(cli_env: Path) -> None:
    ok("db", "upgrade")
    assert (cli_env / "loragate.db").exists()
    printed_key(ok("keys", "create", "--role", "sre"))
    assert "sre" in ok("keys", "list").output


def test_settings_come_from_a_dot_env_file(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAGATE_DATA_DIR")
    db_file = cli_env / "from-dotenv" / "lg.db"
    (cli_env / ".env").write_text(f"LORAGATE_DATABASE_URL=sqlite+aiosqlite:///{db_file}\n")
    ok("db", "upgrade")
    assert db_file.exists()


# -- keys -------------------------------------------------------------------------------------


def test_create_app_key_prints_it_once_and_stores_only_the_hash(migrated: str) -> None:
    result = ok("keys", "create", "--role", "app", "--route", "chat", "--name", "billing")
    plaintext = printed_key(result)
    key_id, secret = split_key(plaintext)
    assert "shown only once" in result.output

    keys = query(migrated, _all_keys)
    assert len(keys) == 1
    row = keys[0]
    assert (row.id, row.role, row.name, row.allowed_routes) == (key_id, "app", "billing", ["chat"])
    assert row.secret_hash == hash_secret(secret)
    assert row.revoked_at is None
    stored = " ".join(str(getattr(row, c.key)) for c in ApiKey.__table__.columns)
    assert secret not in stored and plaintext not in stored


def test_create_key_with_several_routes(migrated: str) -> None:
    ok("keys", "create", "--role", "app", "--route", "chat", "--route", "triage")
    (row,) = query(migrated, _all_keys)
    assert row.allowed_routes == ["chat", "triage"]
    assert "routes=chat,triage" in ok("keys", "list").output


@pytest.mark.parametrize("role", ["sre", "admin"])
def test_route_limits_apply_to_app_and_reviewer_keys_only(migrated: str, role: str) -> None:
    result = failed("keys", "create", "--role", role, "--route", "x")
    assert "app, reviewer and lead keys only" in result.output
    assert "lg-" not in result.output
    assert query(migrated, _all_keys) == []


def test_reviewer_keys_limited_to_tiers_and_routes(migrated: str) -> None:
    ok("keys", "create", "--role", "reviewer", "--tier", "high", "--tier", "critical",
       "--route", "refunds")  # fmt: skip
    ok("keys", "create", "--role", "lead", "--name", "lead")
    rows = sorted(query(migrated, _all_keys), key=lambda row: row.role)
    assert [(r.role, r.allowed_tiers, r.allowed_routes) for r in rows] == [
        ("lead", None, None), ("reviewer", ["critical", "high"], ["refunds"]),
    ]  # fmt: skip
    listed = ok("keys", "list").output
    assert "tiers=critical,high" in listed and "routes=refunds" in listed
    for role in ("app", "admin"):
        assert (
            "reviewer and lead keys only"
            in failed("keys", "create", "--role", role, "--tier", "low").output
        )
    assert invoke("keys", "create", "--role", "reviewer", "--tier", "extreme").exit_code == 2


def test_keys_carry_limits_that_can_be_changed_per_route_and_cleared(migrated: str) -> None:
    result = ok("keys", "create", "--role", "app", "--rpm", "60", "--max-concurrent", "4")
    assert "limits: rpm=60 max_concurrent=4" in result.output
    (row,) = query(migrated, _all_keys)
    assert row.limits == {"rpm": 60, "max_concurrent": 4}
    assert "limits=rpm=60 max_concurrent=4" in ok("keys", "list").output
    ok("keys", "limits", f"lg-{row.id}", "--route", "triage", "--tpm", "5000")
    ok("keys", "limits", row.id, "--rpm", "120")
    (row,) = query(migrated, _all_keys)
    assert row.limits == {"rpm": 120, "routes": {"triage": {"tpm": 5000}}}
    assert "limits=rpm=120; triage: tpm=5000" in ok("keys", "list").output
    ok("keys", "limits", row.id, "--route", "triage")
    cleared = ok("keys", "limits", row.id)
    assert cleared.output.strip().endswith("limits: none")
    (row,) = query(migrated, _all_keys)
    assert row.limits is None
    assert invoke("keys", "create", "--role", "app", "--rpm", "0").exit_code == 2
    assert "no active key" in failed("keys", "limits", "nosuchkey", "--rpm", "1").output


def test_unknown_role_is_a_usage_error(migrated: str) -> None:
    result = invoke("keys", "create", "--role", "root")
    assert result.exit_code == 2
    assert query(migrated, _all_keys) == []


def test_bootstrap_works_once(migrated: str) -> None:
    result = ok("keys", "bootstrap")
    key_id, secret = split_key(printed_key(result))
    assert "role:  admin" in result.output

    again = failed("keys", "bootstrap")
    assert "admin key exists already" in again.output
    assert "lg-" not in again.output.replace("loragate keys create", "")

    (row,) = query(migrated, _all_keys)
    assert (row.id, row.role, row.secret_hash) == (key_id, "admin", hash_secret(secret))


def test_bootstrap_from_the_environment_is_idempotent(
    migrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = "lg-0123456789ab-" + "s" * 43
    monkeypatch.setenv("ADMIN_KEY", given)
    first = ok("keys", "bootstrap", "--from-env", "ADMIN_KEY")
    assert "created admin key lg-0123456789ab from $ADMIN_KEY" in first.output
    assert given not in first.output  # the secret is in the deployment's Secret, not the log
    again = ok("keys", "bootstrap", "--from-env", "ADMIN_KEY")  # every upgrade runs it again
    assert "nothing to do" in again.output
    (row,) = query(migrated, _all_keys)
    assert (row.id, row.role, row.secret_hash) == ("0123456789ab", "admin", hash_secret("s" * 43))


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "$ADMIN_KEY is not set"),
        ("not-a-key", "does not hold a loragate key"),
        ("lg-0123456789ab-short", "the secret at least 32"),
    ],
)
def test_bootstrap_from_the_environment_refuses_bad_keys(
    migrated: str, monkeypatch: pytest.MonkeyPatch, value: str, complaint: str
) -> None:
    monkeypatch.setenv("ADMIN_KEY", value)
    assert complaint in failed("keys", "bootstrap", "--from-env", "ADMIN_KEY").output
    assert query(migrated, _all_keys) == []


def test_db_check_says_whether_the_schema_is_current(unmigrated: str) -> None:
    assert NOT_MIGRATED in failed("db", "check").output
    ok("db", "upgrade")
    assert "newest migration" in ok("db", "check").output


def test_bootstrap_is_refused_when_an_admin_key_was_created(migrated: str) -> None:
    ok("keys", "create", "--role", "admin")
    failed("keys", "bootstrap")
    assert len(query(migrated, _all_keys)) == 1


def test_list_never_prints_secrets(migrated: str) -> None:
    app_key = printed_key(ok("keys", "create", "--role", "app", "--route", "chat"))
    sre_key = printed_key(ok("keys", "create", "--role", "sre", "--name", "oncall"))
    app_id, app_secret = split_key(app_key)
    sre_id, sre_secret = split_key(sre_key)
    ok("keys", "revoke", app_id)

    listing = ok("keys", "list").output
    lines = listing.strip().splitlines()
    assert len(lines) == 2
    app_line = next(line for line in lines if line.startswith(f"lg-{app_id} "))
    sre_line = next(line for line in lines if line.startswith(f"lg-{sre_id} "))
    assert "app" in app_line and "revoked" in app_line and "routes=chat" in app_line
    assert "sre" in sre_line and "active" in sre_line and "routes=all" in sre_line
    assert "oncall" in sre_line
    for secret in (app_secret, sre_secret, hash_secret(app_secret), hash_secret(sre_secret)):
        assert secret not in listing


def test_list_on_an_empty_database_prints_nothing(migrated: str) -> None:
    assert ok("keys", "list").output == ""


def test_revoke_then_revoke_again_fails(migrated: str) -> None:
    key_id, _ = split_key(printed_key(ok("keys", "create", "--role", "app")))
    assert ok("keys", "revoke", key_id).output.strip() == f"revoked lg-{key_id}"
    (row,) = query(migrated, _all_keys)
    assert row.revoked_at is not None

    again = failed("keys", "revoke", key_id)
    assert f"no active key with id {key_id}" in again.output
    failed("keys", "revoke", "ffffffffffff")


@pytest.mark.parametrize("form", ["prefixed-id", "full-key"])
def test_revoke_accepts_the_prefixed_id_or_the_whole_key(migrated: str, form: str) -> None:
    plaintext = printed_key(ok("keys", "create", "--role", "reviewer"))
    key_id, _ = split_key(plaintext)
    ok("keys", "revoke", f"lg-{key_id}" if form == "prefixed-id" else plaintext)

    async def active(session: AsyncSession) -> int:
        return await key_store.count_keys(session)

    assert query(migrated, active) == 0


# -- routes -----------------------------------------------------------------------------------

ROUTES = """
routes:
  - name: chat
    description: General chat
  - name: ticket-triage
    target: base
    max_tokens_cap: 512
    default_max_tokens: 128
"""


def test_routes_sync_and_list(migrated: str, cli_env: Path) -> None:
    path = cli_env / "routes.yaml"
    path.write_text(ROUTES)
    result = ok("routes", "sync", str(path))
    assert result.output.strip() == "synced 2 routes: chat, ticket-triage"

    lines = ok("routes", "list").output.strip().splitlines()
    assert len(lines) == 2
    # No engines configured: the managed engine's pool and model.
    assert lines[0].split() == [
        "chat",
        "pool=default",
        "target=smollm2-135m-instruct",
        "max_tokens_cap=default",
        "risk=medium",
    ]
    assert lines[1].split()[0] == "ticket-triage"
    assert "max_tokens_cap=512" in lines[1]

    # A second sync updates in place.
    path.write_text("routes:\n  - name: chat\n    max_tokens_cap: 64\n")
    ok("routes", "sync", str(path))
    lines = ok("routes", "list").output.strip().splitlines()
    assert len(lines) == 2
    assert "max_tokens_cap=64" in lines[0]


def test_routes_sync_uses_configured_pools(
    migrated: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "LORAGATE_ENGINES",
        '[{"name": "gpu", "base_model": "qwen-7b", "urls": ["http://127.0.0.1:9"]}]',
    )
    path = cli_env / "routes.yaml"
    path.write_text("routes:\n  - name: summarize\n    pool: gpu\n")
    ok("routes", "sync", str(path))
    assert "pool=gpu target=qwen-7b" in ok("routes", "list").output


BROKEN_ROUTES = {
    "broken-yaml": ("routes: [\n", "cannot read routes"),
    "unknown-pool": ("routes:\n  - name: chat\n    pool: nope\n", "names pool 'nope'"),
    "unknown-target": ("routes:\n  - name: chat\n    target: gpt-9\n", "target 'gpt-9'"),
    "duplicate": ("routes:\n  - name: a\n  - name: a\n", "route names must be unique"),
    "bad-name": ("routes:\n  - name: 'has space'\n", "route names are"),
    "default-over-cap": (
        "routes:\n  - name: a\n    max_tokens_cap: 8\n    default_max_tokens: 9\n",
        "default_max_tokens must not exceed max_tokens_cap",
    ),
    "ambiguous-callback": (  # '..;' is '..' to some servers
        "routes:\n  - name: a\n    review:\n      escalate: always\n      delivery: hold\n"
        "      callback_url: https://tickets.internal/hooks/..;/admin\n",
        "callback_url 'https://tickets.internal/hooks/..;/admin': path parameters (';') are "
        "not allowed",
    ),
}


@pytest.mark.parametrize(("content", "message"), BROKEN_ROUTES.values(), ids=BROKEN_ROUTES)
def test_broken_routes_file_is_a_clear_error(
    migrated: str, cli_env: Path, content: str, message: str
) -> None:
    path = cli_env / "routes.yaml"
    path.write_text("routes:\n  - name: fine\n" + content.removeprefix("routes:\n"))
    result = failed("routes", "sync", str(path))
    assert message in result.output
    assert ok("routes", "list").output == ""


def test_missing_routes_file_is_a_clear_error(migrated: str, cli_env: Path) -> None:
    result = failed("routes", "sync", str(cli_env / "absent.yaml"))
    assert "cannot read routes" in result.output


# -- unmigrated database ----------------------------------------------------------------------

DB_COMMANDS = [
    ("keys", "create", "--role", "app"),
    ("keys", "create", "--role", "app", "--route", "chat"),
    ("keys", "bootstrap"),
    ("keys", "list"),
    ("keys", "revoke", "0123456789ab"),
    ("routes", "sync", "{routes}"),
    ("routes", "list"),
    ("adapters", "register", "triage", "{dir}"),
    ("adapters", "list"),
    ("reviews", "export", "--out", "{dir}/export"),
    ("serve",),
]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`serve` must never get as far as uvicorn here (ports 8080/8801 belong to others)."""
    import uvicorn

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("serve started a server on an unmigrated database")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setenv("LORAGATE_PORT", "1")
    yield


@pytest.mark.usefixtures("no_server")
@pytest.mark.parametrize("command", DB_COMMANDS, ids=[" ".join(c[:2]) for c in DB_COMMANDS])
def test_every_command_refuses_an_unmigrated_database(
    unmigrated: str, cli_env: Path, command: tuple[str, ...]
) -> None:
    routes = cli_env / "routes.yaml"
    routes.write_text(ROUTES)
    result = failed(*(part.format(routes=routes, dir=cli_env) for part in command))
    assert NOT_MIGRATED in result.output
    assert f"no loragate database at {shown_url(unmigrated)}" in result.output
    file = sqlite_file(unmigrated)
    if file is not None:
        assert not file.exists()  # the attempt left no empty database behind
    else:
        assert "revision none" in result.output
        assert not tables(unmigrated) & {"api_keys", "routes", "alembic_version"}
    rest = result.output.replace("0123456789ab", "").replace(shown_url(unmigrated), "")
    assert "lg-" not in rest  # no key was printed


def test_another_data_dir_names_the_database_it_looked_for_and_creates_nothing(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("db", "upgrade")  # the server's database, in the first data dir
    other = cli_env / "other-shell"
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(other))
    result = failed("keys", "list")
    assert f"no loragate database at sqlite+aiosqlite:///{other / 'loragate.db'}:" in result.output
    assert "LORAGATE_DATA_DIR / LORAGATE_DATABASE_URL" in result.output
    assert not other.exists()
    ok("db", "upgrade")  # upgrade still creates it
    assert (other / "loragate.db").is_file()
    ok("keys", "list")


def test_an_empty_database_file_is_named_with_its_revision(cli_env: Path) -> None:
    (cli_env / "loragate.db").touch()  # as an older loragate's failed command left it
    result = failed("routes", "list")
    assert f"no loragate database at sqlite+aiosqlite:///{cli_env / 'loragate.db'}" in result.output
    assert "revision none" in result.output


@pytest.mark.postgres
def test_a_database_password_is_masked_in_errors(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:5432/lg_no_such_database"
    monkeypatch.setenv("LORAGATE_DATABASE_URL", url)
    result = failed("keys", "list")
    assert "postgres:***@127.0.0.1:5432/lg_no_such_database" in result.output
    assert "s3cret-pw" not in result.output


# -- help -------------------------------------------------------------------------------------


def _command_paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    # typer vendors its own click, so walk the tree by shape rather than by click's classes.
    yield prefix
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _command_paths(sub, (*prefix, name))


COMMAND_PATHS = list(_command_paths(typer.main.get_command(app)))


def test_the_command_tree_is_complete() -> None:
    assert {
        ("serve",),
        ("db", "upgrade"),
        ("db", "check"),
        ("keys", "create"),
        ("keys", "bootstrap"),
        ("keys", "list"),
        ("keys", "revoke"),
        ("routes", "sync"),
        ("routes", "list"),
        ("engine", "install"),
        ("engine", "prepare"),
    } <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "loragate")
def test_help_works_for_every_command(cli_env: Path, path: tuple[str, ...]) -> None:
    result = ok(*path, "--help")
    assert "Usage:" in result.output
    if path:
        assert path[-1] in result.output


@contextlib.contextmanager
def dropping_gateway(drops: int) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that reads each request and closes the first ``drops`` connections without
    an answer (what a client sees as "server disconnected"); then answers ``{"ok": true}``."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer()

        def answer(self) -> None:
            seen.append(self.command)
            if len(seen) <= drops:
                self.close_connection = True
                return
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The CLI's waits between tries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(cli_common, "time", SimpleNamespace(sleep=waited.append))
    return waited


def test_a_read_whose_connection_dropped_is_sent_again(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    with dropping_gateway(drops=READ_ATTEMPTS - 1) as (url, seen):
        assert call_gateway(url, "lg-x", "GET", "/v1/admin/rollouts/chat", None) == {"ok": True}
    assert seen == ["GET"] * READ_ATTEMPTS
    assert capsys.readouterr().err.count("trying again") == READ_ATTEMPTS - 1
    assert waits == [1, 2]  # 1 s, then 2 s


def test_a_read_that_keeps_failing_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    with dropping_gateway(drops=READ_ATTEMPTS) as (url, seen), pytest.raises(typer.Exit):
        call_gateway(url, "lg-x", "GET", "/v1/admin/rollouts/chat", None)
    assert seen == ["GET"] * READ_ATTEMPTS
    assert f"error: cannot reach the gateway at {url}" in capsys.readouterr().err
    assert waits == [1, 2]


def test_a_change_whose_connection_dropped_is_not_sent_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The gateway may have acted on it: the SRE decides, knowing it may have happened."""
    with dropping_gateway(drops=1) as (url, seen), pytest.raises(typer.Exit):
        call_gateway(url, "lg-x", "POST", "/v1/admin/rollouts/chat/abort", {"reason": "x"})
    assert seen == ["POST"]
    assert "trying again" not in capsys.readouterr().err
