"""Multi-task, transfer and merging through the real command line, on the tiny Llama: `peftkit train` of a
two-task recipe in a subprocess, then (in-process through the same entry point, to spare interpreter starts) a
transfer run with adapter.init_from, `peftkit merge-adapters`, `peftkit evaluate` of the merged folder, and the
`push --dry-run` of the multitask folder, and
the clear refusals of `generate` and `merge` on a multitask run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, torch_threads, write_recipe
from tests.helpers.multitask_fixtures import agnews_small, gen_recipe, multitask_recipe, sst2_data


@pytest.mark.slow  # ~50 s of CPU: three runs, a merge and evaluations
def test_multitask_train_transfer_merge_evaluate(tmp_path, tiny_llama_dir, sst2_small, capsys):
    from peftkit.cli import main

    agnews = agnews_small(tmp_path)
    recipe = multitask_recipe(tiny_llama_dir, sst2_small, agnews, tmp_path / "mt", mixing="temperature")
    recipe["data"]["max_eval_samples"] = 16
    result = run_cli("train", str(write_recipe(tmp_path / "mt.yaml", recipe)), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "task mixing (temperature T=2)" in result.stdout + result.stderr
    assert set(json.loads((tmp_path / "mt" / "metrics.json").read_text())["tasks"]) == {"sst2", "agnews"}

    # transfer: a new sentiment wording trained from the multitask run's adapter
    data = sst2_data(sst2_small) | {"label_names": ["bad", "good"], "prompt_template": "Movie: {text}\nVerdict:",
                                    "max_eval_samples": 16}
    transfer = gen_recipe(tiny_llama_dir, data, tmp_path / "tr")
    transfer["adapter"]["init_from"] = str(tmp_path / "mt")
    with torch_threads(1):
        assert main(["train", str(write_recipe(tmp_path / "tr.yaml", transfer))]) == 0
        assert main(["merge-adapters", str(tmp_path / "mt"), str(tmp_path / "tr"), "--method", "dare_ties",
                     "--density", "0.7", "--out", str(tmp_path / "merged")]) == 0
        report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
        assert set(report["tasks"]) == {"sst2", "agnews", "tr"} and report["merge"]["density"] == 0.7
        assert main(["evaluate", str(tmp_path / "merged")]) == 0
        assert (tmp_path / "merged" / "tasks" / "tr" / "metrics.json").is_file()
        capsys.readouterr()
        # push takes a multitask folder (no label_map.json: each task's labels are in recipe.yaml)
        assert main(["push", str(tmp_path / "mt"), "--repo-id", "me/mt", "--dry-run",
                     "--base-model-id", "me/tiny"]) == 0
        card = (tmp_path / "mt" / "push_staging" / "README.md").read_text()
        assert "| sst2 |" in card and "| agnews |" in card
        capsys.readouterr()
        for command in (["generate", str(tmp_path / "mt"), "a fine film"], ["merge", str(tmp_path / "merged")]):
            assert main(command) == 2
            assert "is a multitask run (sst2, agnews" in capsys.readouterr().err


@pytest.mark.slow  # a few CPU-minutes: SmolLM2-135M three times
def test_real_model_shipped_multitask_recipe_transfer_and_merge(tmp_path):
    """One real small run end to end: the shipped multitask recipe on SmolLM2-135M-Instruct (16 rows per task),
    the shipped SST-2 generative recipe started from its adapter (adapter.init_from), and merge-adapters of the
    two, evaluated on every task."""
    import yaml

    from tests.conftest import REPO
    from tests.helpers.local_data import with_local_copies

    # the recipe's AG News task names the hub dataset: the test reads the local copy of the same data
    raw = with_local_copies(yaml.safe_load((REPO / "recipes/multitask/smollm2_sst2_agnews.yaml").read_text(
        encoding="utf-8")))
    raw["output_dir"] = str(tmp_path / "mt")
    raw["data"]["max_train_samples"] = 16
    for task in raw["tasks"]:
        task["data"].update(max_train_samples=16, max_eval_samples=16)
    result = run_cli("train", str(write_recipe(tmp_path / "mt.yaml", raw)), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tasks = json.loads((tmp_path / "mt" / "metrics.json").read_text())["tasks"]
    assert set(tasks) == {"sst2", "agnews"} and all(0 <= t["accuracy"] <= 1 for t in tasks.values())

    result = run_cli("train", "recipes/sst2/smollm2_lora_gen.yaml", f"output_dir={tmp_path / 'tr'}",
                     f"adapter.init_from={tmp_path / 'mt'}", "data.max_train_samples=16",
                     "data.max_eval_samples=16", "train.report_to=[]", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    result = run_cli("merge-adapters", str(tmp_path / "mt"), str(tmp_path / "tr"), "--method", "ties",
                     "--out", str(tmp_path / "merged"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert {"sst2", "agnews"} <= set(report["tasks"])
