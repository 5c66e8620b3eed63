"""The layout's rules, checked: pure cores import no I/O framework, and ``monitoring`` no domain.

Run in a fresh interpreter, so what the rest of the test session imported does not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PURE = [
    "rollout.core.agreement", "rollout.core.figures", "rollout.core.gates",
    "rollout.core.machine", "rollout.core.spec", "rollout.core.split",
    "service.guard.answers", "service.guard.confidence", "service.guard.fields",
    "service.guard.policy", "service.guard.route_guard", "service.guard.schema",
    "service.guard.patterns",
    "service.gateway.request_rules", "service.routes.view", "service.keys.lookups",
    "adapters.placement", "service.drift.statistics", "service.guard.output_fields",
    "service.drift.features", "service.audit.chain", "service.review.callback_urls",
    "service.guard.tiers", "service.guard.sampling", "service.review.model",
    "service.review.visibility",
]  # fmt: skip
IMPURE = ("sqlalchemy", "fastapi", "starlette", "aiohttp", "httpx")
DOMAINS = ("service", "adapters", "rollout")


def test_pure_cores_import_no_database_web_or_http_client_library() -> None:
    probe = (
        "import importlib, sys\n"
        f"for name in {PURE!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({IMPURE!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_monitoring_depends_on_no_domain_package() -> None:
    files = sorted((ROOT / "monitoring").glob("*.py"))
    assert files
    offending = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported(path)
        if name.split(".")[0] in DOMAINS
    }
    assert not offending
