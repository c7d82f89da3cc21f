"""Task multitask: recipe checks of the tasks list, the mixing rules, and a tiny two-task run end to end."""

from __future__ import annotations

import json

import pytest

from peftkit.data.mixing import mix, task_counts
from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from tests.conftest import write_recipe
from tests.helpers.multitask_fixtures import agnews_small, multitask_recipe, train_in_process


@pytest.fixture(scope="module")
def files(tmp_path_factory, sst2_small):
    return sst2_small, agnews_small(tmp_path_factory.mktemp("agnews"))


def load(tmp_path, recipe):
    return load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_tasks_inherit_the_top_level_data_and_keep_their_own(tmp_path, tiny_llama_dir, files):
    recipe = multitask_recipe(tiny_llama_dir, *files, tmp_path / "run")
    recipe["data"]["max_eval_samples"] = 7
    loaded = load(tmp_path, recipe)
    assert [t.name for t in loaded.tasks] == ["sst2", "agnews"]
    assert [t.data.max_eval_samples for t in loaded.tasks] == [7, 7]
    assert [t.data.max_length for t in loaded.tasks] == [32, 48]
    assert loaded.tasks[1].data.has_header is False


@pytest.mark.parametrize("change, message", [
    (lambda r: r["tasks"].pop(), "two or more tasks"),
    (lambda r: r["tasks"][1].update(name="sst2"), "names must differ"),
    (lambda r: r["tasks"][1].update(name="a b"), r"tasks\[1\].name"),
    (lambda r: r["tasks"][0]["data"].update(label_word={}), r"unknown key 'tasks\[0\].data.label_word'"),
    (lambda r: r["tasks"][0].update(prompt="x"), r"unknown key 'tasks\[0\].prompt'"),
    (lambda r: r["tasks"][1]["data"].update(max_length=64), r"tasks\[1\].data.max_length' 64 is longer"),
    (lambda r: r["tasks"][1]["data"].update(format="text"), r"tasks\[1\] \(agnews\): task generative_classif"),
    (lambda r: r["tasks"][0]["data"].update(use_chat_template=True), "use_chat_template' differs"),
    (lambda r: r.update(multitask={"temperature": 0}), "multitask.temperature"),
    (lambda r: r.update(multitask={"mixing": "uniform"}), "multitask.mixing"),
    (lambda r: r.update(selection={"validation_fraction": 0.1}), "not supported by task multitask"),
    (lambda r: r.update(task="generative_classification"), "set 'task: multitask' or remove 'tasks'"),
])
def test_bad_multitask_recipes_are_refused_naming_the_key(tmp_path, tiny_llama_dir, files, change, message):
    recipe = multitask_recipe(tiny_llama_dir, *files, tmp_path / "run")
    change(recipe)
    with pytest.raises(PeftkitError, match=message):
        load(tmp_path, recipe)


def test_proportional_mixing_keeps_every_row_once():
    assert task_counts({"big": 900, "small": 100}, "proportional") == {"big": 900, "small": 100}
    mixed = mix({"a": list(range(5)), "b": ["x", "y"]}, {"a": 5, "b": 2}, seed=1)
    assert sorted(map(str, mixed)) == sorted(map(str, [0, 1, 2, 3, 4, "x", "y"]))


def test_temperature_mixing_follows_n_to_the_one_over_t_and_keeps_the_total():
    # T=2: shares sqrt(900) : sqrt(100) = 30 : 10 of 1000 rows
    assert task_counts({"big": 900, "small": 100}, "temperature", 2.0) == {"big": 750, "small": 250}
    assert task_counts({"big": 900, "small": 100}, "temperature", 1.0) == {"big": 900, "small": 100}
    assert task_counts({"big": 900, "small": 100}, "temperature", 1e9) == {"big": 500, "small": 500}
    counts = task_counts({"a": 7, "b": 5, "c": 1}, "temperature", 3.0)
    assert sum(counts.values()) == 13


def test_a_task_drawn_more_often_than_it_has_rows_repeats_all_of_them_first():
    mixed = mix({"a": [1, 2, 3], "b": [4]}, {"a": 2, "b": 3}, seed=0)
    assert sorted(mixed) == [1, 2, 4, 4, 4] or sorted(mixed) in ([1, 3, 4, 4, 4], [2, 3, 4, 4, 4])
    assert mix({"a": [1, 2, 3], "b": [4]}, {"a": 2, "b": 3}, seed=0) == mixed  # seeded


def test_a_two_task_run_trains_one_adapter_and_evaluates_each_task(tmp_path, tiny_llama_dir, files, one_torch_thread):
    from peftkit.run import evaluate_saved_run

    recipe = multitask_recipe(tiny_llama_dir, *files, tmp_path / "run", mixing="temperature", temperature=2.0)
    recipe["tasks"][0]["data"]["label_names"] = None  # found in the data and written into the run's recipe
    assert train_in_process(recipe, tmp_path / "r.yaml") == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"sst2", "agnews"}
    assert metrics["tasks"]["agnews"]["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert metrics["tasks"]["sst2"]["num_examples"] == 48 and metrics["tasks"]["agnews"]["num_examples"] == 32
    assert metrics["accuracy"] == pytest.approx((metrics["tasks"]["sst2"]["accuracy"]
                                                 + metrics["tasks"]["agnews"]["accuracy"]) / 2)
    for name in ("sst2", "agnews"):
        assert (run / "tasks" / name / "confusion_matrix.png").is_file()
        page = (run / "tasks" / name / "report.html").read_text(encoding="utf-8")  # each task its own report
        assert f"{metrics['tasks'][name]['num_examples']} examples" in page and "rows read" in page
    report = json.loads((run / "data_report.json").read_text())
    assert report["mixing"] == task_counts({"sst2": 96, "agnews": 64}, "temperature", 2.0)
    saved = load_recipe(run / "recipe.yaml")
    assert saved.tasks[0].data.label_names in (["0", "1"], [0, 1])
    again = evaluate_saved_run(run)
    assert again["tasks"]["agnews"]["accuracy"] == metrics["tasks"]["agnews"]["accuracy"]
    with pytest.raises(PeftkitError, match="multitask run .* --data FILE"):
        evaluate_saved_run(run, str(files[0]["dev"]))

