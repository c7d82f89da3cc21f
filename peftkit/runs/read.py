"""The one reader of a finished run folder: ``load_run`` (the recipe validated, the adapter checked, for the
commands that load it) and ``load_run_record`` (its files as written, for the model card and `push`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.integrity import PICKLE_SUFFIXES
from peftkit.errors import PeftkitError
from peftkit.recipe import ModelSection, Recipe, recipe_from_dict, validate
from peftkit.recipe.task_traits import DEFAULT_TASK, traits_of
from peftkit.runs.layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_FILE,
    LABEL_MAP_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
)


def load_run(run_dir: str | os.PathLike) -> tuple[Path, Recipe]:
    """The run folder and its resolved recipe, checked to hold a trained adapter whose files are whole."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise PeftkitError(f"{run_dir} is not a peftkit run folder (no {RECIPE_FILE}); give the output_dir of a train "
                           "run")
    if not (run_dir / ADAPTER_DIR / ADAPTER_CONFIG_FILE).is_file():
        raise PeftkitError(f"{run_dir} has no trained adapter ({ADAPTER_DIR}/{ADAPTER_CONFIG_FILE}); "
                           "did the train run finish?")
    raw = read_run_recipe(run_dir / RECIPE_FILE)
    recipe = recipe_from_dict(raw, where=str(run_dir / RECIPE_FILE))
    recipe.source = str(run_dir / RECIPE_FILE)
    validate(recipe)
    check_adapter_folder(run_dir / ADAPTER_DIR, recipe.model)
    check_run_files(run_dir)
    return run_dir, recipe


def refuse_multitask(run_dir: Path, recipe: Recipe, command: str) -> None:
    """`merge`, `generate` and `serve` take one task's run; a multitask run folder is refused with what works."""
    if traits_of(recipe.task).subtasks:
        names = ", ".join(t.name for t in recipe.tasks)
        raise PeftkitError(f"{run_dir} is a multitask run ({names}); peftkit {command} does not support multitask "
                           f"runs yet. `peftkit evaluate {run_dir}` scores every task, `peftkit push` uploads the "
                           "adapter; for one task, train it alone (task: generative_classification)")


DAMAGED_RUN_ADVICE = ("; the run folder is damaged: restore the file from a backup, or train the run again "
                      "(`peftkit train RECIPE --resume` continues from its last complete checkpoint)")


def check_adapter_folder(adapter_dir: Path, model: ModelSection) -> None:
    """A trained adapter must be safetensors; pickled adapter weights load only with model.allow_pickle: true."""
    names = {p.name for p in adapter_dir.iterdir()} if adapter_dir.is_dir() else set()
    if ADAPTER_WEIGHTS_FILE in names:
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not model.allow_pickle:
        raise PeftkitError(f"{adapter_dir} has only pickle adapter weights ({', '.join(pickles[:3])}); pickles can "
                           "run code when loaded. Convert them to adapter_model.safetensors, or set "
                           "model.allow_pickle: true in the run's recipe.yaml if you trust the files")
    if not pickles:
        raise PeftkitError(f"{adapter_dir} has no adapter weights (adapter_model.safetensors); did the train run "
                           "finish?")


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
        read_json_object(folder / ADAPTER_CONFIG_FILE, DAMAGED_RUN_ADVICE)
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
    return (Path(run_dir) / SUMMARY_FILE).is_file() and (Path(run_dir) / ADAPTER_DIR / ADAPTER_CONFIG_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# The run as files (no recipe validation, nothing loaded): what the model card and `push` read
# ---------------------------------------------------------------------------------------------

RECORD_FILES = (RECIPE_FILE, METRICS_FILE, SUMMARY_FILE)
"""What every finished run has; tasks with labels add LABEL_MAP_FILE."""


@dataclass(frozen=True)
class RunRecord:
    """The parts of a run folder that the card and the push read, loaded once."""

    run_dir: Path
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]
    label_map: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        """Label names in class-id order (the order the classification head uses)."""
        id2label = self.label_map.get("id2label", {})
        return [id2label[key] for key in sorted(id2label, key=int)]

    def section(self, name: str) -> dict[str, Any]:
        """A recipe section as a dict; a missing or null section reads as empty."""
        return self.recipe.get(name) or {}


def load_run_record(run_dir: str | os.PathLike) -> RunRecord:
    """Read a run folder's files, failing with one message that names every missing or unreadable file.

    Unlike ``load_run`` the recipe is read as written (not validated), so a card can still be built from a run
    of an older peftkit.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PeftkitError(f"run folder {run_dir} does not exist (expected the output_dir of `peftkit train`)")
    recipe_file = run_dir / RECIPE_FILE
    recipe = read_run_recipe(recipe_file) if recipe_file.is_file() else {}
    labelled = traits_of(recipe.get("task", DEFAULT_TASK)).labelled  # an sft run has no label map
    required = RECORD_FILES + ((LABEL_MAP_FILE,) if labelled else ())
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise PeftkitError(
            f"run folder {run_dir} is missing {', '.join(missing)}; "
            "is it the output_dir of a finished `peftkit train` run?"
        )
    return RunRecord(
        run_dir=run_dir,
        recipe=recipe,
        metrics=read_json_mapping(run_dir / METRICS_FILE),
        summary=read_json_mapping(run_dir / SUMMARY_FILE),
        label_map=read_json_mapping(run_dir / LABEL_MAP_FILE) if labelled else {},
    )


def read_json_mapping(path: Path) -> dict[str, Any]:
    """A run file that must hold a JSON mapping; a corrupt file is a user-fixable error, not a traceback."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeftkitError(f"{path} is not valid {path.suffix.lstrip('.').upper()} ({first}): the file is damaged "
                           "or was cut short") from None
    if not isinstance(value, dict):
        raise PeftkitError(f"{path} should hold a mapping at the top level, found {type(value).__name__}")
    return value
