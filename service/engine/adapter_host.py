"""vLLM's runtime LoRA endpoints: what a replica has loaded, load, unload, and a smoke probe;
and, from its ``/metrics``, which adapters its running batch uses.

Needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` on the replicas (the managed engine sets it).
Success is judged by what ``GET /v1/models`` shows afterwards, not by vLLM's error texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from service.engine.pool import EnginePool, Replica
from service.errors import EngineError, EngineUnavailable

PROBE_PROMPT = "Classify this support ticket: my invoice is wrong and I was charged twice."


class AdapterHostError(EngineError):
    code = "adapter_placement_failed"


class AdapterHost:
    def __init__(self, http: Callable[[], aiohttp.ClientSession], timeout_s: float = 120.0) -> None:
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def loaded(self, pool: EnginePool, replica: Replica) -> set[str]:
        """Adapter names the replica serves now (everything in /v1/models but the base model)."""
        payload = await self._call("GET", replica, "/v1/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise AdapterHostError(f"{replica.url}/v1/models answered without a model list")
        names = {m.get("id") for m in data if isinstance(m, dict)}
        return {n for n in names if isinstance(n, str) and n != pool.base_model}

    async def load(self, pool: EnginePool, replica: Replica, name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path}
        await self._call("POST", replica, "/v1/load_lora_adapter", body, expect_json=False)
        if name not in await self.loaded(pool, replica):
            raise AdapterHostError(f"{name} is not listed by the replica after loading")

    async def unload(self, pool: EnginePool, replica: Replica, name: str) -> None:
        body = {"lora_name": name}
        await self._call("POST", replica, "/v1/unload_lora_adapter", body, expect_json=False)
        if name in await self.loaded(pool, replica):
            raise AdapterHostError(f"{name} is still listed by the replica after unloading")

    async def running(self, replica: Replica) -> frozenset[str]:
        """Adapters the replica's running requests use now (vLLM's ``vllm:lora_requests_info``)."""
        text = await self._call("GET", replica, "/metrics", expect_json=False)
        return running_adapters(text)

    async def generates(self, replica: Replica, name: str) -> None:
        """A smoke check that the replica can generate with ``name``: one greedy token, or raise.

        Whether an adapter changes anything is decided from its weights at registration; this
        compares nothing, so neither load nor other adapters can change its answer.
        """
        body = {"model": name, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0}
        payload = await self._call("POST", replica, "/v1/completions", body)
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices:
            raise AdapterHostError(f"{replica.url} answered a generation with {name} without text")

    async def _call(
        self,
        method: str,
        replica: Replica,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        expect_json: bool = True,
    ) -> Any:
        try:
            async with self._http().request(
                method, replica.url + path, json=body, timeout=self._timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(
                f"engine replica {replica.url} unreachable: {type(exc).__name__}"
            ) from exc
        if status != 200:
            raise AdapterHostError(f"{method} {path} on {replica.url}: HTTP {status}: {text[:300]}")
        if not expect_json:
            return text
        try:
            return orjson.loads(text) if text else None
        except orjson.JSONDecodeError as exc:
            raise AdapterHostError(f"{path} on {replica.url} answered with non-JSON") from exc


LORA_INFO = "vllm:lora_requests_info{"
RUNNING_LABEL = re.compile(r'running_lora_adapters="([^"]*)"')


def running_adapters(metrics: str) -> frozenset[str]:
    """The running adapters of the latest ``vllm:lora_requests_info`` sample in a Prometheus
    text page. vLLM sets each new label set to the time of the change and keeps the old ones,
    so the sample with the largest value is the current one."""
    latest, value = "", float("-inf")
    for line in metrics.splitlines():
        if not line.startswith(LORA_INFO):
            continue
        labels, _, sample = line.rpartition("} ")
        try:
            at = float(sample.split()[0])
        except (ValueError, IndexError):
            continue
        if at > value:
            latest, value = labels, at
    found = RUNNING_LABEL.search(latest)
    names = found.group(1).split(",") if found else []
    return frozenset(name for name in names if name)
