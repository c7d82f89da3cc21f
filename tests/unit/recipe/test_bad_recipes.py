"""Malformed recipes: each one answered by one clear line naming the key or file, exit 2, no traceback.

Every case goes through the real CLI entry point (`peftkit validate`), in-process for speed.
"""

from __future__ import annotations

import pytest
import yaml

from peftkit.cli import main
from tests.conftest import SST2

GOOD = {
    "model": {"name_or_path": "packaged:all-minilm-l6-v2"},
    "data": {"train_file": str(SST2 / "dev.tsv"), "eval_file": str(SST2 / "dev.tsv"), "text_column": "sentence",
             "label_names": ["negative", "positive"]},
}


def patched(section: str, **values) -> dict:
    recipe = yaml.safe_load(yaml.safe_dump(GOOD))
    recipe.setdefault(section, {}).update(values)
    return recipe


# (case id, recipe as a dict or raw YAML text, words the message must contain)
CASES = [
    ("yaml-syntax", "model: {name_or_path: x\ndata: [", "malformed YAML"),
    ("yaml-tabs", "model:\n\tname_or_path: x\n", "malformed YAML"),
    ("not-a-mapping", "- just\n- a list\n", "must be a mapping"),
    ("empty-file", "", "recipe is empty"),
    ("unknown-top-level", {**GOOD, "trian": {}}, "unknown key 'trian'; did you mean 'train'"),
    ("unknown-model-key", patched("model", nam_or_path="x"), "unknown key 'model.nam_or_path'"),
    ("unknown-train-key", patched("train", num_epochs=3), "unknown key 'train.num_epochs'"),
    ("reserved-train-key", patched("train", output_dir="x"), "'train.output_dir' is set by peftkit"),
    ("section-not-mapping", {**GOOD, "adapter": 16}, "'adapter' must be a section"),
    ("rank-wrong-type", patched("adapter", r="sixteen"), "'adapter.r' must be an integer"),
    ("rank-float", patched("adapter", r=8.5), "'adapter.r' must be an integer"),
    ("rank-zero", patched("adapter", r=0), "'adapter.r' must be a positive integer"),
    ("dropout-out-of-range", patched("adapter", lora_dropout=1.5), "'adapter.lora_dropout' must be in [0, 1)"),
    ("bool-as-string", patched("model", trust_remote_code="yes"), "'model.trust_remote_code' must be true or false"),
    ("lr-not-number", patched("train", learning_rate="fast"), "'train.learning_rate' must be a number"),
    ("lr-negative", patched("train", learning_rate=-1e-4), "'train.learning_rate' must be positive"),
    ("batch-zero", patched("train", per_device_train_batch_size=0), "'train.per_device_train_batch_size'"),
    ("4bit-and-8bit", patched("quantization", load_in_4bit=True, load_in_8bit=True), "choose one"),
    ("bad-quant-type", patched("quantization", bnb_4bit_quant_type="int3"),
     "'quantization.bnb_4bit_quant_type' must be one of"),
    ("dora-on-8bit", patched("adapter", use_dora=True) | {"quantization": {"load_in_8bit": True}},
     "'adapter.use_dora'"),
    ("pissa-on-4bit", patched("adapter", init_lora_weights="pissa") | {"quantization": {"load_in_4bit": True}},
     "cannot start from a quantized base"),
    ("unknown-init", patched("adapter", init_lora_weights="xavier"), "'adapter.init_lora_weights'"),
    ("empty-targets", patched("adapter", target_modules=[]), "'adapter.target_modules' is an empty list"),
    ("no-model", {"data": GOOD["data"]}, "'model.name_or_path' is required"),
    ("bad-dtype", patched("model", dtype="float8"), "'model.dtype' must be one of"),
    ("bad-task", {**GOOD, "task": "regression"}, "'task' must be one of"),
    ("no-data", {"model": GOOD["model"]}, "'train_file'"),
    ("both-hub-and-file", patched("data", dataset="glue"), "'data.dataset' and 'data.train_file' are both set"),
    ("missing-train-file", patched("data", train_file="/nonexistent/train.tsv"),
     "data file not found: /nonexistent/train.tsv"),
    ("unsupported-suffix", patched("data", train_file=str(SST2 / "ALPS_LICENSE")), "unsupported file type"),
    ("missing-text-column", patched("data", text_column="review"), "column 'review' (data.text_column) not found"),
    ("missing-label-column", patched("data", label_column="sentiment"),
     "column 'sentiment' (data.label_column) not found"),
    ("one-label", patched("data", label_names=["only"]), "at least two classes"),
    ("duplicate-labels", patched("data", label_names=["a", "a"]), "duplicates"),
    ("headerless-without-columns", patched("data", has_header=False), "give 'data.column_names'"),
    ("max-length-tiny", patched("data", max_length=2), "'data.max_length' must be at least 8"),
    ("missing-model-folder", patched("model", name_or_path="./models/nope"),
     "local folder './models/nope' does not exist"),
    ("unknown-packaged", patched("model", name_or_path="packaged:smollm3"), "packaged"),
    ("bf16-and-fp16", patched("train", bf16=True, fp16=True), "choose one"),
    ("one-evaluation", patched("selection", validation_fraction=0.1, evaluations=1),
     "'selection.evaluations' must be at least 2"),
    ("selection-without-evaluation", patched("selection", validation_fraction=0.1) | {"train": {"eval_strategy": "no"}},
     "remove 'train.eval_strategy: no'"),
]


@pytest.mark.parametrize("case_id,recipe,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_gets_one_clear_error(case_id, recipe, expected, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = without_import_noise(capsys.readouterr().err)
    assert err.startswith("peftkit: error: ")
    assert expected in err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err


def without_import_noise(err: str) -> str:
    """bitsandbytes prints one harmless line at its first import (STACK-NOTES); it is not ours."""
    return "".join(line for line in err.splitlines(keepends=True) if "gemm_4bit_forward" not in line)


def test_labels_outside_the_set_are_rejected_when_asked(tmp_path, capsys):
    rows = "sentence\tlabel\ngood film\t1\nbad film\t0\nodd film\t7\n"
    (tmp_path / "t.tsv").write_text(rows)
    recipe = patched("data", train_file=str(tmp_path / "t.tsv"), eval_file=str(tmp_path / "t.tsv"),
                     invalid_rows="error")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 bad rows" in err and "label '7' not in ['negative', 'positive']" in err


def test_missing_recipe_file(capsys):
    assert main(["validate", "/nonexistent/recipe.yaml"]) == 2
    assert "recipe file not found: /nonexistent/recipe.yaml" in capsys.readouterr().err


def test_good_recipe_validates(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path)]) == 0
    assert "recipe OK" in capsys.readouterr().out
