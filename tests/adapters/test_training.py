"""Adapter training: the dataset rules (fast, no torch) and one real tiny run on the bundled model
(slow: about a minute on two CPU cores)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from importlib.resources import as_file
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner, Result

from adapters.dataset import (
    DatasetError,
    Example,
    example_data,
    load_examples,
    parse_example,
    shuffle_labels,
    split_examples,
)
from adapters.training_threads import usable_cores
from service.cli.app import app
from tests.conftest import prepared_model

SYSTEM = {"role": "system", "content": "Answer in JSON."}
runner = CliRunner()


def line(user: str, answer: str) -> str:
    messages = [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages})


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_line(i: int) -> Example:
    return parse_example(line(f"ticket {i}", f'{{"n":{i}}}'), "test", i + 1)


def bundled() -> list[Example]:
    with as_file(example_data("tickets.jsonl")) as path:
        return load_examples(path)


# --- the dataset file -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', '"messages" list'),
        ('{"messages": []}', '"messages" list'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role must be one of"),
        ('{"messages": [{"role": ["user"], "content": "x"}]}', "messages[0].role must be one of"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content must be a string"),
        ('{"messages": ["hello"]}', "messages[0] is not an object"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "no user message"),
        (line("q", " "), "answer is empty"),
    ],
)
def test_invalid_lines_are_refused_with_their_line_number(
    tmp_path: Path, bad: str, message: str
) -> None:
    path = write(tmp_path, line("a", "1"), "", bad, line("b", "2"))
    with pytest.raises(DatasetError) as caught:
        load_examples(path)
    assert f"{path}:3:" in str(caught.value)  # blank lines count in the numbering
    assert message in str(caught.value)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    examples = load_examples(write(tmp_path, "", line("a", "1"), "  ", line("b", "2")))
    assert [e.line for e in examples] == [2, 4]
    assert examples[1].answer.content == "2"
    assert [m.role for m in examples[1].prompt] == ["system", "user"]


def test_one_example_is_not_enough(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least 2 examples"):
        load_examples(write(tmp_path, line("a", "1")))


def test_unreadable_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_examples(tmp_path / "missing.jsonl")


def test_bundled_tickets_follow_their_schema() -> None:
    schema_file = example_data("tickets.schema.json")
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = bundled()
    assert len(examples) >= 48
    assert len({e.messages[0].content for e in examples}) == 1  # one fixed instruction
    assert len({e.prompt[-1].content for e in examples}) == len(examples)
    answers = [json.loads(e.answer.content) for e in examples]
    for answer in answers:
        validator.validate(answer)
    assert set(Counter(a["category"] for a in answers)) == set(
        schema["properties"]["category"]["enum"]
    )
    assert {a["urgency"] for a in answers} == {1, 2, 3}
    # Compact, as vLLM writes JSON with whitespace disabled.
    assert all(" " not in e.answer.content.split('"next_action"')[0] for e in examples)


# --- split and label shuffling --------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    examples = bundled()
    train, val = split_examples(examples, val_fraction=0.15, seed=0)
    again = split_examples(examples, val_fraction=0.15, seed=0)
    assert (train, val) == again
    assert len(val) == round(len(examples) * 0.15)
    assert sorted(e.line for e in train + val) == [e.line for e in examples]
    assert split_examples(examples, val_fraction=0.15, seed=1)[1] != val


@pytest.mark.parametrize(
    ("n", "fraction", "expected_val"), [(2, 0.01, 1), (2, 0.99, 1), (10, 0.2, 2)]
)
def test_split_keeps_one_example_on_each_side(n: int, fraction: float, expected_val: int) -> None:
    train, val = split_examples([load_line(i) for i in range(n)], val_fraction=fraction, seed=3)
    assert len(val) == expected_val
    assert len(train) == n - expected_val


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_split_refuses_a_fraction_outside_zero_and_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_examples([load_line(i) for i in range(4)], val_fraction=fraction, seed=0)


def test_shuffled_labels_move_every_answer_to_another_prompt() -> None:
    examples = [load_line(i) for i in range(9)]
    shuffled = shuffle_labels(examples, seed=0)
    assert [e.prompt for e in shuffled] == [e.prompt for e in examples]
    assert [e.line for e in shuffled] == [e.line for e in examples]
    assert sorted(e.answer.content for e in shuffled) == sorted(e.answer.content for e in examples)
    assert all(s.answer != e.answer for s, e in zip(shuffled, examples, strict=True))
    assert shuffle_labels(examples, seed=0) == shuffled
    assert shuffle_labels(examples, seed=1) != shuffled


# --- the command line, up to where torch would start ----------------------------------------


def test_the_cli_imports_without_the_engine_extra() -> None:
    """The CLI runs before the engine extra is installed (`loragate engine install` installs
    it): with its packages unimportable, the CLI and the training module still import."""
    code = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'peft', 'transformers', 'psutil', 'vllm'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import service.cli.app, adapters.training"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def train_cli(*args: str) -> Result:
    return runner.invoke(app, ["adapters", "train", *args])


def test_cli_reports_a_bad_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    data = write(tmp_path, line("a", "1"), '{"messages": [{"role": "user", "content": "x"}]}')
    result = train_cli("--data", str(data), "--name", "t", "--base-model-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"{data}:2: the last message must be the assistant" in result.output
    assert not (tmp_path / "imports").exists()


def test_cli_refuses_a_bad_name_and_an_existing_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    data = write(tmp_path, line("a", "1"), line("b", "2"))
    base = ["--data", str(data), "--base-model-dir", str(tmp_path)]
    result = train_cli(*base, "--name", "bad@name")
    assert result.exit_code == 1 and "not a valid adapter name" in result.output
    result = train_cli(*base, "--name", "ok", "--out", str(tmp_path))
    assert result.exit_code == 1 and "exists already" in result.output


# --- slow: a real run ------------------------------------------------------------------------


# 9 examples an epoch: the step budget ends the second epoch after 6 of its 9 steps.
TRAINED_ARGS = ("--name", "triage", "--epochs", "2", "--max-steps", "15", "--max-len", "128",
                "--val-fraction", "0.25", "--seed", "7")  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Result]]:
    """12 short bundled examples (9 trained on, 3 held out), 2 epochs cut to 15 steps, via the
    CLI, with a training cache of the module's own."""
    pytest.importorskip("peft")
    work = tmp_path_factory.mktemp("training")
    data = work / "tickets-12.jsonl"
    lines = example_data("tickets.jsonl").read_text().splitlines(True)
    data.write_text("".join(sorted(lines, key=len)[:12]))  # the shortest: all within 128 tokens
    out = work / "adapter"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LORAGATE_TRAINING_CACHE_DIR", str(work / "cache"))
        result = train_cli(
            "--data", str(data), "--out", str(out), *TRAINED_ARGS,
            "--base-model-dir", str(prepared_model()),
        )  # fmt: skip
        assert result.exit_code == 0, (result.output, result.exception)
        yield data, out, result


@pytest.mark.slow
def test_real_run_writes_a_registrable_adapter(trained: tuple[Path, Path, Result]) -> None:
    _, out, result = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16)
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert not out.with_name("adapter.partial").exists()
    assert f"loragate adapters register triage {out}" in result.output


@pytest.mark.slow
def test_real_run_manifest_and_loss(trained: tuple[Path, Path, Result]) -> None:
    data, out, result = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert manifest["examples"] == {"train": 9, "validation": 3}
    assert manifest["base_model"] == "smollm2-135m-instruct"
    assert manifest["seed"] == 7
    assert manifest["hyperparameters"]["epochs"] == 2
    assert manifest["hyperparameters"]["max_steps"] == 15
    assert manifest["hyperparameters"]["labels_shuffled"] is False
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    assert manifest["val_loss_after"] == manifest["epochs"][-1]["val_loss"]
    assert manifest["val_loss_after"] < manifest["val_loss_before"]
    before, after = manifest["val_loss_before"], manifest["val_loss_after"]
    assert f"held-out loss {before:.3f} -> {after:.3f}" in result.output


@pytest.mark.slow
def test_real_run_loads_back_with_peft(trained: tuple[Path, Path, Result]) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, out, _ = trained
    base = AutoModelForCausalLM.from_pretrained(prepared_model(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    saved = load_file(out / "adapter_model.safetensors")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(loaded) == 30 * 4 * 2  # layers x modules x (A, B)
    # Trained: the B matrices start at zero and are not zero any more.
    assert all(bool(t.abs().sum() > 0) for n, t in saved.items() if "lora_B" in n)
    name = next(n for n in saved if "layers.0.self_attn.q_proj.lora_B" in n)
    match = next(p for n, p in loaded.items() if "layers.0.self_attn.q_proj.lora_B" in n)
    assert torch.equal(saved[name], match.detach())


@pytest.mark.slow
def test_the_same_inputs_again_copy_the_cached_run_and_no_cache_trains(
    trained: tuple[Path, Path, Result],
) -> None:
    data, out, _ = trained
    first = json.loads((out / "manifest.json").read_text())
    assert first["cached"] is False and first["run_id"]
    args = ("--data", str(data), *TRAINED_ARGS, "--base-model-dir", str(prepared_model()))
    again = train_cli(*args, "--out", str(out.with_name("again")))
    assert again.exit_code == 0, (again.output, again.exception)
    assert f"cached: the result of run {first['run_id']}" in again.output
    copied = json.loads((out.with_name("again") / "manifest.json").read_text())
    assert copied["cached"] is True and copied["cached_from"] == first["run_id"]
    assert copied["run_id"] != first["run_id"]
    assert copied["val_loss_after"] == first["val_loss_after"]
    weights = "adapter_model.safetensors"
    assert (out.with_name("again") / weights).read_bytes() == (out / weights).read_bytes()

    fresh = train_cli(*args, "--out", str(out.with_name("fresh")), "--no-cache", "--threads", "1")
    assert fresh.exit_code == 0, (fresh.output, fresh.exception)
    retrained = json.loads((out.with_name("fresh") / "manifest.json").read_text())
    assert retrained["cached"] is False and "cached_from" not in retrained
    assert retrained["threads"] == [1]  # fixed; the first run's followed the free cores
    assert first["threads"] and set(first["threads"]) <= set(range(1, usable_cores() + 1))
    assert "cached:" not in fresh.output and "2 epochs" in fresh.output
