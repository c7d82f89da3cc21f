"""Causal-LM runs through the real command line: every data format trains (2 steps on a tiny Llama) in a
`python -m peftkit train` subprocess, then `peftkit evaluate` and `peftkit generate` work from the run folder alone
(run in-process through the same entry point, to spare a ~10 s interpreter start each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.sft_fixtures import SHARED_DATA, generation_template_file, run_cli, sft_data_files, tiny_causal_dir  # noqa: F401

TRAIN = {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "report_to": [],
         "save_strategy": "no", "disable_tqdm": True}
ADAPTER = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}


def write_recipe(path: Path, model_dir: Path, task: str, data: dict, train: dict | None = None, **top) -> Path:
    recipe = {"task": task, "output_dir": str(path.parent / "run"), "model": {"name_or_path": str(model_dir)},
              "adapter": ADAPTER, "data": {"max_length": 64, "max_train_samples": 16, "max_eval_samples": 8, **data},
              "train": {**TRAIN, **(train or {})}, **top}
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


CASES = {
    "text": ({"format": "text"}, {}),
    "prompt_completion": ({"format": "prompt_completion"}, {"packing": False}),
    "messages": ({"format": "messages"}, {"assistant_only_loss": True}),
    "alpaca": ({"format": "alpaca", "use_chat_template": True, "max_length": 128}, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_format_trains_through_the_cli(name, tmp_path, tiny_causal_dir, sft_data_files, generation_template_file):
    data, train = CASES[name]
    data = {**data, "train_file": str(sft_data_files[data["format"]])}
    if train.get("assistant_only_loss"):
        train = {**train, "chat_template_path": str(generation_template_file)}
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_causal_dir, "sft", data, train)
    result = run_cli("train", str(recipe))
    assert_ok(result)
    run = tmp_path / "run"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["packing"] is (train.get("packing", True))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["num_examples"] > 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["loss_tokens"] > 0
    assert "tokens per optimizer step" in result.stdout
    if train.get("packing", True):
        assert "packing (bfd)" in result.stdout and "padding 0.0%" in result.stdout


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory, tiny_causal_dir) -> Path:
    """A generative_classification run on the first SST-2 dev rows, from the real CLI."""
    folder = tmp_path_factory.mktemp("gen")
    dev = str(SHARED_DATA / "sst2" / "dev.tsv")
    recipe = write_recipe(folder / "recipe.yaml", tiny_causal_dir, "generative_classification",
                          {"train_file": dev, "eval_file": dev, "text_column": "sentence",
                           "label_names": ["negative", "positive"], "prompt_template": "Review: {text}\nSentiment:",
                           "max_length": 32, "max_eval_samples": 12})
    result = run_cli("train", str(recipe))
    assert_ok(result)
    assert "labels: 0=negative -> ' negative', 1=positive -> ' positive'" in result.stdout
    return folder / "run"


def test_generative_classification_writes_the_head_path_metrics_files(generative_run):
    metrics = json.loads((generative_run / "metrics.json").read_text())
    assert metrics["num_examples"] == 12 and sum(map(sum, metrics["confusion_matrix"])) == 12
    assert metrics["labels"] == ["negative", "positive"]
    for name in ("eval_report.txt", "confusion_matrix.png", "label_map.json", "recipe.yaml"):
        assert (generative_run / name).is_file()


def test_evaluate_reproduces_the_training_time_metrics(generative_run, capsys):
    from peftkit.cli import main

    before = json.loads((generative_run / "metrics.json").read_text())
    assert main(["evaluate", str(generative_run)]) == 0
    after = json.loads((generative_run / "metrics.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["confusion_matrix"] == before["confusion_matrix"]
    assert "written to" in capsys.readouterr().out


def test_evaluate_on_another_file(generative_run, tmp_path):
    from peftkit.cli import main

    other = tmp_path / "other.tsv"
    lines = (SHARED_DATA / "sst2" / "test_labeled.tsv").read_text(encoding="utf-8").splitlines()[:7]
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["evaluate", str(generative_run), "--data", str(other)]) == 0
    (out,) = generative_run.glob("eval-other-*")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 6


def test_generate_prints_label_probabilities_through_the_runs_template(generative_run, capsys):
    """The label names with probabilities, equal to a softmax of evaluation's label scores for the prompt built
    with the run's template ("Review: {text}\nSentiment:"), not of the bare text."""
    import math

    from peftkit.cli import main
    from peftkit.data.causal_encode import encoder_for
    from peftkit.evaluation.causal import score_labels
    from peftkit.model.base import load_trained_causal_lm
    from peftkit.runs.read import load_run

    text = "a gorgeous, witty, seductive movie ."
    assert main(["generate", str(generative_run), text]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = {line.split()[0]: float(line.split()[1]) for line in lines}
    assert set(printed) == {"negative", "positive"} and abs(sum(printed.values()) - 1) < 1e-3
    assert printed[lines[0].split()[0]] >= printed[lines[1].split()[0]]  # the prediction first
    run_dir, recipe = load_run(generative_run)
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    encoder = encoder_for(recipe, tokenizer)

    def probs(prompt):
        scores = score_labels(model.eval(), encoder, [prompt], [" negative", " positive"], False)[0]
        total = sum(math.exp(s) for s in scores)
        return {"negative": math.exp(scores[0]) / total, "positive": math.exp(scores[1]) / total}

    templated, bare = probs(f"Review: {text}\nSentiment:"), probs(text)
    assert all(abs(printed[k] - templated[k]) < 1e-3 for k in printed)
    assert any(abs(printed[k] - bare[k]) > 1e-3 for k in printed), "the template changes the scores"


def test_generate_raw_generates_text(generative_run, capsys):
    from peftkit.cli import main

    assert main(["generate", str(generative_run), "Is this movie good?", "--raw", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and "positive  0." not in out and "negative  0." not in out


def test_generate_refuses_a_classification_head_run(tmp_path, capsys):
    from peftkit.cli import main
    from peftkit.recipe import recipe_from_dict

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, run / "adapter" / "adapter_model.safetensors")  # loads: the refusal is the task's
    (run / "adapter" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    recipe = recipe_from_dict({"model": {"name_or_path": "x"}, "data": {"train_file": "t.tsv"}})
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["generate", str(run), "hello"]) == 2
    assert "classification head" in capsys.readouterr().err


def test_truncation_that_drops_most_examples_stops_before_the_model_loads(tmp_path, tiny_causal_dir, capsys):
    from peftkit.cli import main

    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "word " * 80 + "\nAnswer:", "completion": " yes"}] * 6 + [{"prompt": "Q:", "completion": " a"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_causal_dir, "sft",
                          {"format": "prompt_completion", "train_file": str(data), "max_length": 32})
    assert main(["train", str(recipe)]) == 2
    captured = capsys.readouterr()
    assert "no token to learn from" in captured.err and "data.max_length" in captured.err
    assert "trainable parameters" not in captured.out  # stopped before the model was loaded


def test_validate_audits_a_causal_recipe_with_the_tokenizer_only(monkeypatch, capsys):
    from peftkit.cli import main
    from tests.helpers.sft_fixtures import REPO

    monkeypatch.chdir(REPO)
    assert main(["validate", "recipes/sst2/smollm2_lora_gen.yaml", "data.max_train_samples=50"]) == 0
    out = capsys.readouterr().out
    assert "task: generative_classification" in out and "train: 50 examples used" in out
    assert "eval: 872 examples used" in out and "tokens" in out


@pytest.mark.slow
def test_real_smollm2_learns_sst2_as_a_next_word(tmp_path):
    """SmolLM2-135M, 160 SST-2 sentences (7 steps), scored on 100 dev sentences: measured 0.77 accuracy."""
    from tests.helpers.sft_fixtures import REPO

    result = run_cli("train", "recipes/sst2/smollm2_lora_gen.yaml", f"output_dir={tmp_path / 'run'}",
                     "data.max_train_samples=160", "data.max_eval_samples=100", "train.disable_tqdm=true",
                     cwd=REPO, timeout=3600)
    assert_ok(result)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_examples"] == 100 and metrics["accuracy"] >= 0.7


def test_qlora_with_gradient_checkpointing_trains_and_scores(tmp_path, tiny_causal_dir, capsys):
    """4-bit base (k-bit preparation, CPU weight repacking off), activation checkpointing, label scoring."""
    from peftkit.cli import main

    dev = str(SHARED_DATA / "sst2" / "dev.tsv")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_causal_dir, "generative_classification",
                          {"train_file": dev, "eval_file": dev, "text_column": "sentence",
                           "label_names": ["negative", "positive"], "max_length": 32},
                          {"gradient_checkpointing": True}, quantization={"load_in_4bit": True})
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "(allowed 0.05)" in out  # the float32 model's packing check allows 4-bit rounding: it is quantized
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["global_step"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_examples"] == 8


def test_padding_free_batches_train_the_same_model_as_padded_batches(tmp_path, tiny_causal_dir):
    """generative_classification with train.padding_free (no packing): the same examples per step as padded
    batches, joined into one row; float32, same order, no dropout -> the same adapter to rounding noise."""
    from safetensors.torch import load_file

    dev = str(SHARED_DATA / "sst2" / "dev.tsv")
    data = {"train_file": dev, "eval_file": dev, "text_column": "sentence", "label_names": ["negative", "positive"],
            "prompt_template": "Review: {text}\nSentiment:", "max_length": 48}
    adapters, outputs = {}, {}
    for name, padding_free in (("padded", False), ("padding_free", True)):
        folder = tmp_path / name
        folder.mkdir()
        # SGD: updates proportional to the gradients (Adam's first steps are ~lr x sign and would hide a change)
        train = {"packing": False, "padding_free": padding_free, "bf16": False, "optim": "sgd",
                 "learning_rate": 0.1, "warmup_steps": 0, "train_sampling_strategy": "random"}
        recipe = write_recipe(folder / "recipe.yaml", tiny_causal_dir, "generative_classification", data, train,
                              evaluate={"enabled": False})
        result = run_cli("train", str(recipe))
        assert_ok(result)
        outputs[name] = result.stdout
        adapters[name] = load_file(folder / "run" / "adapter" / "adapter_model.safetensors")
    assert "padding-free, no packing" in outputs["padding_free"] and "padding 0.0%" in outputs["padding_free"]
    assert "padding 0.0%" not in outputs["padded"]
    for key, padded in adapters["padded"].items():
        moved = (adapters["padding_free"][key] - padded).abs().max() / padded.abs().max().clamp(min=1e-12)
        assert moved < 1e-4, (key, float(moved))
