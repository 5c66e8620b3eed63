"""The managed local engine: vLLM as a child process of the gateway, when no pool is configured.

It prepares the bundled model once (cached under ``data_dir/models``), starts vLLM with runtime
LoRA updating on, logs a progress line while waiting for ``/health``, restarts vLLM when it
exits, and stops it (the whole process group) on shutdown. Its output goes to
``data_dir/logs/engine.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from monitoring.metrics import Metrics
from service.settings import BUNDLED_MODEL_DIR, ManagedEngineSettings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0
STOP_GRACE_S = 20.0
HERMES = "hermes"
CHATML_TOOLS_TEMPLATE = Path(__file__).parent / "templates" / "chatml_tools.jinja"


class ManagedEngineError(RuntimeError):
    pass


CPU_AUTO = "cpu-auto"
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def engine_dtype(configured: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The dtype to start vLLM with: ``cpu-auto`` picks bfloat16 only where the CPU computes it
    natively; elsewhere vLLM's CPU build converts every bfloat16 value and float32 is faster."""
    if configured != CPU_AUTO:
        return configured
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "float32"
    flags = {flag for line in text.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}  # fmt: skip
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"


def vllm_command(
    config: ManagedEngineSettings, model_dir: Path, otlp_endpoint: str | None = None
) -> list[str]:
    python = config.python or sys.executable
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", config.served_model_name,
        "--enable-lora",
        "--max-lora-rank", str(config.max_lora_rank),
        "--max-loras", str(config.max_loras),
        *(["--max-cpu-loras", str(config.max_cpu_loras)] if config.max_cpu_loras else []),
        "--max-model-len", str(config.max_model_len),
        "--dtype", engine_dtype(config.dtype),
        "--host", config.host,
        "--port", str(config.port),
        # Without this the JSON grammar allows endless whitespace (see ENGINE.md).
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
        # Evaluation runs ask at a lower priority than live traffic (see EnginePoolSettings).
        "--scheduling-policy", "priority",
        *trace_flags(otlp_endpoint),
        *tool_flags(config),
    ]  # fmt: skip


def tool_flags(config: ManagedEngineSettings) -> list[str]:
    """vLLM's flags for ``tool_choice`` auto: the parser, and for ``hermes`` the ChatML chat
    template that writes tools the way it reads them (the bundled model's own template renders
    no tools)."""
    if not config.tool_call_parser:  # None, or set empty to run without one
        return []
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    if config.tool_call_parser == HERMES:
        flags += ["--chat-template", str(CHATML_TOOLS_TEMPLATE)]
    return flags


def trace_flags(otlp_endpoint: str | None) -> list[str]:
    """vLLM's own span per request, joined to the gateway's trace by the ``traceparent`` the
    gateway sends, exported where the gateway's spans go."""
    return ["--otlp-traces-endpoint", otlp_endpoint] if otlp_endpoint else []


def vllm_environment(
    config: ManagedEngineSettings, otlp_endpoint: str | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    if otlp_endpoint:
        # The gateway's endpoint takes OTLP over HTTP; vLLM's exporter speaks gRPC unless told.
        env.update(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME="vllm")
    env.update(
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        VLLM_CPU_KVCACHE_SPACE=str(config.kv_cache_gib),
        HF_HUB_OFFLINE="1",
    )
    if config.cpu_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_bind
    return env


async def prepare_model(config: ManagedEngineSettings, data_dir: Path) -> Path:
    """The model directory, converting the bundled GGUF first if needed (own process: torch)."""
    if config.model_dir is not None:
        return config.model_dir
    out = data_dir / "models" / BUNDLED_MODEL_DIR
    if (out / ".complete").is_file():
        return out
    log.info("preparing the bundled model into %s (once, about a minute)", out)
    python = config.python or sys.executable
    process = await asyncio.create_subprocess_exec(
        python, "-m", "service.engine.model_prep", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    async for line in process.stdout:
        message = line.decode(errors="replace").rstrip()
        if message:
            log.info("model prep: %s", message[-300:])
    if await process.wait() != 0:
        raise ManagedEngineError(
            "preparing the bundled model failed; run `loragate engine install` first"
        )
    return out


class ManagedEngine:
    def __init__(
        self,
        config: ManagedEngineSettings,
        data_dir: Path,
        metrics: Metrics,
        otlp_endpoint: str | None = None,
    ) -> None:
        self.config = config
        self.otlp_endpoint = otlp_endpoint
        self.data_dir = data_dir
        self.url = f"http://{config.host}:{config.port}"
        self._metrics = metrics
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The running vLLM process, if any."""
        if self._process is None or self._process.returncode is not None:
            return None
        return self._process.pid

    async def run(self) -> None:
        """Prepare, start, supervise: restarts vLLM whenever it exits until ``stop``."""
        model_dir = await prepare_model(self.config, self.data_dir)
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        starts = 0
        while not self._stopping:
            if starts:
                self._metrics.engine_restarts.inc()
                await asyncio.sleep(self.config.restart_backoff_s)
            starts += 1
            with (log_dir / "engine.log").open("ab") as engine_log:
                self._process = await asyncio.create_subprocess_exec(
                    *vllm_command(self.config, model_dir, self.otlp_endpoint),
                    stdout=engine_log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=vllm_environment(self.config, self.otlp_endpoint),
                    start_new_session=True,
                )
            log.info("started vLLM (pid %d), log at %s", self._process.pid, log_dir / "engine.log")
            waiting = asyncio.ensure_future(self._report_until_healthy())
            code = await self._process.wait()
            waiting.cancel()
            if not self._stopping:
                log.error("vLLM exited with code %s; restarting", code)

    async def _report_until_healthy(self) -> None:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            log.info("vLLM is up after %.0fs", time.monotonic() - started)
                            return
                elapsed = time.monotonic() - started
                if elapsed > self.config.startup_timeout_s:
                    log.error("vLLM not healthy after %.0fs; stopping it", elapsed)
                    self._signal(signal.SIGKILL)
                    return
                log.info("waiting for vLLM to start... %.0fs", elapsed)
                await asyncio.sleep(PROGRESS_EVERY_S)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("vLLM did not stop in %.0fs; killing it", STOP_GRACE_S)
            self._signal(signal.SIGKILL)
            await process.wait()
