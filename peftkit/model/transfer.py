"""``adapter.init_from: RUN_DIR``: start a run from another run's trained adapter (transfer) instead of a fresh one.

Everything that can be checked without loading a model is checked first (``check_init_from``, called with the
other cheap checks of ``peftkit train`` and by ``peftkit validate``): the folder is a finished peftkit run with
safetensors adapter weights, on the same base model, with an adapter of the same kind (PEFT task type) and shape.
The adapter is then loaded through PEFT, trainable (``load_for_training``); its own LoraConfig (dropout,
modules_to_save) comes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import traits_of
from peftkit.runs.layout import ADAPTER_CONFIG_FILE, ADAPTER_DIR, ADAPTER_WEIGHTS_FILE, LABEL_MAP_FILE
from peftkit.runs.read import label_names_of, load_run

# Adapter settings that decide the shapes (and meaning) of the saved weights: they must be the source run's.
SHAPE_KEYS = ("r", "lora_alpha", "target_modules", "use_dora", "use_rslora")


def check_init_from(recipe: Recipe, label_names: list[str] | None = None) -> None:
    """Refuse, naming adapter.init_from and the field, a source run this recipe cannot start from."""
    if not recipe.adapter.init_from:
        return
    key = f"'adapter.init_from' {recipe.adapter.init_from}"
    try:
        run_dir, source = load_run(recipe.adapter.init_from)
    except PeftkitError as e:
        raise PeftkitError(f"{key}: {e}") from None
    if not (run_dir / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE).is_file():
        raise PeftkitError(f"{key}: the run's adapter has no adapter_model.safetensors; init_from loads safetensors "
                           "only")
    mine, theirs = recipe.model, source.model
    if (mine.name_or_path, mine.revision) != (theirs.name_or_path, theirs.revision):
        raise PeftkitError(f"{key} was trained on model.name_or_path {theirs.name_or_path!r} (revision "
                           f"{theirs.revision}), this recipe uses {mine.name_or_path!r} (revision {mine.revision}): an "
                           "adapter only fits the base it was trained on; use that base or start without init_from")
    theirs_type, mine_type = traits_of(source.task).peft_task_type, traits_of(recipe.task).peft_task_type
    if theirs_type != mine_type:
        raise PeftkitError(f"{key} is a task: {source.task} run ({theirs_type} adapter); this recipe's "
                           f"task: {recipe.task} needs a {mine_type} adapter")
    for field in SHAPE_KEYS:
        if getattr(recipe.adapter, field) != getattr(source.adapter, field):
            raise PeftkitError(f"'adapter.{field}' is {getattr(recipe.adapter, field)!r} but the init_from run's "
                               f"adapter has {getattr(source.adapter, field)!r}: set it to that value (the adapter "
                               "keeps its shape) or start without init_from")
    check_head_size(recipe, run_dir, label_names, key)


def check_head_size(recipe: Recipe, run_dir: Path, label_names: list[str] | None, key: str) -> None:
    """A classification head is saved with the adapter: it only carries over to the same number of classes."""
    if not traits_of(recipe.task).head or label_names is None or not (run_dir / LABEL_MAP_FILE).is_file():
        return
    theirs = label_names_of(run_dir)
    if len(theirs) != len(label_names):
        raise PeftkitError(f"{key} has a classification head for {len(theirs)} classes {theirs}; this data has "
                           f"{len(label_names)} {label_names}: a head carries over only to as many classes (use "
                           "task: generative_classification to transfer across label sets)")


def load_for_training(model, init_from: str):
    """The base model with the source run's adapter on it, trainable (PEFT loads the safetensors file)."""
    from peft import PeftModel

    adapter_dir = Path(init_from) / ADAPTER_DIR
    config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    # safetensors: checked to be there, and PEFT prefers it
    net = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    if not any(p.requires_grad for p in net.parameters()):
        raise PeftkitError(f"'adapter.init_from' {init_from}: no weight of the loaded adapter is trainable "
                           f"(adapter_config {config.get('peft_type')}, inference_mode kept?)")
    return net
