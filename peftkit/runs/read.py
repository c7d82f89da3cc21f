"""The run folder: everything a later command (evaluate, merge, push) needs, side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe, recipe_from_dict, validate
from peftkit.runs.layout import ADAPTER_DIR, LABEL_MAP_FILE, RECIPE_FILE, SUMMARY_FILE


def load_run(run_dir: str | os.PathLike) -> tuple[Path, Recipe]:
    """The run folder and its resolved recipe, checked to hold a trained adapter whose files are whole."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise PeftkitError(f"{run_dir} is not a peftkit run folder (no {RECIPE_FILE}); give the output_dir of a train run")
    if not (run_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        raise PeftkitError(f"{run_dir} has no trained adapter ({ADAPTER_DIR}/adapter_config.json); "
                           "did the train run finish?")
    raw = read_run_recipe(run_dir / RECIPE_FILE)
    recipe = recipe_from_dict(raw, where=str(run_dir / RECIPE_FILE))
    recipe.source = str(run_dir / RECIPE_FILE)
    validate(recipe)
    from peftkit.model.base import check_adapter_folder

    check_adapter_folder(run_dir / ADAPTER_DIR, recipe.model)
    check_run_files(run_dir)
    return run_dir, recipe


def refuse_multitask(run_dir: Path, recipe: Recipe, command: str) -> None:
    """`merge`, `generate` and `serve` take one task's run; a multitask run folder is refused with what works."""
    if recipe.task == "multitask":
        names = ", ".join(t.name for t in recipe.tasks)
        raise PeftkitError(f"{run_dir} is a multitask run ({names}); peftkit {command} does not support multitask "
                           f"runs yet. `peftkit evaluate {run_dir}` scores every task, `peftkit push` uploads the "
                           "adapter; for one task, train it alone (task: generative_classification)")


DAMAGED_RUN_ADVICE = ("; the run folder is damaged: restore the file from a backup, or train the run again "
                      "(`peftkit train RECIPE --resume` continues from its last complete checkpoint)")


def read_run_recipe(path: Path) -> dict[str, Any]:
    """A run folder's recipe.yaml as a mapping, or one line saying it is damaged."""
    from peftkit.recipe import parse_yaml_mapping

    try:
        return parse_yaml_mapping(path, what="run's recipe")
    except PeftkitError as e:
        raise PeftkitError(f"{e} (the run folder's {RECIPE_FILE} is damaged or was edited)") from None


def check_run_files(run_dir: Path, adapter: bool = True) -> None:
    """recipe.yaml, label_map.json and the adapter folder (weights, JSON files, tokenizer) are whole: one line naming
    a damaged file, before anything is loaded or staged."""
    from peftkit.core.integrity import (
        check_folder_files,
        check_tokenizer_files,
        read_json_object,
    )

    read_run_recipe(run_dir / RECIPE_FILE)
    if (run_dir / LABEL_MAP_FILE).is_file():
        label_names_of(run_dir)
    if adapter:
        folder = run_dir / ADAPTER_DIR
        check_folder_files(folder, DAMAGED_RUN_ADVICE)
        read_json_object(folder / "adapter_config.json", DAMAGED_RUN_ADVICE)
        check_tokenizer_files(folder, "the run's adapter folder")


def label_names_of(run_dir: Path) -> list[str]:
    """Class names in id order from label_map.json; a damaged map is one line naming it."""
    from peftkit.core.integrity import read_json_file

    path = run_dir / LABEL_MAP_FILE
    data = read_json_file(path, DAMAGED_RUN_ADVICE)
    mapping = data.get("id2label") if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(str(i) in mapping for i in range(len(mapping))) or len(mapping) < 2:
        raise PeftkitError(f"{path} has no id2label mapping of class ids 0..N-1 to names{DAMAGED_RUN_ADVICE}")
    return [mapping[str(i)] for i in range(len(mapping))]


def finished_run(run_dir: Path) -> bool:
    """A run that got to its end: the adapter saved and the summary written (the last thing `train` writes)."""
    return (Path(run_dir) / SUMMARY_FILE).is_file() and (Path(run_dir) / ADAPTER_DIR / "adapter_config.json").is_file()
