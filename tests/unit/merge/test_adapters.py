"""adapter.init_from (transfer) and peftkit merge-adapters, on two tiny generative classification runs."""

from __future__ import annotations

import json

import pytest

from peftkit.errors import PeftkitError
from tests.conftest import torch_threads, write_recipe
from tests.helpers.multitask_fixtures import agnews_data, agnews_small, gen_recipe, sst2_data, train_in_process


@pytest.fixture(scope="module")
def files(tmp_path_factory, sst2_small):
    return sst2_small, agnews_small(tmp_path_factory.mktemp("agnews"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_llama_dir, files):
    tmp = tmp_path_factory.mktemp("two-runs")
    sst2, agnews = files
    runs = {}
    for name, data in (("sst2", sst2_data(sst2)), ("agnews", agnews_data(agnews))):
        assert train_in_process(gen_recipe(tiny_llama_dir, data, tmp / name), tmp / f"{name}.yaml") == 0
        runs[name] = tmp / name
    return runs


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_init_from_starts_from_the_trained_adapter(tmp_path, tiny_llama_dir, files, two_runs, one_torch_thread):
    import torch
    from transformers import AutoModelForCausalLM

    from peftkit.model.adapter import attach_adapter
    from peftkit.recipe import load_recipe

    recipe = gen_recipe(tiny_llama_dir, sst2_data(files[0]), tmp_path / "run")
    recipe["adapter"]["init_from"] = str(two_runs["sst2"])
    loaded = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), loaded.adapter, "CAUSAL_LM")
    saved = adapter_tensors(two_runs["sst2"])
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    key = next(k for k in saved if "lora_B" in k)  # lora_B starts at zero in a fresh adapter: trained, it is not
    match = next(v for k, v in state.items() if k.replace(".default", "") == key)
    assert saved[key].abs().sum() > 0 and torch.equal(match, saved[key])
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    # a whole run trained from it: tests/e2e/test_multitask_cli.py (slow)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["model"].update(name_or_path="packaged:all-minilm-l6-v2"), "was trained on model.name_or_path"),
    (lambda r: r["adapter"].update(r=8), r"'adapter.r' is 8 but the init_from run's adapter has 4"),
    (lambda r: r["adapter"].update(init_from="/nonexistent/run"), "'adapter.init_from' /nonexistent/run: .* not a "
                                                                   "peftkit run folder"),
    (lambda r: r.update(task="classification", data={**r["data"], "prompt_template": None}),
     "generative_classification run .CAUSAL_LM adapter.; this recipe's task: classification"),
])
def test_init_from_refuses_what_does_not_fit_before_loading(tmp_path, tiny_llama_dir, files, two_runs, change,
                                                           message):
    from peftkit.model.transfer import check_init_from
    from peftkit.recipe import load_recipe

    recipe = gen_recipe(tiny_llama_dir, sst2_data(files[0]), tmp_path / "run")
    recipe["adapter"]["init_from"] = str(two_runs["sst2"])
    change(recipe)
    if recipe["task"] == "classification":
        recipe["data"] = {k: v for k, v in recipe["data"].items() if k != "prompt_template"}
    with pytest.raises(PeftkitError, match=message):
        check_init_from(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))


SLOW = pytest.mark.slow  # each method is a model load, a merge and two evaluations: linear runs by default


@pytest.mark.parametrize("method", ["linear", pytest.param("ties", marks=SLOW), pytest.param("cat", marks=SLOW),
                                    pytest.param("dare_linear", marks=SLOW), pytest.param("dare_ties", marks=SLOW)])
def test_merge_adapters_each_method_writes_an_evaluable_folder_and_a_report(tmp_path, two_runs, method):
    from peftkit.merge.adapters import merge_adapters
    from peftkit.run import evaluate_saved_run

    out = tmp_path / "merged"
    with torch_threads(1):
        report = merge_adapters([str(two_runs["sst2"]), str(two_runs["agnews"])], str(out), method)
    assert set(report["tasks"]) == {"sst2", "agnews"}
    for name in ("sst2", "agnews"):
        row = report["tasks"][name]
        source = json.loads((two_runs[name] / "metrics.json").read_text())
        assert row["source_accuracy"] == source["accuracy"]
        assert row["accuracy_change"] == pytest.approx(row["merged_accuracy"] - source["accuracy"])
    assert json.loads((out / "merge_report.json").read_text()) == json.loads(json.dumps(report))
    assert "| sst2 | 48 |" in (out / "merge_report.md").read_text()
    merged, sst2 = adapter_tensors(out), adapter_tensors(two_runs["sst2"])
    assert set(merged) == set(sst2)
    if method == "cat":  # ranks add up: 4 + 4
        assert all(8 in merged[k].shape and 4 in sst2[k].shape for k in merged)
    else:
        assert any(not (merged[k] == sst2[k]).all() for k in merged)
    if method == "linear":  # the saved folder is a multitask run: evaluate scores it on every task again
        with torch_threads(1):
            again = evaluate_saved_run(out)
        assert again["tasks"]["agnews"]["accuracy"] == report["tasks"]["agnews"]["merged_accuracy"]


def test_merge_adapters_refusals(tmp_path, tiny_llama_dir, files, two_runs, tiny_run):
    from peftkit.merge.adapters import merge_adapters

    sst2, agnews = str(two_runs["sst2"]), str(two_runs["agnews"])
    with pytest.raises(PeftkitError, match="task: classification run: merge-adapters merges generative"):
        merge_adapters([sst2, str(tiny_run[1])], str(tmp_path / "a"), "ties")
    with pytest.raises(PeftkitError, match="--weights gives 1 numbers for 2 run folders"):
        merge_adapters([sst2, agnews], str(tmp_path / "b"), "ties", weights=[1.0])
    with pytest.raises(PeftkitError, match="--density is for ties"):
        merge_adapters([sst2, agnews], str(tmp_path / "c"), "linear", density=0.3)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(PeftkitError, match="exists and is not empty"):
        merge_adapters([sst2, agnews], str(tmp_path / "d"), "cat")
