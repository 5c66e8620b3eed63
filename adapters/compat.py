"""Does an adapter fit a pool? Pure checks on what peft read from its config, the shapes of its
tensors and the shapes of the base model's weights.

The base-model rule, both parts required:

1. **Shapes.** Every LoRA tensor adapts a module the base model has, with its dimensions:
   ``lora_A`` is ``[r, in_features]`` and ``lora_B`` is ``[out_features, r]`` of that module's
   weight (``lora_embedding_A``/``_B`` are ``[r, num_embeddings]``/``[dim, r]``); any other tensor
   (``modules_to_save``) has the shape of the base weight it replaces. This is what decides
   whether vLLM can apply the adapter at all.
2. **Name.** When ``adapter_config.json`` names a base model, its last path component must equal,
   ignoring case, the pool's ``base_model`` or the name of the pool's model directory. A hub id
   (``HuggingFaceTB/SmolLM2-135M-Instruct``) and the local directory the adapter was trained on
   (``/data/models/smollm2-135m-instruct``) both pass; a model of the same architecture but
   another name (the non-instruct SmolLM2, say) is refused, since its weights differ.

And the adapter must change something: an adapter whose every LoRA update is zero (all of its
``lora_B`` or ``lora_A`` matrices zeros, as peft initialises them, or ``lora_alpha`` 0) would
serve exactly the base model. This is read from the weights, so the answer is exact and does
not depend on an engine, its load, or what else it has loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import (
    AdapterBaseModelMismatch,
    AdapterChangesNothing,
    AdapterConfigInvalid,
    AdapterRankTooHigh,
    AdapterUnknownTargetModules,
)
from adapters.inspect import LoraSummary
from adapters.tensors import Shape, TensorInfo

ALL_LINEAR = "all-linear"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\."
    r"(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What registration needs to know about an engine pool."""

    name: str
    base_model: str
    max_lora_rank: int
    model_dir: Path | None


@dataclass(frozen=True, slots=True)
class BaseModel:
    names: frozenset[str]  # lower-cased last path components it goes by
    weights: dict[str, Shape]

    @classmethod
    def of(cls, pool: PoolSpec, model_dir: Path, weights: dict[str, Shape]) -> BaseModel:
        return cls(frozenset({short_name(pool.base_model), model_dir.name.lower()}), weights)

    def modules(self) -> set[str]:
        return {name.removesuffix(".weight") for name in self.weights if name.endswith(".weight")}


@dataclass(frozen=True, slots=True)
class CheckedAdapter:
    rank: int  # the largest rank of any adapted module
    alpha: float
    target_modules: tuple[str, ...]


def short_name(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def check_adapter(
    summary: LoraSummary,
    tensors: dict[str, TensorInfo],
    base: BaseModel,
    max_rank: int,
    zero_tensors: frozenset[str] = frozenset(),
) -> CheckedAdapter:
    declared = summary.base_model_name_or_path
    if declared is not None and short_name(declared) not in base.names:
        raise AdapterBaseModelMismatch(
            f"The adapter was made for base model {short_name(declared)!r}; this pool serves "
            f"{' / '.join(sorted(base.names))}."
        )
    modules = base.modules()
    _check_targets(summary.target_modules, modules)
    lora = {name: LORA_KEY.match(name) for name in tensors}
    adapted = {m.group("module") for m in lora.values() if m is not None}
    if not adapted:
        raise AdapterUnknownTargetModules("The adapter's weights adapt no module at all.")
    ranks = [summary.r, *summary.rank_pattern.values()]
    ranks += [
        tensors[n].shape[0]
        for n, m in lora.items()
        if m and m.group("part").endswith("A") and len(tensors[n].shape) == 2
    ]
    rank = max(ranks)
    if rank > max_rank:
        raise AdapterRankTooHigh(
            f"The adapter has rank {rank}; this pool's engines accept at most {max_rank}."
        )
    for name, match in lora.items():
        if match is None:
            _check_replaced_weight(name, tensors[name].shape, base)
        else:
            _check_lora_tensor(match, tensors[name].shape, base, summary.fan_in_fan_out)
    _check_changes_something(summary, lora, zero_tensors)
    targets = summary.target_modules
    if isinstance(targets, str):
        targets = tuple(sorted({module.rsplit(".", 1)[-1] for module in adapted}))
    return CheckedAdapter(rank=rank, alpha=summary.lora_alpha, target_modules=targets)


def _check_changes_something(
    summary: LoraSummary, lora: dict[str, re.Match[str] | None], zero: frozenset[str]
) -> None:
    """Refuse an adapter whose every update ``scaling * B @ A`` is zero: it would serve exactly
    the base model. Decided from the weights alone, so no engine, load or float noise enters."""
    if summary.lora_alpha == 0:
        raise AdapterChangesNothing(
            "The adapter's lora_alpha is 0, so its scaling is zero: it changes nothing."
        )
    nonzero: dict[str, set[str]] = {}
    for name, match in lora.items():
        if match is None:
            return  # a replaced base weight (modules_to_save) changes the model by itself
        if name not in zero:
            nonzero.setdefault(match.group("module"), set()).add(match.group("part")[-1])
    if not any(parts == {"A", "B"} for parts in nonzero.values()):
        raise AdapterChangesNothing(
            "Every LoRA update of the adapter is zero (its lora_B or lora_A matrices are all "
            "zeros, as peft initialises them before training): it changes nothing."
        )


def _check_targets(targets: tuple[str, ...] | str, modules: set[str]) -> None:
    if targets == ALL_LINEAR:
        return
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise AdapterConfigInvalid(f"target_modules is not a valid regex: {exc}.") from exc
        if not any(pattern.fullmatch(module) for module in modules):
            raise AdapterUnknownTargetModules(
                f"target_modules {targets!r} matches no module of the base model."
            )
        return
    missing = [t for t in targets if not any(m == t or m.endswith(f".{t}") for m in modules)]
    if missing:
        raise AdapterUnknownTargetModules(
            f"The base model has no module named {', '.join(map(repr, missing))}."
        )


def _check_lora_tensor(
    match: re.Match[str], shape: Shape, base: BaseModel, fan_in_fan_out: bool
) -> None:
    module, part = match.group("module"), match.group("part")
    weight = base.weights.get(f"{module}.weight")
    if weight is None:
        raise AdapterBaseModelMismatch(
            f"The adapter adapts {module!r}, which the base model does not have."
        )
    if len(weight) != 2 or len(shape) != 2:
        raise AdapterBaseModelMismatch(f"{module!r}: only 2-D weights can carry LoRA here.")
    if part.startswith("lora_embedding"):
        rows, cols = weight  # [num_embeddings, dim]
        fits = shape[1] == rows if part.endswith("A") else shape[0] == cols
    else:
        out_features, in_features = weight[::-1] if fan_in_fan_out else weight
        fits = shape[1] == in_features if part.endswith("A") else shape[0] == out_features
    if not fits:
        raise AdapterBaseModelMismatch(
            f"The adapter's {part} for {module!r} has shape {list(shape)}, which does not fit the "
            f"base model's weight {list(weight)}: it was made for a different base model."
        )


def _check_replaced_weight(name: str, shape: Shape, base: BaseModel) -> None:
    weight = base.weights.get(name.removeprefix(PEFT_PREFIX))
    if weight != shape:
        raise AdapterBaseModelMismatch(
            f"The adapter's tensor {name!r} has no base model weight of shape {list(shape)}."
        )
