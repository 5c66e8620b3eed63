"""The engine and review tests share one gateway: one vLLM start instead of two."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from adapters.dataset import example_data
from tests.conftest import prepared_model
from tests.monitoring.otlp_receiver import OtlpReceiver, receiving
from tests.real.live import LiveGateway, serving

REVIEWED_ROUTE = "ticket-triage"
# A review policy without a schema: invalid answers (a tool call against its tool's schema)
# go to review; up to 3 choices.
ASSISTANT_ROUTE = "assistant"


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    """Where the package's gateway and its vLLM send their spans (OTLP over HTTP)."""
    with receiving() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver) -> Iterator[LiveGateway]:
    """One `loragate serve` with its managed vLLM for this package's modules, started as the
    README says, with three routes: `chat` on the base model, `ticket-triage` under the
    bundled ticket schema whose unsure answers go to review, and `assistant`, whose invalid
    answers (tool calls included) go to review; its spans, and its vLLM's, go to
    ``otlp``. Stopped once the package's last test ran, before the rest of the real tier starts
    engines of its own."""
    work = tmp_path_factory.mktemp("live")
    shutil.copy(Path(str(example_data("tickets.schema.json"))), work / "tickets.schema.json")
    # The base model is unsure of itself: with this threshold its answers go to review.
    route = {
        "name": REVIEWED_ROUTE, "target": "base", "output_schema": "tickets.schema.json",
        "default_max_tokens": 150,
        "review": {"escalate": "below", "threshold": 0.9, "invalid": "escalate"},
    }  # fmt: skip
    assistant = {
        "name": ASSISTANT_ROUTE, "target": "base",
        "review": {"escalate": "never", "invalid": "escalate", "max_choices": 3},
    }  # fmt: skip
    routes = [{"name": "chat"}, route, assistant]
    (work / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
    gateway = LiveGateway(work, prepared_model())
    gateway.env.update(
        LORAGATE_ROUTES_FILE=str(work / "routes.yaml"), LORAGATE_OTLP_ENDPOINT=otlp.url
    )
    with serving(gateway):
        yield gateway
