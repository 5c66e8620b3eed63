"""A route's `monitoring` block in its YAML: service targets and drift minimums, checked when the
file is read, stored as only what the route sets. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.drift.monitor import Rules
from service.routes.config import RoutesConfigError, load_routes_file, resolve
from service.routes.monitoring import MonitoringSpec
from service.settings import EnginePoolSettings
from tests.conftest import make_settings

POOLS = [EnginePoolSettings(name="default", urls=["http://127.0.0.1:9"], base_model="base-m")]


def _routes(tmp_path: Path, monitoring: object) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"name": "quiet", "monitoring": monitoring}]}))
    return path


def test_a_route_sets_its_targets_and_smaller_minimums(tmp_path: Path) -> None:
    block = {
        "service": {"latency_p95_ms": 4000, "error_budget": 0.01},
        "drift": {"min_samples": 50, "reference_min_samples": 100},
    }
    (spec,) = load_routes_file(_routes(tmp_path, block))
    row = resolve(spec, POOLS)
    assert row["monitoring"] == block  # only what it sets: the rest stays the defaults
    (plain,) = load_routes_file(_routes(tmp_path, None))
    assert resolve(plain, POOLS)["monitoring"] is None
    rules = Rules.of(make_settings("sqlite+aiosqlite://", tmp_path, ["http://127.0.0.1:9"]))
    quiet = rules.for_route(MonitoringSpec.of_row(row["monitoring"]))
    assert (quiet.reference_min, quiet.minimum.current, quiet.false_alarm_rate) == (100, 50, 0.01)
    assert (quiet.targets.latency_p95_ms, quiet.targets.error_budget) == (4000, 0.01)
    assert quiet.targets.ttft_p95_ms == rules.targets.ttft_p95_ms == 5000  # the default
    assert rules.for_route(MonitoringSpec.of_row(None)) == rules
    assert rules.cost is not None and (rules.cost.reference, rules.cost.window) == (500, 200)


@pytest.mark.parametrize(
    "block, problem",
    [
        ({"drift": {"min_samples": 5}}, "greater than or equal to 20"),  # unmeasured
        ({"drift": {"reference_min_samples": 10}}, "greater than or equal to 50"),
        ({"drift": {"false_alarm_rate": 0.5}}, "less than or equal to 0.1"),
        ({"service": {"error_budget": 1.5}}, "less than 1"),
        ({"service": {"latency_p95": 400}}, "Extra inputs"),  # a misspelt target
        ({"sevice": {}}, "Extra inputs"),
    ],
)
def test_a_block_the_gateway_cannot_keep_is_refused_when_read(
    tmp_path: Path, block: object, problem: str
) -> None:
    with pytest.raises(RoutesConfigError, match=problem):
        load_routes_file(_routes(tmp_path, block))
