"""A newcomer's path, for real: the main job in a fresh clone with no ../shared beside it; evaluate without the
training file; checkpoints kept as the recipe asks; progress in log files as lines, not carriage returns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe


def fresh_clone(tmp_path: Path) -> Path:
    """The committed HEAD, cloned where no ../shared exists (a user's machine). It tests what is committed: an
    uncommitted change is not in the clone (as it would not be in a user's)."""
    clone = tmp_path / "clone"
    if (REPO / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    else:  # a source tarball: its files are what a user has
        shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns("runs", ".git", "__pycache__"))
    assert not (clone.parent / "shared").exists() and not (clone.parent.parent / "shared").exists()
    return clone


def test_main_job_runs_in_a_bare_clone(tmp_path):
    clone = fresh_clone(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "peftkit", "train", "train.max_steps=3",
                             "data.max_train_samples=64", "data.max_eval_samples=32", "train.logging_steps=1"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = clone / "runs" / "quickstart-sst2-minilm"
    for name in ("recipe.yaml", "adapter/adapter_model.safetensors", "metrics.json", "eval_report.txt",
                 "confusion_matrix.png", "train_summary.json", "data_report.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == 32 and metrics["labels"] == ["negative", "positive"]
    assert metrics["data_file"] == "builtin:sst2/dev.tsv"
    assert json.loads((run / "train_summary.json").read_text())["global_step"] == 3
    import peftkit

    assert Path(peftkit.__file__).resolve().is_relative_to(REPO)  # the test process; the run used the clone:
    assert "train: 64 rows used of 4000 read from builtin:sst2/train_4k.tsv" in result.stdout
    # stderr is a pipe here: the Trainer's bars are off, its losses are plain lines, no carriage returns
    assert "\r" not in result.stdout + result.stderr
    assert "'loss':" in result.stdout + result.stderr
    assert "run folder: runs/quickstart-sst2-minilm (" in result.stdout


@pytest.fixture
def finished_run(tiny_run, tmp_path):
    """A private copy of the session's finished tiny run (2 steps, checkpoint at step 2), with its recipe."""
    recipe_path, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".peftkit-lock"))
    raw = yaml.safe_load((copy / "recipe.yaml").read_text())
    raw["output_dir"] = str(copy)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy, raw


def test_evaluate_does_not_read_the_training_file(finished_run, tmp_path):
    run, raw = finished_run
    before = json.loads((run / "metrics.json").read_text())
    raw["data"]["train_file"] = str(tmp_path / "deleted" / "train.tsv")  # gone: a clone without the data
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_cli("evaluate", str(run), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["confusion_matrix"] == before["confusion_matrix"]
    assert "\r" not in result.stderr


def test_evaluate_data_files_with_the_same_name_keep_their_own_results(finished_run, tmp_path):
    run, raw = finished_run
    dev = Path(raw["data"]["eval_file"]).read_text().splitlines()
    for folder, rows in (("a", dev[:11]), ("b", dev[:1] + dev[20:25])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.tsv").write_text("\n".join(rows) + "\n")
    from peftkit.cli import main

    assert main(["evaluate", str(run), "--data", str(tmp_path / "a" / "test.tsv")]) == 0
    assert main(["evaluate", str(run), "--data", str(tmp_path / "b" / "test.tsv")]) == 0
    sizes = sorted(json.loads((p / "metrics.json").read_text())["num_examples"] for p in run.glob("eval-test-*"))
    assert sizes == [5, 10]


def test_keep_checkpoints_none_frees_the_disk_and_resume_says_the_run_is_finished(tiny_llama_dir, sst2_small,
                                                                                  tmp_path, capsys, one_torch_thread):
    from peftkit.cli import main

    recipe = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run", keep_checkpoints="none")
    recipe["train"].update(max_steps=2, save_strategy="steps", save_steps=1)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoints").exists() and (tmp_path / "run" / "adapter").is_dir()
    assert "removed 2 checkpoints" in out and "keep_checkpoints: none" in out
    assert main(["train", str(path), "--resume"]) == 2
    assert "holds a finished run" in capsys.readouterr().err


def test_default_keeps_the_last_checkpoint_so_resume_of_a_finished_run_still_works(tiny_llama_dir, sst2_small,
                                                                                    tmp_path, capsys,
                                                                                    one_torch_thread):
    from peftkit.cli import main

    recipe = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run")
    recipe["train"].update(max_steps=2, save_strategy="steps", save_steps=1)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["train", str(path)]) == 0
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    capsys.readouterr()
    assert main(["train", str(path), "--resume"]) == 0
    assert "ends the run" in capsys.readouterr().out
