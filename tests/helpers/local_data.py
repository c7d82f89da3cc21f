"""The development clone's local copies of the hub datasets that recipes name (../shared/data, or
PEFTKIT_SHARED_DATA), so that tests read them offline. A recipe is never edited to point at them: a test loads the
recipe with `load_with_local_copies`, which swaps each hub data section for the local files of the same dataset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from peftkit.recipe import Recipe
from peftkit.recipe.checks import validate
from peftkit.recipe.loading import apply_override, read_yaml, recipe_from_dict
from tests.conftest import SHARED_DATA

AGNEWS = SHARED_DATA / "agnews"
# hub id -> data keys that read the same dataset from local files. The AG News files are headerless
# text<TAB>label-name rows: the official test set, and a 10k sample of the official train set.
LOCAL_COPIES: dict[str, dict[str, Any]] = {
    "fancyzhx/ag_news": {"train_file": str(AGNEWS / "train_subset10k.tsv"), "eval_file": str(AGNEWS / "test.tsv"),
                         "has_header": False, "column_names": ["text", "label"]},
    "SetFit/ag_news": {"train_file": str(AGNEWS / "train_subset10k.tsv"), "eval_file": str(AGNEWS / "test.tsv"),
                       "has_header": False, "column_names": ["text", "label_text"]},
}
HUB_KEYS = ("dataset", "dataset_config", "train_split", "eval_split")


def data_sections(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """A recipe's data sections: the top-level one and each multitask task's."""
    return [raw.get("data") or {}] + [task.get("data") or {} for task in raw.get("tasks") or []]


def hub_datasets(raw: dict[str, Any]) -> list[str]:
    return [data["dataset"] for data in data_sections(raw) if data.get("dataset")]


def has_local_copies(raw: dict[str, Any]) -> bool:
    """Every hub dataset the recipe names has a local copy on this machine."""
    return all(name in LOCAL_COPIES and Path(LOCAL_COPIES[name]["train_file"]).is_file()
               for name in hub_datasets(raw))


def with_local_copies(raw: dict[str, Any]) -> dict[str, Any]:
    """The recipe dict with each data section that names a hub dataset reading its local copy instead."""
    raw = copy.deepcopy(raw)
    for data in data_sections(raw):
        name = data.get("dataset")
        if name in LOCAL_COPIES:
            for key in HUB_KEYS:
                data.pop(key, None)
            data.update(LOCAL_COPIES[name])
    return raw


def load_with_local_copies(path: Path, overrides: list[str] = ()) -> Recipe:
    """`load_recipe`, with hub data read from its local copies."""
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    recipe = recipe_from_dict(with_local_copies(raw), where=str(path))
    recipe.source = str(path)
    validate(recipe)
    return recipe
