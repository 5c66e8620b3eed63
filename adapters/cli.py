"""``loragate adapters ...``: register and list adapter versions, train them, run the demo."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer

from adapters import dataset, demo, training
from adapters.registry import ADAPTER_NAME, AdapterVersionRecord, RegistrationRequest, Registry
from adapters.registry_db import build_registry
from adapters.training_cache import TrainingCache
from service.audit.actor import cli_actor
from service.cli.common import (
    UrlOption,
    call_gateway,
    fail,
    gateway_url,
    settings_of,
    typed_path,
)
from service.cli.db import with_sessions
from service.cli.engine import prepare_model
from service.clock import now
from service.settings import Settings

T = TypeVar("T")

adapters_app = typer.Typer(help="LoRA adapter versions.", no_args_is_help=True)


def _with_registry(settings: Settings, work: Callable[[Registry], Awaitable[T]]) -> T:
    """Run ``work`` with the adapter registry on the configured database (as the gateway does)."""
    return with_sessions(settings, lambda sessions: work(build_registry(settings, sessions)))


def _print_version(record: AdapterVersionRecord) -> None:
    typer.echo(
        f"sha256:  {record.sha256}\npool:    {record.pool} (base model {record.base_model})\n"
        f"rank:    {record.rank}  alpha: {record.alpha:g}  "
        f"targets: {','.join(record.target_modules)}\n"
        f"size:    {record.size_bytes} bytes\nstored:  {record.store_path}"
    )


@adapters_app.command("register")
def adapters_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name; versions become NAME@1, NAME@2...")],
    path: Annotated[
        Path,
        typer.Argument(
            help="Adapter directory (adapter_config.json + adapter_model.safetensors): absolute, "
            "or relative to the current directory, else to the adapter import root "
            "(LORAGATE_ADAPTER_IMPORT_ROOT, default DATA_DIR/imports), where `train` and `demo` "
            "write by default. No file in it may be a link to outside it."
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
    settings = settings_of(ctx)
    source = typed_path(settings, path)
    if source.is_dir() and not source.resolve().is_relative_to(
        settings.effective_import_root.resolve()
    ):
        # Whoever runs the CLI may register any directory they can read (only the API keeps to
        # the import root); the directory is then the root, so no file may point outside it.
        settings = settings.model_copy(update={"adapter_import_root": source})
    request = RegistrationRequest(
        name=name,
        # '..' stays in and is refused like in the API.
        path=str(source),
        pool=pool,
        data_snapshot_id=data_snapshot,
        changelog=changelog,
        created_by="cli",
        audit=cli_actor(),
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
    ctx: typer.Context,
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
    """List adapter versions: id, pool, rank, sha256, the training data snapshot it came from
    (`data=`), when and by whom (with --key: where each is loaded)."""
    settings = settings_of(ctx)
    if key:
        query = f"?name={name}" if name else ""
        base = gateway_url(settings, url)
        payload = call_gateway(base, key, "GET", f"/v1/admin/adapters{query}", None)
        assert isinstance(payload, dict)
        for v in payload["data"]:
            loaded = ",".join(v["loaded_on"]) or "nowhere"
            typer.echo(
                f"{v['id']:<32} pool={v['pool']} rank={v['rank']} sha256={v['sha256'][:12]} "
                f"data={v['data_snapshot_id'] or '-'} loaded_on={loaded}  {v['changelog'][:60]}"
            )
        return
    for record in _with_registry(settings, lambda registry: registry.list_versions(name)):
        when = record.created_at.strftime("%Y-%m-%d %H:%M")
        typer.echo(
            f"{record.id:<32} pool={record.pool} rank={record.rank} "
            f"sha256={record.sha256[:12]} data={record.data_snapshot_id or '-'} {when} "
            f"by={record.created_by or '-'}  {record.changelog[:60]}"
        )


def _base_model(
    settings: Settings, pool_name: str | None, model_dir: Path | None
) -> tuple[str, Path]:
    """(served name, local directory) of the base model to train on, preparing the bundled one."""
    from service.engine.model_prep import is_prepared

    pools = settings.engine_pools()
    pool = next((p for p in pools if p.name == pool_name), None) if pool_name else pools[0]
    if pool is None:
        raise fail(f"no engine pool named {pool_name!r}")
    if model_dir is not None:
        return pool.base_model, model_dir
    if pool.model_dir is None:
        raise fail(f"pool {pool.name!r} has no model_dir; pass --base-model-dir")
    bundled = settings.uses_managed_engine and settings.managed_engine.model_dir is None
    if bundled and not is_prepared(pool.model_dir) and prepare_model(pool.model_dir) != 0:
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
    except (dataset.DatasetError, FileExistsError, ValueError) as exc:
        raise fail(str(exc)) from exc


MaxStepsOption = Annotated[
    int | None,
    typer.Option(min=1, help="Stop after this many optimizer steps (default: every epoch's)."),
]
NoCacheOption = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="Train even when an earlier run had the same inputs (data, base model, "
        "hyperparameters, seed, library versions); the new run replaces nothing.",
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Compute threads (default LORAGATE_TRAINING_THREADS; 0 there: the cores other "
        "processes leave free, decided again every few seconds).",
    ),
]


def _threads(settings: Settings, option: int | None) -> int | None:
    return option if option is not None else settings.training_threads or None


def _training_cache(settings: Settings) -> TrainingCache:
    return TrainingCache(settings.effective_training_cache_dir, settings.training_cache_max_bytes)


def _print_training(name: str, result: training.TrainingResult) -> None:
    how = (
        f"cached: the result of run {result.cached_from}"
        if result.cached_from
        else f"{len(result.epochs)} epochs, {result.seconds:.0f} s"
    )
    typer.echo(
        f"{name}: held-out loss {result.val_loss_before:.3f} -> {result.val_loss_after:.3f} "
        f"({result.validation_examples} held out, {result.train_examples} trained on, {how})"
    )
    for epoch in result.epochs:
        typer.echo(f"  epoch {epoch.epoch}: train {epoch.train_loss:.3f}  val {epoch.val_loss:.3f}")
    typer.echo(f"  adapter: {result.out_dir}")


@adapters_app.command("train")
def adapters_train(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="Chat-format JSONL, one example a line."),
    ],
    name: Annotated[str, typer.Option(help="Adapter name (as it will be registered).")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="New output directory, relative to the current directory "
            "(default: IMPORT_ROOT/trained/NAME-TIMESTAMP)."
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
    max_steps: MaxStepsOption = None,
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
    no_cache: NoCacheOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Fine-tune a LoRA adapter on chat JSONL and write it, with a manifest, ready to register.
    A run with the same inputs as an earlier one copies its result from the training cache."""
    if not ADAPTER_NAME.match(name):
        raise fail(f"{name!r} is not a valid adapter name")
    settings = settings_of(ctx)
    base_name, base_dir = _base_model(settings, pool, base_model_dir)
    root = settings.effective_import_root
    stamp = now().strftime("%Y%m%d-%H%M%S")
    target = out if out is not None else root / "trained" / f"{name}-{stamp}"
    result = _train_with_progress(name, lambda progress: training.train(
        data, target.absolute(), base_dir, base_model_name=base_name, epochs=epochs, lr=lr,
        rank=rank, alpha=alpha, seed=seed, val_fraction=val_fraction, max_len=max_len,
        batch_size=batch_size, max_steps=max_steps, labels_shuffled=shuffle_labels,
        progress=progress, threads=_threads(settings, threads),
        cache=None if no_cache else _training_cache(settings),
    ))  # fmt: skip
    _print_training(name, result)
    typer.echo(f"register it: loragate adapters register {name} {result.out_dir}")


@adapters_app.command("demo")
def adapters_demo(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            help="New directory, relative to the current directory (default: IMPORT_ROOT/demo)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = training.DEMO_EPOCHS,
    max_steps: MaxStepsOption = training.DEMO_MAX_STEPS,
    pool: Annotated[str | None, typer.Option(help="Engine pool (default: the first).")] = None,
    base_model_dir: Annotated[
        Path | None, typer.Option(help="Base model directory (default: the pool's model_dir).")
    ] = None,
    no_cache: NoCacheOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Train the tutorial's three versions on the bundled ticket data (about a minute each on a
    laptop CPU): `good` (seed 0), `bad` (shuffled labels) and `good2` (seed 1); write the
    `ticket-triage` route (routes.yaml), the rollout spec (rollout.json) and an evaluation pack
    (eval-pack.jsonl) beside them. Versions trained before with the same inputs are copied from
    the training cache."""
    settings = settings_of(ctx)
    base_name, base_dir = _base_model(settings, pool, base_model_dir)
    target = (out or settings.effective_import_root / "demo").absolute()
    if target.exists() and any(target.iterdir()):
        raise fail(f"{target} is not empty: remove it or pass --out")
    target.mkdir(parents=True, exist_ok=True)

    def train_one(data: Path, label: str, seed: int, shuffled: bool) -> training.TrainingResult:
        return _train_with_progress(label, lambda progress: training.train(
            data, target / label, base_dir, base_model_name=base_name, epochs=epochs, seed=seed,
            max_steps=max_steps, labels_shuffled=shuffled, progress=progress, cache=cache,
            threads=_threads(settings, threads),
        ))  # fmt: skip

    cache = None if no_cache else _training_cache(settings)

    with resources.as_file(dataset.example_data("tickets.jsonl")) as data:
        for label, seed, shuffled in demo.VERSIONS:
            _print_training(label, train_one(data, label, seed, shuffled))
    demo.write_route_files(target)
    typer.echo(
        f"route, rollout spec and evaluation pack: {target / 'routes.yaml'}, "
        f"{target / 'rollout.json'}, {target / 'eval-pack.jsonl'}\n"
        "next (README, Tutorial): register good, bad and good2 as ticket-triage@1, @2, @3,\n"
        f"  loragate routes sync {target / 'routes.yaml'}\n"
        "  loragate routes set-target ticket-triage ticket-triage@1,\n"
        f"  loragate eval pack create ticket-triage tickets --jsonl {target / 'eval-pack.jsonl'}"
        ",\n  then roll out @2 and @3"
    )


@adapters_app.command("demo-traffic")
def adapters_demo_traffic(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("--key", envvar="LORAGATE_API_KEY", help="An app key.")],
    route: Annotated[str, typer.Option(help="The route to ask.")] = demo.ROUTE,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Clients at once.")] = 2,
    duration: Annotated[float, typer.Option(min=1, help="Stop after this many seconds.")] = 600,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    url: UrlOption = None,
) -> None:
    """Send the bundled tickets to a route as clients would, until the duration or count is
    reached or the command is interrupted (SIGINT/SIGTERM), then print what came back."""
    base = gateway_url(settings_of(ctx), url)
    report = asyncio.run(
        demo.send_traffic(
            base, key, route, concurrency=concurrency, duration_s=duration, count=count
        )
    )
    typer.echo(report.line())


@adapters_app.command("demo-review")
def adapters_demo_review(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("--key", envvar="LORAGATE_API_KEY", help="A reviewer key.")],
    route: Annotated[str, typer.Option(help="The route whose queue to work.")] = demo.ROUTE,
    limit: Annotated[int, typer.Option(min=1, help="Decide at most this many items.")] = 100,
    url: UrlOption = None,
) -> None:
    """Work a route's review queue as a reviewer who knows the bundled tickets' labels: approve
    answers with the right category and urgency, correct the others (a person would use /review)."""
    base = gateway_url(settings_of(ctx), url)
    try:
        report = demo.review_queue(base, key, route, limit)
    except httpx.HTTPStatusError as exc:
        raise fail(f"HTTP {exc.response.status_code}: {exc.response.text[:300]}") from exc
    typer.echo(report.line())


cache_app = typer.Typer(help="The training cache: earlier runs by their inputs.")
adapters_app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list(ctx: typer.Context) -> None:
    """Cached training runs, most recently used first, and the cache's total size."""
    settings = settings_of(ctx)
    cache = _training_cache(settings)
    entries = cache.entries()
    for entry in entries:
        when = entry.last_used.strftime("%Y-%m-%d %H:%M")
        typer.echo(
            f"{entry.key[:16]}  run={entry.run_id}  data={entry.data_sha256[:12]}  "
            f"{entry.size_bytes:>10} bytes  used {when}"
        )
    total = sum(e.size_bytes for e in entries)
    typer.echo(f"{len(entries)} runs, {total} bytes of {cache.max_bytes} in {cache.root}")


@cache_app.command("prune")
def cache_prune(
    ctx: typer.Context,
    max_bytes: Annotated[
        int | None,
        typer.Option(min=0, help="Keep at most this many bytes (default: the configured bound)."),
    ] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Remove every cached run.")] = False,
) -> None:
    """Remove the least recently used cached runs until the cache fits the bound."""
    settings = settings_of(ctx)
    cache = _training_cache(settings)
    bound = 0 if all_runs else (max_bytes if max_bytes is not None else cache.max_bytes)
    removed = cache.prune(bound)
    freed = sum(e.size_bytes for e in removed)
    typer.echo(f"removed {len(removed)} runs ({freed} bytes); {len(cache.entries())} left")
