"""Fine-tune a LoRA adapter with peft from chat-format JSONL, ready to register.

Each line is ``{"messages": [{"role", "content"}, ...]}`` ending with the assistant's answer (the
format the review export produces). Only the final assistant message is learned: everything before
it is the prompt, masked out of the loss. A seeded shuffle holds out a validation split whose loss
is measured before training and after every epoch.

torch, transformers and peft are imported inside :func:`train` only, so the data helpers (and the
CLI that imports this module) stay light; the gateway process never imports this module at all.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapters.dataset import (
    DatasetError,
    Example,
    Message,
    file_sha256,
    load_examples,
    shuffle_labels,
    split_examples,
)
from adapters.training_cache import (
    RECIPE,
    TrainingCache,
    directory_sha256,
    library_versions,
    new_run_id,
    run_key,
)
from service.clock import now

if TYPE_CHECKING:
    import torch

    from adapters.training_threads import ThreadGovernor

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE_INDEX = -100  # the label torch's cross-entropy skips
MANIFEST = "manifest.json"

DEFAULT_EPOCHS = 2
# The bundled demo: one epoch over its 48 training examples gets most of the held-out gain for
# half the time (measured on two CPU cores: 2.84 -> 1.29 in 69 s; two epochs 1.21).
DEMO_EPOCHS = 1
DEMO_MAX_STEPS: int | None = None
DEFAULT_LR = 1e-3
DEFAULT_RANK = 8
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_MAX_LEN = 256
DEFAULT_BATCH_SIZE = 1


@dataclass(frozen=True)
class TrainingProgress:
    """One step of work done: ``stage`` is "evaluate" (held-out loss) or "train"."""

    stage: Literal["evaluate", "train"]
    epoch: int
    step: int
    total_steps: int
    loss: float | None


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class EpochLoss:
    epoch: int
    train_loss: float
    val_loss: float


@dataclass(frozen=True)
class TrainingResult:
    out_dir: Path
    data_sha256: str
    train_examples: int
    validation_examples: int
    val_loss_before: float
    val_loss_after: float
    epochs: tuple[EpochLoss, ...]
    seconds: float
    run_id: str
    cached_from: str | None = None  # the run whose result a cache hit copied


@dataclass(frozen=True)
class _Tokenized:
    input_ids: list[int]
    labels: list[int]


def _tokenize(tokenizer: Any, example: Example, max_len: int, where: str) -> _Tokenized:
    def render(messages: Sequence[Message], *, generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(
            [asdict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return str(text)

    prompt = render(example.prompt, generation_prompt=True)
    full = render(example.messages, generation_prompt=False)
    if not full.startswith(prompt):
        raise DatasetError(f"{where}: the chat template does not extend the prompt with the answer")
    # Tokenized apart, as at inference: the engine tokenizes the prompt and generates the rest.
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    total = len(prompt_ids) + len(answer_ids)
    if total > max_len:
        raise DatasetError(f"{where}: {total} tokens, longer than max_len {max_len}")
    return _Tokenized(
        input_ids=[*prompt_ids, *answer_ids],
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(answer_ids),
    )


def _batches(items: Sequence[_Tokenized], size: int) -> Iterator[Sequence[_Tokenized]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _collate(batch: Sequence[_Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(item.input_ids) for item in batch)

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([padded(i.input_ids, pad_id) for i in batch]),
        "attention_mask": torch.tensor([padded([1] * len(i.input_ids), 0) for i in batch]),
        "labels": torch.tensor([padded(i.labels, IGNORE_INDEX) for i in batch]),
    }


def _summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of the answer tokens' cross-entropy, and how many tokens it covers."""
    import torch

    labels = batch["labels"]
    answer = (labels != IGNORE_INDEX).int()
    # Logits only from the last position before the first answer token on: the vocabulary
    # projection of every prompt position would be about a fifth of the work, for nothing.
    start = max(int(answer.argmax(dim=1).min()) - 1, 0)
    keep = labels.shape[1] - start
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits
    targets = labels[:, start + 1 :]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int(answer.sum())


class _Fit:
    """The LoRA-wrapped model, its optimizer and schedule: one training run in memory."""

    def __init__(
        self,
        base_model_dir: Path,
        *,
        rank: int,
        alpha: int,
        lr: float,
        batch_size: int,
        total_steps: int,
        progress: ProgressCallback | None,
        threads: ThreadGovernor,
    ) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        # float32: these CPUs have no fast bfloat16, and small LoRA updates get lost in it.
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM"
        )
        self.model: Any = get_peft_model(base, config)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=lr)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 1 - step / total_steps
        )
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.step = 0
        self.progress = progress
        self.threads = threads

    def evaluate(self, items: Sequence[_Tokenized], pad_id: int, epoch: int) -> float:
        """Mean cross-entropy per answer token over ``items``."""
        import torch

        self.model.eval()
        total, count = 0.0, 0
        steps = math.ceil(len(items) / self.batch_size)
        with torch.no_grad():
            for step, batch in enumerate(_batches(items, self.batch_size), start=1):
                self.threads.tick()
                loss, tokens = _summed_loss(self.model, _collate(batch, pad_id))
                total, count = total + loss.item(), count + tokens
                if self.progress:
                    self.progress(TrainingProgress("evaluate", epoch, step, steps, None))
        self.model.train()
        return total / count

    def train_epoch(self, items: Sequence[_Tokenized], pad_id: int, epoch: int) -> float:
        """One pass over ``items`` (already shuffled); the mean training loss per answer token."""
        import torch

        total, count = 0.0, 0
        for batch in _batches(items, self.batch_size):
            if self.step == self.total_steps:
                break  # a step budget below the epochs' worth ends this epoch early
            self.threads.tick()
            summed, tokens = _summed_loss(self.model, _collate(batch, pad_id))
            mean: Any = summed / tokens
            mean.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad()
            self.step += 1
            total, count = total + summed.item(), count + tokens
            if self.progress:
                loss = summed.item() / tokens
                self.progress(TrainingProgress("train", epoch, self.step, self.total_steps, loss))
        return total / count

    def save(self, out_dir: Path, base_model_name: str) -> None:
        self.model.peft_config["default"].base_model_name_or_path = base_model_name
        # Not "auto": that looks the base model up on the hub to see if the vocabulary changed.
        self.model.save_pretrained(str(out_dir), save_embedding_layers=False)
        # peft also writes a model card of placeholders; the manifest is the description.
        (out_dir / "README.md").unlink(missing_ok=True)


def train(
    data_path: Path,
    out_dir: Path,
    base_model_dir: Path,
    *,
    base_model_name: str,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    rank: int = DEFAULT_RANK,
    alpha: int | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    max_len: int = DEFAULT_MAX_LEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_steps: int | None = None,
    labels_shuffled: bool = False,
    progress: ProgressCallback | None = None,
    cache: TrainingCache | None = None,
    threads: int | None = None,
) -> TrainingResult:
    """Train a LoRA adapter and write it with its manifest to ``out_dir`` (which must not exist).

    ``base_model_name`` is the name the engines serve the base model under; it goes into
    ``adapter_config.json`` in place of the local directory. ``alpha`` defaults to twice the rank.
    With ``labels_shuffled`` the training answers are swapped between examples (the validation
    split keeps the true answers, so its loss shows how much worse the result is).
    ``max_steps`` ends training after that many optimizer steps (the learning rate decays to 0
    over them), inside an epoch if need be. With a ``cache``, a run with the same inputs as an
    earlier one copies that run's result instead of training again (the manifest says
    ``cached: true`` and names the run in ``cached_from``). ``threads`` fixes the compute
    threads; unset, they follow the cores other processes leave free (``training_threads``).
    """
    if epochs < 1 or rank < 1 or batch_size < 1 or lr <= 0 or max_len < 1:
        raise ValueError("epochs, rank, batch_size, max_len and lr must be positive")
    if max_steps is not None and max_steps < 1:
        raise ValueError("max_steps must be positive")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists already; adapter directories are never reused")
    started = time.monotonic()
    alpha = alpha if alpha is not None else 2 * rank
    examples = load_examples(data_path)
    hyperparameters = {
        "epochs": epochs,
        "lr": lr,
        "rank": rank,
        "alpha": alpha,
        "target_modules": list(TARGET_MODULES),
        "batch_size": batch_size,
        "max_steps": max_steps,
        "max_len": max_len,
        "val_fraction": val_fraction,
        "optimizer": "AdamW",
        "schedule": "linear decay to 0",
        "labels_shuffled": labels_shuffled,
    }
    data_sha256 = file_sha256(data_path)

    def fit_and_write(key: str | None) -> TrainingResult:
        return _fit_and_write(
            examples, data_path, data_sha256, out_dir, base_model_dir, base_model_name,
            hyperparameters, seed, progress, started, key, threads,
        )  # fmt: skip

    if cache is None:
        return fit_and_write(None)
    key = run_key({
        "data_sha256": data_sha256, "base_model": base_model_name,
        "base_model_sha256": directory_sha256(base_model_dir), "seed": seed,
        "hyperparameters": hyperparameters, "libraries": library_versions(), "recipe": RECIPE,
    })  # fmt: skip
    with cache.hold(key):
        hit = cache.find(key)
        if hit is not None:
            return _copy_cached(hit, out_dir, started)
        result = fit_and_write(key)
        cache.put(key, out_dir)
        return result


def _fit_and_write(
    examples: Sequence[Example], data_path: Path, data_sha256: str, out_dir: Path,
    base_model_dir: Path, base_model_name: str, hyperparameters: dict[str, Any], seed: int,
    progress: ProgressCallback | None, started: float, key: str | None, threads: int | None,
) -> TrainingResult:  # fmt: skip
    """The run itself: split, tokenize, train, evaluate, write ``out_dir`` and its manifest."""
    val_fraction, labels_shuffled = (
        hyperparameters["val_fraction"],
        hyperparameters["labels_shuffled"],
    )
    max_len, batch_size = hyperparameters["max_len"], hyperparameters["batch_size"]
    epochs = hyperparameters["epochs"]
    train_set, val_set = split_examples(examples, val_fraction=val_fraction, seed=seed)
    if labels_shuffled:
        train_set = shuffle_labels(train_set, seed=seed)

    import torch
    from transformers import AutoTokenizer, set_seed
    from transformers import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    from adapters.training_threads import ThreadGovernor  # psutil: the engine extra

    governor = ThreadGovernor(threads, torch.set_num_threads)
    set_seed(seed)  # python, numpy and torch generators: the LoRA initialisation
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenized(items: Sequence[Example]) -> list[_Tokenized]:
        return [_tokenize(tokenizer, e, max_len, f"{data_path}:{e.line}") for e in items]

    train_items, val_items = tokenized(train_set), tokenized(val_set)
    fit = _Fit(
        base_model_dir,
        rank=hyperparameters["rank"],
        alpha=hyperparameters["alpha"],
        lr=hyperparameters["lr"],
        batch_size=batch_size,
        total_steps=_total_steps(
            epochs, len(train_items), batch_size, hyperparameters["max_steps"]
        ),
        progress=progress,
        threads=governor,
    )
    val_before = fit.evaluate(val_items, pad_id, 0)
    history: list[EpochLoss] = []
    rng = random.Random(seed)
    for epoch in range(1, epochs + 1):
        if fit.step == fit.total_steps:
            break  # max_steps spent
        rng.shuffle(train_items)
        train_loss = fit.train_epoch(train_items, pad_id, epoch)
        history.append(EpochLoss(epoch, train_loss, fit.evaluate(val_items, pad_id, epoch)))

    result = TrainingResult(
        out_dir=out_dir,
        data_sha256=data_sha256,
        train_examples=len(train_set),
        validation_examples=len(val_set),
        val_loss_before=val_before,
        val_loss_after=history[-1].val_loss,
        epochs=tuple(history),
        seconds=round(time.monotonic() - started, 1),
        run_id=new_run_id(),
    )
    # Written beside the final name and renamed at the end: a directory that exists is complete.
    partial = _partial(out_dir)
    fit.save(partial, base_model_name)
    manifest = _manifest(result, hyperparameters, base_model_name, seed)
    manifest["threads"] = sorted(governor.used)
    if key is not None:
        manifest["cache_key"] = key
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    partial.rename(out_dir)
    return result


def _total_steps(epochs: int, examples: int, batch_size: int, max_steps: int | None) -> int:
    """Optimizer steps of the run: every epoch's batches, or fewer under ``max_steps``."""
    steps = epochs * math.ceil(examples / batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def _partial(out_dir: Path) -> Path:
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial


def _copy_cached(hit: Path, out_dir: Path, started: float) -> TrainingResult:
    """``out_dir`` as a copy of the cached run in ``hit``; its manifest says where it came from."""
    manifest = json.loads((hit / MANIFEST).read_text())
    partial = _partial(out_dir)
    shutil.copytree(hit, partial)
    seconds = round(time.monotonic() - started, 1)
    manifest.update(
        cached=True, cached_from=manifest["run_id"], run_id=new_run_id(), seconds=seconds,
        created_at=now().isoformat(timespec="seconds"),
    )  # fmt: skip
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    partial.rename(out_dir)
    return TrainingResult(
        out_dir=out_dir,
        data_sha256=manifest["data_sha256"],
        train_examples=manifest["examples"]["train"],
        validation_examples=manifest["examples"]["validation"],
        val_loss_before=manifest["val_loss_before"],
        val_loss_after=manifest["val_loss_after"],
        epochs=tuple(EpochLoss(**e) for e in manifest["epochs"]),
        seconds=seconds,
        run_id=manifest["run_id"],
        cached_from=manifest["cached_from"],
    )


def _manifest(
    result: TrainingResult, hyperparameters: dict[str, object], base_model: str, seed: int
) -> dict[str, object]:
    try:
        version = metadata.version("loragate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "run_id": result.run_id,
        "cached": False,
        "data_sha256": result.data_sha256,
        "examples": {"train": result.train_examples, "validation": result.validation_examples},
        "hyperparameters": hyperparameters,
        "base_model": base_model,
        "seed": seed,
        "val_loss_before": result.val_loss_before,
        "val_loss_after": result.val_loss_after,
        "epochs": [asdict(e) for e in result.epochs],
        "seconds": result.seconds,
        "created_at": now().isoformat(timespec="seconds"),
        "loragate_version": version,
    }
