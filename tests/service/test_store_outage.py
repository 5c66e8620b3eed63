"""PostgreSQL down behind a cut connection: every management and review call answers 503
`store_unavailable` with Retry-After (not a plain-text 500), and answers again once it is back.
The key check needs no database (the served snapshot), so each call reaches its handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.auth import Role
from tests.conftest import (
    Harness,
    chat_body,
    fresh_database,
    make_settings,
    running_gateway,
    wait_until,
)
from tests.db_proxy import CuttableProxy
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.postgres

# (role, method, path, body): reads and writes of every domain that keeps its state there.
CALLS = [
    (Role.SRE, "GET", "/v1/admin/routes", None),
    (Role.SRE, "GET", "/v1/admin/adapters", None),
    (Role.SRE, "GET", "/v1/admin/audit", None),
    (Role.SRE, "GET", "/v1/admin/drift/chat", None),
    (Role.SRE, "GET", "/v1/admin/rollouts/chat", None),
    (Role.REVIEWER, "GET", "/v1/reviews/items", None),
    (Role.REVIEWER, "POST", "/v1/reviews/claim", {}),
    (Role.REVIEWER, "GET", "/v1/reviews/stats", None),
    (Role.REVIEWER, "POST", "/v1/reviews/export", {}),
    (Role.APP, "GET", "/v1/review-results/00000000000000000000000000000000", None),
]


@pytest.fixture
async def outage(
    tmp_path: Path, engine: FakeEngine
) -> AsyncIterator[tuple[Harness, CuttableProxy]]:
    proxy = CuttableProxy()
    await proxy.start()
    async with fresh_database("postgres", tmp_path) as url:
        through = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        settings = make_settings(through, tmp_path, [engine.url])
        async with running_gateway(settings) as harness:
            yield harness, proxy
        await proxy.cut()


async def test_every_call_answers_503_while_the_database_is_down_and_works_after(
    outage: tuple[Harness, CuttableProxy],
) -> None:
    harness, proxy = outage
    await proxy.cut()
    for role, method, path, body in CALLS:
        r = await harness.client.request(method, path, json=body, headers=harness.auth(role))
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "store_unavailable", (path, r.text)
        assert r.headers["retry-after"] == "1", path
        assert "127.0.0.1" not in r.text and str(proxy.port) not in r.text
    # An answer while the database is down waits in the spool; /readyz (no key needed) says
    # the shipper failed, by the error's class, and names no address.
    answered = await harness.client.post(
        "/v1/chat/completions", json=chat_body(), headers=harness.auth()
    )
    assert answered.status_code == 200, answered.text
    ready: dict[str, object] = {}

    async def shipper_failed() -> bool:
        nonlocal ready
        r = await harness.client.get("/readyz")
        ready = r.json()
        return r.status_code == 503 and bool(ready["checks"]["records"]["last_error"])

    await wait_until(shipper_failed, 30, "the shipper's failure on /readyz")
    text = str(ready)
    assert "127.0.0.1" not in text and str(proxy.port) not in text and "5432" not in text
    await proxy.restore()

    async def routes_listed() -> bool:
        r = await harness.client.get("/v1/admin/routes", headers=harness.auth(Role.SRE))
        return r.status_code == 200

    await wait_until(routes_listed, 30, "the routes listed again after the outage")
