"""Review callbacks stay inside the allow-list: no prefix tricks, no userinfo, no dot segments,
no redirects (each bypass reproduced, on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from service.main import create_app
from service.review.callback_urls import CallbackRefused, allowlist_places, refusal
from tests.conftest import make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine
from tests.guard.test_output_contracts import SURE, TOKENS, ask_and_approve_held, routes_file

HOOKS = ["https://tickets.internal/hooks/", "http://127.0.0.1:18283"]


def allowed(url: str, prefixes: list[str]) -> bool:
    return refusal(url, allowlist_places(prefixes)) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://tickets.internal/hooks/review",
        "https://TICKETS.internal:443/hooks/review?x=1",
        "https://tickets.internal/hooks/a/b",
        "http://127.0.0.1:18283/anything",
    ],
)
def test_urls_under_an_allowed_prefix_pass(url: str) -> None:
    assert allowed(url, HOOKS)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:18283@127.0.0.1:18284/x",  # userinfo: the host is the second one
        "http://user@127.0.0.1:18283/x",
        "http://127.0.0.1:182830/x",  # a string prefix of the port, another port
        "https://tickets.internal/hooks/../../admin",
        "https://tickets.internal/hooks/%2e%2e/%2E%2E/admin",
        "https://tickets.internal/hooks/..%2fadmin",
        "https://tickets.internal/hooks\\..\\admin",
        # Read as /admin by a server that drops path parameters or decodes
        # twice; each is refused, not guessed at.
        "https://tickets.internal/hooks/../admin",
        "https://tickets.internal/hooks/..;/admin",
        "https://tickets.internal/hooks/..;jsessionid=1/admin",
        "https://tickets.internal/hooks/%2e%2e/admin",
        "https://tickets.internal/hooks/%252e%252e/admin",
        "https://tickets.internal/hooks/%25252e%25252e/admin",
        "https://tickets.internal/hooks/%2fadmin",
        "https://tickets.internal/hooks/%252fadmin",
        "https://tickets.internal/hooks/..%3b/admin",
        "https://tickets.internal/hooks/..%5cadmin",
        "https://tickets.internal/hooksmith/x",  # the prefix's last segment, longer
        "http://tickets.internal/hooks/review",  # another scheme
        "https://tickets.internal.evil.example/hooks/review",
        "ftp://tickets.internal/hooks/review",
        "https://tickets.internal:bad/hooks/",
        "not a url",
    ],
)
def test_prefix_tricks_are_refused(url: str) -> None:
    assert not allowed(url, HOOKS)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://tickets.internal/hooks/../admin", "'.' and '..' path segments"),
        ("https://tickets.internal/hooks/..;/admin", "path parameters (';')"),
        ("https://tickets.internal/hooks/%2e%2e/admin", "an encoded '.', '/'"),
        ("https://tickets.internal/hooks/%252e%252e/admin", "a double-encoded path"),
        ("https://tickets.internal/hooks/%2fadmin", "an encoded '.', '/'"),
        ("https://tickets.internal/admin", "not in the allow-list"),
    ],
)
def test_a_refusal_says_why(url: str, reason: str) -> None:
    assert reason in (refusal(url, allowlist_places(HOOKS)) or "")


def test_a_plain_path_and_harmless_escapes_still_pass() -> None:
    assert allowed("https://tickets.internal/hooks/review", HOOKS)
    assert allowed("https://tickets.internal/hooks/review%20queue/7", HOOKS)
    # An escaped letter is that letter: the server sees /hooks/review.
    assert allowed("https://tickets.internal/hook%73/review", HOOKS)


def test_an_ambiguous_allow_list_entry_is_refused_at_start(
    tmp_path: Path, engine: FakeEngine
) -> None:
    with pytest.raises(CallbackRefused, match="path parameters"):
        allowlist_places(["https://tickets.internal/hooks/..;/"])
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", tmp_path, [engine.url],
        review_callback_allowlist=["https://tickets.internal/%2e%2e/"],
    )  # fmt: skip
    with pytest.raises(CallbackRefused, match="allow-list entry"):
        create_app(settings)


def test_a_prefix_without_a_trailing_slash_is_a_whole_segment() -> None:
    prefix = ["https://tickets.internal/hooks/review"]
    assert allowed("https://tickets.internal/hooks/review", prefix)
    assert allowed("https://tickets.internal/hooks/review/7", prefix)
    assert not allowed("https://tickets.internal/hooks/reviewer", prefix)


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, str, list[str]]]:
    """An allowed hook that redirects (307) to a second server, which records what it gets."""
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    second = web.Application()
    second.router.add_post("/{tail:.*}", elsewhere)
    second_runner = web.AppRunner(second)
    await second_runner.setup()
    await web.TCPSite(second_runner, "127.0.0.1", 0).start()
    target = f"http://127.0.0.1:{second_runner.addresses[0][1]}/admin"

    async def redirect(request: web.Request) -> web.Response:
        hits.append("redirected " + request.path)
        raise web.HTTPTemporaryRedirect(target)

    first = web.Application()
    first.router.add_post("/hooks/review", redirect)
    first_runner = web.AppRunner(first)
    await first_runner.setup()
    await web.TCPSite(first_runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{first_runner.addresses[0][1]}", target, hits
    finally:
        await first_runner.cleanup()
        await second_runner.cleanup()


async def test_a_redirecting_callback_is_not_followed(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine,
    hooks: tuple[str, str, list[str]], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    base, _, hits = hooks
    review = {"escalate": "always", "delivery": "hold", "callback_url": f"{base}/hooks/review"}
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, review),
        review_callback_allowlist=[f"{base}/hooks/"],
    )  # fmt: skip
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    async with running_gateway(settings) as h:
        await ask_and_approve_held(h)
        await wait_until(lambda: "answered 307" in caplog.text, what="the redirect to be logged")
    assert hits == ["redirected /hooks/review"]  # the second server got nothing
