"""The shipped alert rules and dashboard: valid for Prometheus (``promtool``), their own unit
tests pass, and every metric they name is one a running gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.auth import Role
from tests.conftest import Harness

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "alerts" / "loragate.rules.yaml"
RULE_TESTS = MONITORING / "alerts" / "loragate.rules.test.yaml"
DASHBOARD = MONITORING / "dashboards" / "loragate.json"
METRIC = re.compile(r"\bloragate_[a-z0-9_]+\b")


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus package (scripts/test.sh)"
    done = subprocess.run(
        [promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", RULES.name)
    assert "SUCCESS" in _promtool("test", "rules", RULE_TESTS.name)


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _exported(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_metric_the_rules_and_dashboard_use_is_exported(gateway: Harness) -> None:
    response = await gateway.client.get("/metrics", headers=gateway.auth(Role.SRE))
    assert response.status_code == 200, response.text
    exported = _exported(response.text)
    used = set(METRIC.findall(RULES.read_text()))
    for expr in _dashboard_exprs():
        used |= set(METRIC.findall(expr))
    assert len(used) > 15
    assert used <= exported, sorted(used - exported)
