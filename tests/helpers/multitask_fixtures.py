"""Tiny runs for the multitask, init_from and merge-adapters tests: two generative classification tasks (real
SST-2 and AG News rows) on the tiny random Llama, trained for a few steps in-process."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SHARED_DATA, tiny_recipe, torch_threads, write_recipe

AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def agnews_small(folder: Path) -> dict[str, Path]:
    """The first 64 train and 32 test rows of the real AG News files (no header: text<TAB>label-name)."""
    out = {}
    for name, source, rows in (("train", "train_subset10k.tsv", 64), ("dev", "test.tsv", 32)):
        lines = (SHARED_DATA / "agnews" / source).read_text(encoding="utf-8").splitlines()[:rows]
        out[name] = folder / f"agnews_{name}.tsv"
        out[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def agnews_data(files: dict[str, Path]) -> dict:
    return {"train_file": str(files["train"]), "eval_file": str(files["dev"]), "has_header": False,
            "column_names": ["text", "label"], "text_column": "text", "label_column": "label",
            "label_names": AGNEWS_LABELS, "prompt_template": "Article: {text}\nTopic:", "max_length": 48}


def sst2_data(files: dict[str, Path]) -> dict:
    return {"train_file": str(files["train"]), "eval_file": str(files["dev"]), "text_column": "sentence",
            "label_names": ["negative", "positive"], "prompt_template": "Review: {text}\nSentiment:",
            "max_length": 32}


def gen_recipe(model_dir: Path, data: dict, out: Path, steps: int = 2) -> dict:
    """A one-task generative_classification recipe for the tiny model."""
    recipe = tiny_recipe(model_dir, {"train": "x", "dev": "x"}, out, task="generative_classification")
    recipe["data"] = data
    recipe["train"].update(max_steps=steps)
    return recipe


def multitask_recipe(model_dir: Path, sst2: dict[str, Path], agnews: dict[str, Path], out: Path, **multitask) -> dict:
    recipe = tiny_recipe(model_dir, {"train": "x", "dev": "x"}, out, task="multitask")
    recipe["data"] = {"max_length": 48}
    recipe["tasks"] = [{"name": "sst2", "data": sst2_data(sst2)}, {"name": "agnews", "data": agnews_data(agnews)}]
    if multitask:
        recipe["multitask"] = multitask
    return recipe


def train_in_process(recipe: dict, path: Path) -> int:
    from peftkit.cli import main

    write_recipe(path, recipe)
    with torch_threads(1):
        return main(["train", str(path)])
