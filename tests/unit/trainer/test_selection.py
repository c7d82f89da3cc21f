"""Selection on a validation split carved from train: the split, the Trainer settings, early stopping, the best
checkpoint used for the one evaluation on the eval file, and what metrics.json says."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from peftkit.data.classification import SplitReport
from peftkit.errors import PeftkitError
from peftkit.recipe import recipe_from_dict, validate
from peftkit.recipe.sections import SelectionSection
from peftkit.trainer.selection import carve_validation
from tests.conftest import tiny_recipe, write_recipe
from tests.helpers.sft_fixtures import tiny_causal_dir  # noqa: F401  (fixture)


def _sel(fraction: float = 0.0, **fields) -> SelectionSection:
    return SelectionSection(validation_fraction=fraction, **fields)


def _split(n_neg: int, n_pos: int):
    labels = [0] * n_neg + [1] * n_pos
    return {"train": {"text": [f"row {i}" for i in range(len(labels))], "label": labels}}, \
        {"train": SplitReport(source="train.tsv", rows_read=len(labels), rows_used=len(labels))}


def test_validation_split_is_stratified_seeded_and_disjoint():
    splits, reports = _split(90, 10)
    carve_validation(splits, reports, _sel(0.2), 42, SplitReport)
    val, train = splits["validation"], splits["train"]
    assert Counter(val["label"]) == {0: 18, 1: 2}  # every class in proportion, the rare one too
    assert set(val["text"]).isdisjoint(train["text"]) and len(val["text"]) + len(train["text"]) == 100
    assert reports["validation"].rows_used == 20 and reports["train"].rows_used == 80
    assert "stratified" in reports["validation"].source and "seed 42" in reports["validation"].source
    again, again_reports = _split(90, 10)
    carve_validation(again, again_reports, _sel(0.2), 42, SplitReport)
    assert again["validation"] == val
    other, other_reports = _split(90, 10)
    carve_validation(other, other_reports, _sel(0.2), 7, SplitReport)
    assert other["validation"]["text"] != val["text"]


def test_a_rare_class_still_gets_a_validation_row_and_keeps_a_training_row():
    splits, reports = _split(98, 2)
    carve_validation(splits, reports, _sel(0.1), 0, SplitReport)
    assert Counter(splits["validation"]["label"])[1] == 1 and Counter(splits["train"]["label"])[1] == 1


def _unused(n_neg: int, n_pos: int):
    labels = [0] * n_neg + [1] * n_pos
    return {"text": [f"unused {i}" for i in range(len(labels))], "label": labels}


def test_validation_rows_from_unused_rows_leave_the_training_sample_whole():
    splits, reports = _split(40, 40)
    train_before = {k: list(v) for k, v in splits["train"].items()}
    carve_validation(splits, reports, _sel(validation_rows=50, validation_from="unused_rows"), 3, SplitReport,
                     _unused(300, 100))
    val = splits["validation"]
    assert splits["train"] == train_before and reports["train"].rows_used == 80  # training keeps every row
    assert len(val["text"]) == 50 and all(t.startswith("unused") for t in val["text"])
    assert Counter(val["label"]) == {0: 38, 1: 12} or Counter(val["label"]) == {0: 37, 1: 13}  # 3:1, stratified
    assert "outside the 80-row training sample" in reports["validation"].source


def test_validation_rows_from_training_rows_is_a_count_not_a_share():
    splits, reports = _split(60, 40)
    carve_validation(splits, reports, _sel(validation_rows=30), 0, SplitReport)
    assert Counter(splits["validation"]["label"]) == {0: 18, 1: 12}
    assert reports["train"].rows_used == 70 and "30 of the training rows" in reports["validation"].source


def test_unused_rows_that_are_missing_or_too_few_are_clear_errors():
    with pytest.raises(PeftkitError, match="no rows outside the 80-row training sample"):
        splits, reports = _split(40, 40)
        carve_validation(splits, reports, _sel(validation_rows=10, validation_from="unused_rows"), 0, SplitReport,
                         None)
    with pytest.raises(PeftkitError, match="asks for 500 validation rows but only 40"):
        splits, reports = _split(40, 40)
        carve_validation(splits, reports, _sel(validation_rows=500, validation_from="unused_rows"), 0,
                         SplitReport, _unused(20, 20))


def _mixed_lengths(n: int, prefix: str):
    """Every third row a long sentence, the rest two-word phrases (like SST-2's training file)."""
    texts = [f"{prefix} {i} " + ("a long and whole sentence here" if i % 3 == 0 else "") for i in range(n)]
    return {"text": [t.strip() for t in texts], "label": [i % 2 for i in range(n)]}


def test_validation_min_words_draws_only_long_rows_and_training_keeps_the_short_ones():
    splits = {"train": _mixed_lengths(90, "train")}
    reports = {"train": SplitReport(source="train.tsv", rows_read=90, rows_used=90)}
    carve_validation(splits, reports, _sel(validation_rows=12, validation_min_words=5), 0, SplitReport)
    val, train = splits["validation"], splits["train"]
    assert len(val["text"]) == 12 and all(len(t.split()) >= 5 for t in val["text"])
    assert len(train["text"]) == 78 and sum(len(t.split()) >= 5 for t in train["text"]) == 18
    assert set(val["text"]).isdisjoint(train["text"]) and Counter(val["label"]) == {0: 6, 1: 6}
    assert "rows of at least 5 words" in reports["validation"].source
    splits, reports = _split(40, 40)
    carve_validation(splits, reports, _sel(validation_rows=20, validation_from="unused_rows",
                                           validation_min_words=5), 0, SplitReport, _mixed_lengths(90, "unused"))
    assert len(splits["validation"]["text"]) == 20 and len(splits["train"]["text"]) == 80
    assert all(len(t.split()) >= 5 and t.startswith("unused") for t in splits["validation"]["text"])


def test_too_few_long_rows_or_a_class_left_without_training_rows_are_clear_errors():
    with pytest.raises(PeftkitError, match="only 30 rows .* have that many words, 40 wanted"):
        splits = {"train": _mixed_lengths(90, "train")}
        reports = {"train": SplitReport(source="train.tsv", rows_read=90, rows_used=90)}
        carve_validation(splits, reports, _sel(validation_rows=40, validation_min_words=5), 0, SplitReport)
    long_negatives = {"text": ["one two three four five"] * 4 + ["short"] * 6, "label": [0] * 4 + [1] * 6}
    with pytest.raises(PeftkitError, match=r"every training row of class id\(s\) \[0\]"):
        splits = {"train": long_negatives}
        reports = {"train": SplitReport(source="train.tsv", rows_read=10, rows_used=10)}
        carve_validation(splits, reports, _sel(validation_rows=4, validation_min_words=5), 0, SplitReport)


@pytest.mark.parametrize("selection, message", [
    ({"validation_rows": 100, "validation_fraction": 0.1}, "not both"),
    ({"validation_rows": 1}, "at least 2"),
    ({"validation_from": "unused_rows"}, "needs a validation size"),
    ({"validation_rows": 100, "validation_from": "unused_rows"}, "set 'data.max_train_samples'"),
    ({"validation_min_words": 8}, "needs a validation size"),
    ({"validation_rows": 100, "validation_min_words": 0}, "positive number of words"),
])
def test_validation_size_settings_are_checked_before_any_work(tmp_path, selection, message):
    with pytest.raises(PeftkitError, match=message):
        _recipe(tmp_path, selection=selection, train={"save_strategy": "steps"})


def test_unused_rows_end_to_end_through_read_data(tmp_path):
    from peftkit.tasks import classification

    rows = "".join(f"review {i}\t{i % 2}\n" for i in range(20))
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nfine\t1\nbad\t0\n", encoding="utf-8")
    raw = tiny_recipe(Path("model"), {"train": tmp_path / "t.tsv", "dev": tmp_path / "d.tsv"}, tmp_path / "run",
                      selection={"validation_rows": 4, "validation_from": "unused_rows"},
                      train={"save_strategy": "steps"})
    raw["data"]["max_train_samples"] = 6
    recipe = recipe_from_dict(raw)
    validate(recipe)
    data = classification.read_data(recipe)
    train, val = data.splits["train"]["text"], data.splits["validation"]["text"]
    assert len(train) == 6 and len(val) == 4 and set(train).isdisjoint(val)
    assert recipe.train["load_best_model_at_end"] is True


def _recipe(tmp_path, **sections):
    raw = tiny_recipe(Path("model"), {"train": tmp_path / "t.tsv", "dev": tmp_path / "d.tsv"}, tmp_path / "run",
                      **sections)
    recipe = recipe_from_dict(raw)
    validate(recipe)
    return recipe


def test_selection_fills_evaluation_checkpointing_and_the_metric(tmp_path):
    recipe = _recipe(tmp_path, selection={"validation_fraction": 0.1, "evaluations": 4},
                     train={"save_strategy": "steps"})
    t = recipe.train
    assert (t["eval_strategy"], t["eval_steps"], t["save_steps"]) == ("steps", 0.25, 0.25)
    assert t["load_best_model_at_end"] is True and t["metric_for_best_model"] == "macro_f1"
    assert t["greater_is_better"] is True
    off = _recipe(tmp_path)
    assert off.train["eval_strategy"] == "no" and "load_best_model_at_end" not in off.train


def test_train_keys_set_in_the_recipe_win(tmp_path):
    recipe = _recipe(tmp_path, selection={"validation_fraction": 0.1, "metric": "loss"},
                     train={"save_strategy": "epoch", "eval_strategy": "epoch"})
    assert recipe.train["save_strategy"] == "epoch" and "eval_steps" not in {k for k, v in recipe.train.items()
                                                                            if v == 0.1}
    assert recipe.train["metric_for_best_model"] == "loss" and recipe.train["greater_is_better"] is False


@pytest.mark.parametrize("sections, message", [
    ({"train": {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps"}},
     "would choose a checkpoint on the eval file"),
    ({"selection": {"validation_fraction": 0.1}}, "needs checkpoints"),  # tiny_recipe has save_strategy: no
    ({"selection": {"validation_fraction": 0.9}, "train": {"save_strategy": "steps"}}, "between 0"),
    ({"selection": {"metric": "f1"}}, "selection.metric"),
    ({"imbalance": {"strategy": "class_weights"}, "task": "generative_classification"}, "classification head"),
])
def test_selection_mistakes_are_named(tmp_path, sections, message):
    with pytest.raises(PeftkitError, match=message):
        _recipe(tmp_path, **sections)


# ---------------------------------------------------------------------------------------------
# Real (tiny) runs
# ---------------------------------------------------------------------------------------------


def _train(tmp_path, tiny_llama_dir, sst2_small, **sections):
    from peftkit.recipe import load_recipe
    from peftkit.run import run

    raw = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run", **sections)
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", raw))
    metrics = run(recipe)
    return metrics, tmp_path / "run"


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_early_stopping_keeps_and_reports_the_best_checkpoint(tmp_path, tiny_llama_dir, sst2_small, one_torch_thread,
                                                               capsys):
    # a learning rate so small that the validation metric cannot improve: the first evaluation stays the best,
    # patience 1 stops the run at the second, and the saved adapter must be the first checkpoint's, not the last's
    metrics, run_dir = _train(tmp_path, tiny_llama_dir, sst2_small,
                              selection={"validation_fraction": 0.25, "evaluations": 4, "early_stopping_patience": 1},
                              train={"max_steps": 8, "save_strategy": "steps", "learning_rate": 1e-12,
                                     "per_device_train_batch_size": 8})
    selection = metrics["selection"]
    assert selection["split"] == "validation" and selection["rows"] == 24  # 25% of 96, stratified
    assert selection["metric"] == "macro_f1" and selection["best_checkpoint"] == "checkpoint-2"
    assert selection["early_stopped"] is True and [e["step"] for e in selection["evaluations"]] == [2, 4]
    assert metrics["num_examples"] == 48 and selection["eval_file"] == str(sst2_small["dev"])
    saved = _adapter_tensors(run_dir / "adapter")
    best, last = (_adapter_tensors(run_dir / "checkpoints" / f"checkpoint-{s}") for s in (2, 4))
    assert saved.keys() == best.keys()
    assert all((saved[k] == best[k]).all() for k in saved)
    assert any((best[k] != last[k]).any() for k in best), \
        "the two checkpoints must differ for this test to mean anything"
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["selection"]["best_checkpoint"] == "checkpoint-2"
    out = capsys.readouterr().out
    assert "model selected on the validation split (24 rows carved from train)" in out
    assert "train: 72 rows used" in out and "validation: 24 rows used" in out
    calibration = json.loads((run_dir / "calibration.json").read_text())  # temperature scaling, fitted on validation
    assert calibration["fitted_on"] == "validation split (24 rows)" and 0.05 <= calibration["temperature"] <= 20
    assert calibration["eval_nll_after"] <= calibration["eval_nll_before"] + 0.05
    assert on_disk["calibration"]["temperature"] == calibration["temperature"]


def test_evaluation_during_training_reads_the_validation_split_not_the_eval_file(tmp_path, tiny_llama_dir,
                                                                                 sst2_small, one_torch_thread):
    from peftkit.model.base import load_tokenizer, local_path
    from peftkit.recipe import load_recipe
    from peftkit.tasks import classification

    raw = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run", selection={"validation_fraction": 0.25},
                      train={"save_strategy": "steps"})
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", raw))
    tokenizer = load_tokenizer(recipe.model, local_path(recipe.model))
    data = classification.prepare_data(recipe, tokenizer, classification.read_data(recipe))
    args = classification.training_arguments(recipe, tmp_path / "run")
    model = classification.load_model(recipe, tokenizer, data, local_path(recipe.model))
    trainer = classification.build_trainer(recipe, args, model, tokenizer, data)
    assert len(trainer.eval_dataset) == 24 and len(trainer.train_dataset) == 72
    assert trainer.compute_metrics is not None
    train_rows = {tuple(ids) for ids in trainer.train_dataset["input_ids"]}
    assert not train_rows & {tuple(ids) for ids in trainer.eval_dataset["input_ids"]}


def test_generative_classification_selects_by_label_scoring_on_the_validation_split(tmp_path, tiny_causal_dir,
                                                                                    one_torch_thread):
    from peftkit.recipe import load_recipe
    from peftkit.run import run
    from tests.conftest import SST2

    raw = {"task": "generative_classification", "output_dir": str(tmp_path / "run"),
           "model": {"name_or_path": str(tiny_causal_dir)}, "adapter": {"r": 4, "lora_alpha": 8},
           "data": {"train_file": str(SST2 / "dev.tsv"), "eval_file": str(SST2 / "dev.tsv"), "text_column": "sentence",
                    "label_names": ["negative", "positive"], "max_length": 48, "max_train_samples": 40,
                    "max_eval_samples": 8},
           "selection": {"validation_fraction": 0.25, "evaluations": 2},
           "train": {"max_steps": 4, "per_device_train_batch_size": 8, "report_to": [], "disable_tqdm": True,
                     "logging_steps": 1}}
    metrics = run(load_recipe(write_recipe(tmp_path / "recipe.yaml", raw)))
    selection = metrics["selection"]
    assert selection["split"] == "validation" and selection["rows"] == 10 and selection["metric"] == "macro_f1"
    assert [e["step"] for e in selection["evaluations"]] == [2, 4]
    assert selection["best_checkpoint"] in ("checkpoint-2", "checkpoint-4")
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    scored = [e for e in state["log_history"] if "eval_macro_f1" in e]
    assert len(scored) == 2 and all(0 <= e["eval_accuracy"] <= 1 for e in scored)
    assert all(abs(e["eval_accuracy"] * 10 - round(e["eval_accuracy"] * 10)) < 1e-9 for e in scored)  # of 10 rows
    assert metrics["num_examples"] == 8  # the eval file, once
    calibration = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibration"]
    assert calibration["fitted_on"] == "validation split (10 rows)" and "eval_ece_after" in calibration
    from peftkit.run import evaluate_saved_run

    again = evaluate_saved_run(tmp_path / "run")["calibration"]  # the saved temperature, measured again
    assert again["temperature"] == calibration["temperature"] and again["rechecked_on"] == str(SST2 / "dev.tsv")


def test_validate_reports_the_token_count_of_each_label_word():
    from transformers import AutoTokenizer

    from peftkit.tasks.causal import label_word_tokens
    from tests.helpers.sft_fixtures import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    line = label_word_tokens(tokenizer, ["World", "Sci/Tech"], [" World", " Sci/Tech"])
    assert line.startswith("label word tokens: World ' World' 1, Sci/Tech ' Sci/Tech' ")
    assert "lengths differ" in line
    assert "differ" not in label_word_tokens(tokenizer, ["a", "b"], [" World", " Sports"])
