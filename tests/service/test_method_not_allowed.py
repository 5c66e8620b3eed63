"""Every 405 names in ``Allow`` all the methods its path is served with (RFC 9110, 15.5.6; issue
26, row 11): Starlette's names only the first route that matched the path, and a path here can
have a route per method (``GET`` and ``POST /v1/reviews/export``)."""

from __future__ import annotations

import re

import pytest

from service.auth import Role
from tests.conftest import Harness


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/chat/completions", "POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("OPTIONS", "/v1/admin/routes", "GET"),
        ("DELETE", "/v1/admin/routes", "GET"),
        ("OPTIONS", "/healthz", "GET"),
        ("POST", "/healthz", "GET"),
        ("OPTIONS", "/v1/reviews/export", "GET, POST"),
        ("PATCH", "/v1/admin/drift/chat/reference", "DELETE, PUT"),
        ("OPTIONS", "/v1/admin/rollouts/chat", "GET, POST"),
        ("OPTIONS", "/v1/admin/adapters", "GET, POST"),
        ("PUT", "/review/login", "GET, POST"),
    ],
)
async def test_a_405_names_every_method_of_its_path(
    gateway: Harness, method: str, path: str, allow: str
) -> None:
    answer = await gateway.client.request(method, path, headers=gateway.auth(Role.ADMIN))
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
    assert answer.json()["error"]["code"] == "http_error"


async def test_every_path_answers_options_with_its_methods(gateway: Harness) -> None:
    served: dict[str, set[str]] = {}
    for route in gateway.app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and methods:
            served.setdefault(re.sub(r"\{[^}]+\}", "x", path), set()).update(methods)
    assert len(served) > 30
    for path, methods in served.items():
        answer = await gateway.client.options(path, headers=gateway.auth(Role.ADMIN))
        assert answer.status_code == 405, path
        assert set(answer.headers["allow"].split(", ")) == methods, path
