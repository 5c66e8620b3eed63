"""What the real tier shares in one run: the tutorial's demo versions, trained once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import prepared_model, training_cache


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
