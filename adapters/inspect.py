"""Read an adapter's config with peft's own config classes, in a short-lived worker process.

peft imports torch (about 4 s and 420 MB here), and the serving process never imports either, so
the gateway runs ``python -m adapters.inspect ADAPTER_DIR`` and reads one JSON line from it:

- ``{"config": {peft_type, r, lora_alpha, target_modules, base_model_name_or_path, ...}}``
- ``{"refused": MESSAGE}`` when peft cannot read the config (exit 0: the adapter's fault);
- ``{"unavailable": MESSAGE}`` with exit 3 when peft is not installed.

Anything else (a crash, a timeout) is the worker's failure, not the adapter's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from adapters.errors import AdapterConfigInvalid, AdapterInspectionFailed, AdapterNotLora

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
UNAVAILABLE_EXIT = 3
LORA = "LORA"


@dataclass(frozen=True, slots=True)
class LoraSummary:
    """What registration needs from a LoRA config, as peft read it."""

    r: int
    lora_alpha: float
    # A list of module names, or one string: peft's regex over module names, or "all-linear".
    target_modules: tuple[str, ...] | str
    base_model_name_or_path: str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    use_dora: bool = False
    fan_in_fan_out: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LoraSummary:
        """Check the worker's (or a config file's) fields; refuse anything but plain LoRA."""
        peft_type = config.get("peft_type")
        if peft_type != LORA:
            raise AdapterNotLora(f"The adapter is of type {peft_type!r}; only LORA is served.")
        r, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
        base = config.get("base_model_name_or_path")
        patterns = config.get("rank_pattern") or {}
        if not (_is_int(r) and r > 0 and _is_number(alpha)):
            raise AdapterConfigInvalid(
                "adapter_config.json needs a positive integer r and a numeric lora_alpha."
            )
        if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
            modules: tuple[str, ...] | str = tuple(sorted(set(targets)))
        elif isinstance(targets, str) and targets:
            modules = targets
        else:
            raise AdapterConfigInvalid("adapter_config.json names no target_modules.")
        if base is not None and not isinstance(base, str):
            raise AdapterConfigInvalid("base_model_name_or_path must be a string.")
        if not isinstance(patterns, dict) or not all(_is_int(v) for v in patterns.values()):
            raise AdapterConfigInvalid("rank_pattern must map module names to integers.")
        if config.get("use_dora"):
            raise AdapterNotLora("DoRA adapters are not plain LoRA and vLLM does not serve them.")
        return cls(
            r=r,
            lora_alpha=float(alpha),
            target_modules=modules,
            base_model_name_or_path=base or None,
            rank_pattern={str(k): int(v) for k, v in patterns.items()},
            fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Inspector(Protocol):
    async def __call__(self, adapter_dir: Path) -> LoraSummary: ...


class SubprocessInspector:
    """Runs the peft worker, a few at a time, each bounded in time and killed when late."""

    def __init__(self, python: str, timeout_s: float, concurrency: int) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)

    async def __call__(self, adapter_dir: Path) -> LoraSummary:
        async with self._slots:
            code, out, err = await self._run(adapter_dir)
        reply = _last_json_line(out)
        if code == 0 and reply is not None and isinstance(reply.get("config"), dict):
            return LoraSummary.from_config(reply["config"])
        if code == 0 and reply is not None and isinstance(reply.get("refused"), str):
            raise AdapterConfigInvalid(f"peft cannot read adapter_config.json: {reply['refused']}")
        if code == UNAVAILABLE_EXIT and reply is not None:
            raise AdapterInspectionFailed(str(reply.get("unavailable")))
        log.error("adapter inspection worker exited %s: %s", code, err[-2000:])
        raise AdapterInspectionFailed("The adapter inspection worker failed; see the gateway log.")

    async def _run(self, adapter_dir: Path) -> tuple[int, str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
        )
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
        process = await asyncio.create_subprocess_exec(
            self.python, "-m", "adapters.inspect", str(adapter_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout_s)
        except TimeoutError as exc:
            raise AdapterInspectionFailed(
                f"Reading the adapter config took longer than {self.timeout_s:g} s."
            ) from exc
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        code = process.returncode
        assert code is not None
        return code, out.decode(errors="replace"), err.decode(errors="replace")


def _last_json_line(text: str) -> dict[str, Any] | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe(adapter_dir: str) -> dict[str, Any]:
    """The worker's answer for one directory (imports peft, hence torch)."""
    from peft import LoraConfig, PeftConfig

    try:
        config = PeftConfig.from_pretrained(adapter_dir)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        # peft's messages may name the directory: keep the server's paths out of them.
        return {"refused": str(exc).replace(adapter_dir, "<adapter>")}
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if not isinstance(config, LoraConfig):
        return {"config": {"peft_type": str(peft_type)}}
    targets = config.target_modules
    return {
        "config": {
            "peft_type": str(peft_type),
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": targets if isinstance(targets, str) else sorted(targets or []),
            "base_model_name_or_path": config.base_model_name_or_path,
            "rank_pattern": dict(config.rank_pattern or {}),
            "use_dora": bool(config.use_dora),
            "fan_in_fan_out": bool(config.fan_in_fan_out),
        }
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m adapters.inspect ADAPTER_DIR", file=sys.stderr)
        return 2
    try:
        answer = describe(argv[0])
    except ImportError as exc:
        message = f"peft is not installed for the inspection worker ({exc.name}); "
        message += "install the engine extra (`loragate engine install`)."
        print(json.dumps({"unavailable": message}), flush=True)
        return UNAVAILABLE_EXIT
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
