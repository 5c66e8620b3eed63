"""Supervision of the managed engine: started, restarted after a crash, stopped on shutdown.

The child is tests/fake_vllm_process.py behind a stand-in interpreter, so this runs in the fast
tier; tests/real runs the same code with real vLLM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import jinja2
import pytest

from monitoring.metrics import Metrics
from service.engine.managed import ManagedEngine, engine_dtype, vllm_command
from service.settings import ManagedEngineSettings, Settings
from tests.conftest import free_port, wait_until

FAKE = Path(__file__).resolve().parent.parent / "fake_vllm_process.py"


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(0o755)
    return str(script)


async def healthy(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=1)) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_healthy(url: str, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await healthy(url):
        assert asyncio.get_running_loop().time() < deadline, f"{url} never became healthy"
        await asyncio.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_engine_is_started_restarted_after_a_crash_and_stopped(
    tmp_path: Path, fake_python: str
) -> None:
    config = ManagedEngineSettings(
        port=free_port(), python=fake_python, model_dir=tmp_path, restart_backoff_s=0.1
    )
    metrics = Metrics()
    engine = ManagedEngine(config, tmp_path, metrics)
    supervisor = asyncio.create_task(engine.run())
    try:
        await wait_healthy(engine.url)
        first = engine.pid
        assert first is not None and alive(first)
        os.killpg(first, signal.SIGKILL)
        await wait_until(
            lambda: engine.pid not in (None, first), timeout_s=15, what="a new engine process"
        )
        await wait_healthy(engine.url)
        restarts = metrics.registry.get_sample_value("loragate_managed_engine_restarts_total")
        assert restarts == 1
        second = engine.pid
    finally:
        await engine.stop()
        await asyncio.wait_for(supervisor, 10)
    assert second is not None and not alive(second)
    assert not await healthy(engine.url)
    assert (tmp_path / "logs" / "engine.log").exists()


def test_vllm_command_turns_on_what_the_gateway_relies_on(tmp_path: Path) -> None:
    config = ManagedEngineSettings(port=9999, python="/opt/py")
    command = vllm_command(config, tmp_path)
    assert command[:3] == ["/opt/py", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(command)
    assert "--enable-lora" in command and f"--model {tmp_path}" in joined
    assert "--port 9999" in joined and "--served-model-name smollm2-135m-instruct" in joined
    # Without it the JSON grammar allows endless whitespace (ENGINE.md).
    assert '"disable_any_whitespace": true' in joined
    # Evaluation calls carry priority 1, which vLLM refuses unless it schedules by priority;
    # the managed pool says so to the gateway.
    assert "--scheduling-policy priority" in joined
    (pool,) = Settings(_env_file=None).engine_pools()  # type: ignore[call-arg]
    assert pool.priority_scheduling


def test_the_managed_engine_runs_a_tool_call_parser_with_a_template_that_renders_tools(
    tmp_path: Path,
) -> None:
    command = vllm_command(ManagedEngineSettings(), tmp_path)
    assert "--enable-auto-tool-choice" in command
    assert command[command.index("--tool-call-parser") + 1] == "hermes"
    template = Path(command[command.index("--chat-template") + 1])
    rendered = (
        jinja2.Environment()
        .from_string(template.read_text())
        .render(
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
            add_generation_prompt=True,
        )
    )
    assert '<tools>\n{"name": "get_weather"}\n</tools>' in rendered
    assert rendered.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )
    for none in (None, ""):
        command = vllm_command(ManagedEngineSettings(tool_call_parser=none), tmp_path)
        assert "--tool-call-parser" not in command and "--chat-template" not in command


def test_cpu_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert engine_dtype("cpu-auto", cpuinfo) == "float32"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile\n")
    assert engine_dtype("cpu-auto", cpuinfo) == "bfloat16"
    assert engine_dtype("cpu-auto", tmp_path / "missing") == "float32"
    assert engine_dtype("float16", cpuinfo) == "float16"  # a configured dtype is kept
    command = vllm_command(ManagedEngineSettings(dtype="bfloat16"), tmp_path)
    assert command[command.index("--dtype") + 1] == "bfloat16"
