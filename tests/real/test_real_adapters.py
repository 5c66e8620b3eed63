"""Adapter versions on two real vLLM replicas: register, place, serve, switch under load,
refuse an adapter that changes nothing at registration, unload from both replicas a version one
replica refuses (the second runs with a lower --max-lora-rank), and restore adapters after a
replica restarts.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from service.engine.managed import vllm_command, vllm_environment
from service.settings import ManagedEngineSettings
from tests.conftest import prepared_model
from tests.real.live import START_TIMEOUT_S, LiveGateway, _free_port

pytestmark = pytest.mark.slow
BASE = "smollm2-135m-instruct"


class Replica:
    def __init__(self, model_dir: Path, log_dir: Path, index: int, max_lora_rank: int) -> None:
        # vLLM's CPU build binds its busy-polling worker to core 0 by default: two replicas on
        # one core starve each other (a restart took minutes), so each gets its own core.
        self.config = ManagedEngineSettings(
            port=_free_port(), cpu_bind=str(index % (os.cpu_count() or 1)),
            max_lora_rank=max_lora_rank,
        )  # fmt: skip
        self.model_dir = model_dir
        self.log_path = log_dir / f"vllm-{index}.log"
        self.url = f"http://127.0.0.1:{self.config.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                vllm_command(self.config, self.model_dir),
                env=vllm_environment(self.config), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"vLLM at {self.url} not healthy\n{self.log_tail()}")

    def adapters(self) -> set[str]:
        data = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]
        return {m["id"] for m in data} - {BASE}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


def make_adapters(model_dir: Path, specs: list[tuple[Path, int, bool, int]]) -> None:
    """LoRA adapters on the real base model, one (out, seed, inert, rank) each: random weights,
    or (inert) peft's zero B. One process: torch is imported once."""
    code = f"""
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
for out, seed, inert, rank in {[(str(o), s, i, r) for o, s, i, r in specs]!r}:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.bfloat16)
    config = LoraConfig(r=rank, lora_alpha=16, task_type="CAUSAL_LM", init_lora_weights=inert,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    get_peft_model(model, config).save_pretrained(out)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, list[Replica]]]:
    model = prepared_model()
    work = tmp_path_factory.mktemp("adapters")
    # The second replica accepts lower ranks than the pool promises: a rank-16 version loads on
    # the first and is refused by the second, as after a misconfigured engine upgrade.
    replicas = [Replica(model, work, i, max_lora_rank) for i, max_lora_rank in enumerate((16, 8))]
    for replica in replicas:
        replica.start()
    gateway = LiveGateway(work, model)
    imports = work / "imports"
    imports.mkdir()
    make_adapters(model, [
        (imports / "v1", 1, False, 8), (imports / "v2", 2, False, 8),
        (imports / "noop", 3, True, 8), (imports / "wide", 4, False, 16),
    ])  # fmt: skip
    pool = {"name": "default", "base_model": BASE, "urls": [r.url for r in replicas],
            "max_lora_rank": 16}  # fmt: skip
    gateway.env.update(
        LORAGATE_ENGINES=json.dumps([{**pool, "model_dir": str(model)}]),
        LORAGATE_ADAPTER_RECONCILE_INTERVAL_S="1",
        LORAGATE_ADAPTER_UNLOAD_GRACE_S="3",
    )
    try:
        for replica in replicas:
            replica.wait_healthy()
        gateway.cli("db", "upgrade")
        gateway.start()
        gateway.wait_ready()
        yield gateway, replicas
    finally:
        gateway.stop()
        for replica in replicas:
            replica.kill()


def key_for(gateway: LiveGateway, role: str) -> str:
    out = gateway.cli("keys", "create", "--role", role)
    return next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))


# Two vLLM processes share two cores here; a restart alone can take minutes under load.
@pytest.mark.timeout(1800)
def test_versions_are_placed_switched_under_load_and_restored(
    setup: tuple[LiveGateway, list[Replica]],
) -> None:
    gateway, replicas = setup
    imports = gateway.workdir / "imports"
    for name in ("v1", "v2"):
        gateway.cli("adapters", "register", "triage", str(imports / name))
    gateway.cli("adapters", "register", "wide", str(imports / "wide"))
    # peft's untrained adapter (lora_B all zeros) is refused from its weights, exactly.
    noop = subprocess.run(
        [sys.executable, "-m", "service", "adapters", "register", "noop", str(imports / "noop")],
        env=gateway.env, cwd=gateway.workdir, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert noop.returncode == 1 and "changes nothing" in noop.stderr, noop.stderr
    sre, app = key_for(gateway, "sre"), key_for(gateway, "app")

    def set_target(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", "routes", "set-target", "chat", target,
             "--key", sre, "--url", gateway.url],
            env=gateway.env, capture_output=True, text=True, check=False,
        )  # fmt: skip

    placed = set_target("triage@1")
    assert placed.returncode == 0, placed.stderr
    assert all(r.adapters() == {"triage@1"} for r in replicas)

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=app, max_retries=0, timeout=120)

    def ask(_: int) -> str:
        answer = client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "My invoice is wrong."}],
            max_tokens=4,
        )
        return answer.model

    assert ask(0) == "triage@1"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = pool.map(ask, range(16))
        switched = set_target("triage@2")
        models = list(answers)  # raises if any request failed
    assert switched.returncode == 0, switched.stderr
    assert set(models) <= {"triage@1", "triage@2"} and ask(0) == "triage@2"

    # The second replica refuses the rank-16 version; under load, the switch is refused and the
    # version is unloaded from the first replica too, while the route keeps serving triage@2.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = pool.map(ask, range(12))
        refused = set_target("wide@1")
        models = list(answers)
    assert refused.returncode == 1 and "HTTP 502" in refused.stderr, refused.stderr
    assert "max_lora_rank" in refused.stderr
    assert set(models) == {"triage@2"}
    assert all("wide@1" not in r.adapters() for r in replicas)

    # The old version goes once it is unwanted past the grace period.
    deadline = time.monotonic() + 60
    while any("triage@1" in r.adapters() for r in replicas):
        assert time.monotonic() < deadline, "triage@1 was never unloaded"
        time.sleep(1)

    # A replica that restarts gets its adapters back with nobody acting.
    replicas[1].kill()
    replicas[1].start()
    replicas[1].wait_healthy()
    deadline = time.monotonic() + 120
    while "triage@2" not in replicas[1].adapters():
        assert time.monotonic() < deadline, "the reconcile loop did not restore triage@2"
        time.sleep(1)
    assert all(ask(i) == "triage@2" for i in range(4))
    records = [r for r in gateway.records() if r["route"] == "chat" and r["status_code"] == 200]
    assert {"triage@1", "triage@2"} <= {r["target"] for r in records}
