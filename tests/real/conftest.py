"""What the real tier shares in one run: one xdist worker (see `pytest_xdist_make_scheduler` in
tests/conftest.py), the tutorial's demo versions trained once, and one gateway for the engine
and review modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from adapters.training import example_data
from tests.conftest import prepared_model, training_cache
from tests.real.test_real_engine import LiveGateway, serving

REVIEWED_ROUTE = "ticket-triage"


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`loragate adapters demo` once per session into a directory of its own: `good`, `bad` and
    `good2`. It trains through the machine's training cache, so the tutorial's own `adapters
    demo` (the same inputs) copies these runs instead of training them again."""
    work = tmp_path_factory.mktemp("demo-set")
    env = {**os.environ, "LORAGATE_DATA_DIR": str(work),
           "LORAGATE_TRAINING_CACHE_DIR": str(training_cache())}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "service", "adapters", "demo", "--out", str(work / "demo"),
         "--base-model-dir", str(prepared_model())],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "demo"


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """One `loragate serve` with its managed vLLM for the engine and review modules, started as
    the README says, with two routes: `chat` on the base model, and `ticket-triage` under the
    bundled ticket schema whose unsure answers go to review. The tutorial and the adapters test
    run gateways of their own."""
    work = tmp_path_factory.mktemp("live")
    shutil.copy(Path(str(example_data("tickets.schema.json"))), work / "tickets.schema.json")
    # The base model is unsure of itself: with this threshold its answers go to review.
    route = {
        "name": REVIEWED_ROUTE, "target": "base", "output_schema": "tickets.schema.json",
        "default_max_tokens": 150,
        "review": {"escalate": "below", "threshold": 0.9, "invalid": "escalate"},
    }  # fmt: skip
    (work / "routes.yaml").write_text(yaml.safe_dump({"routes": [{"name": "chat"}, route]}))
    gateway = LiveGateway(work, prepared_model())
    gateway.env.update(LORAGATE_ROUTES_FILE=str(work / "routes.yaml"))
    with serving(gateway):
        yield gateway
