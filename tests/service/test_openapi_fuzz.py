"""schemathesis against /openapi.json, with an admin key and with an app key: no 5xx and
no response the description does not allow (status, content type, headers, body schema).

The gateway runs on a real port (uvicorn, in a thread with its own event loop, in front of the
fake engine and a migrated SQLite file); schemathesis calls it over HTTP. ``FUZZ_EXAMPLES`` cases
per operation and key (about 27 operations): 120 gives about 3,200 cases per key, which take
about a minute and a half each on a 2-core machine. Set ``LORAGATE_FUZZ_EXAMPLES`` to run more.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.auth import Role
from service.db.migrations import upgrade
from service.main import create_app
from tests.conftest import free_port, insert_key, make_settings
from tests.fake_engine import FakeEngine

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

FUZZ_EXAMPLES = int(os.environ.get("LORAGATE_FUZZ_EXAMPLES", "120"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    url: str = ""
    keys: dict[Role, str] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None
    server: uvicorn.Server | None = None


async def _serve(served: Served, tmp: Path) -> None:
    engine = await FakeEngine().start()
    url = f"sqlite+aiosqlite:///{tmp / 'fuzz.db'}"
    await asyncio.to_thread(upgrade, url)
    served.keys = {role: await insert_key(url, role) for role in Role}
    app = create_app(make_settings(url, tmp, [engine.url]))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    served.server = uvicorn.Server(config)
    served.url = f"http://127.0.0.1:{port}"
    task = asyncio.create_task(served.server.serve())
    while not served.server.started and not task.done():  # noqa: ASYNC110 (a flag, no event)
        await asyncio.sleep(0.01)
    served.ready.set()
    try:
        await task
    finally:
        await engine.stop()


def _thread(served: Served, tmp: Path) -> None:
    try:
        asyncio.run(_serve(served, tmp))
    except BaseException as exc:  # noqa: BLE001 (handed to the test thread, which raises it)
        served.failure = exc
        served.ready.set()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served()
    thread = threading.Thread(target=_thread, args=(served, tmp_path_factory.mktemp("fuzz")))
    thread.start()
    assert served.ready.wait(120), "the gateway did not start"
    if served.failure is not None:
        raise served.failure
    yield served
    assert served.server is not None
    served.server.should_exit = True
    thread.join(60)


def _description() -> dict[str, Any]:
    """The description the served gateway publishes at /openapi.json (the same app, built
    without starting it: nothing connects until the lifespan runs)."""
    tmp = Path("/nonexistent-loragate-fuzz")
    settings = make_settings(f"sqlite+aiosqlite:///{tmp / 'unused.db'}", tmp, ["http://unused"])
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(_description())

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@schema.parametrize()
@FUZZ
def test_with_an_admin_key(case: Case, gateway_url: Served) -> None:
    headers = {"Authorization": f"Bearer {gateway_url.keys[Role.ADMIN]}"}
    case.call_and_validate(base_url=gateway_url.url, headers=headers, checks=CHECKS, timeout=30)


@schema.parametrize()
@FUZZ
def test_with_an_app_key(case: Case, gateway_url: Served) -> None:
    headers = {"Authorization": f"Bearer {gateway_url.keys[Role.APP]}"}
    case.call_and_validate(base_url=gateway_url.url, headers=headers, checks=CHECKS, timeout=30)
