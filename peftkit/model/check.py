"""Checks of a recipe against its model that need no weights: the model is built from its config on the meta
device (no memory, no weights read) and compared with the recipe and with the weight files' headers.

* ``adapter.target_modules`` must match modules of the model (PEFT's own matching rule);
* ``data.max_length`` must fit the model's position table;
* the weights in the folder must be the model its ``config.json`` describes: every weight of the base present
  with its shape, nothing unexpected in the base (a dropped pretrained head, like a causal LM's ``lm_head`` under a
  classification model, is expected). A new task head (``score``, ``classifier``) is the only thing allowed to be
  missing.

``peftkit validate`` runs them on local model folders, ``peftkit train`` before its run folder is touched. The same
rule for weights is applied again on what transformers reports while loading (``check_loaded_weights``): that is the
authoritative check, this one is the early one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import traits_of

HEAD_NAMES = ("score", "classifier")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
SHOWN = 3


def checkable_folder(recipe: Recipe) -> Path | None:
    """The local folder of the recipe's model if it can be read without converting or downloading anything."""
    from peftkit.model import packaged

    name = recipe.model.name_or_path
    if packaged.is_packaged(name):
        try:
            source = packaged._source_path(packaged._lookup(name))
        except PeftkitError:
            return None
        return source if source.is_dir() else None
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def check_recipe_against_model(recipe: Recipe, folder: str | Path | None, num_labels: int | None = None) -> None:
    """Everything above, on the model built from `folder`'s config (skipped for a hub id: no local config)."""
    if folder is None or not Path(folder).is_dir():
        return
    folder = Path(folder)
    config = load_config(folder, recipe)
    check_positions(recipe, config, folder)
    model = meta_model(recipe, config, num_labels)
    check_target_modules(recipe, model)
    check_weight_files(model, folder)


def load_config(folder: Path, recipe: Recipe):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=recipe.model.trust_remote_code)
    except (ValueError, OSError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftkitError(f"model.name_or_path: {folder}/config.json does not describe a model transformers can "
                           f"build ({first[:200]})") from None


def meta_model(recipe: Recipe, config, num_labels: int | None):
    """The task's model class built from `config` on the meta device: names and shapes, no memory."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    causal = not traits_of(recipe.task).head  # classification and distillation students have a head
    if not causal:
        config.num_labels = num_labels or len(recipe.data.label_names or ()) or 2
    cls = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    try:
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftkitError(f"model.name_or_path: {cls.__name__} cannot be built from {recipe.model.name_or_path}"
                           f"/config.json ({first[:200]}); task {recipe.task} needs a model of that kind") from None


def check_positions(recipe: Recipe, config, folder: Path) -> None:
    positions = next((getattr(config, key) for key in POSITION_KEYS
                      if isinstance(getattr(config, key, None), int)), None)
    if positions and recipe.data.max_length > positions:
        raise PeftkitError(f"'data.max_length' {recipe.data.max_length} is longer than the model's {positions} "
                           f"positions ({folder}/config.json); set data.max_length: {positions} or less")


def check_target_modules(recipe: Recipe, model) -> None:
    """PEFT raises "Target modules ... not found" only after the real model is loaded: check on the meta model."""
    targets = recipe.adapter.target_modules
    if targets == "all-linear" or targets == ["all-linear"]:
        return
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets, r=recipe.adapter.r)
    names = [name for name, _ in model.named_modules() if name]
    if any(check_target_module_exists(config, name) for name in names):
        return
    import torch

    linear = sorted({name.split(".")[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in HEAD_NAMES})
    shown = ", ".join(linear[:10]) + (", ..." if len(linear) > 10 else "")
    raise PeftkitError(f"'adapter.target_modules' {targets!r} match no module of {recipe.model.name_or_path} "
                       f"(a {type(model).__name__}); its linear layers are {shown}, or use all-linear")


def check_weight_files(model, folder: Path) -> None:
    """The weights' headers against the model's parameters (names and shapes), by the rule of the module doc."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    from peftkit.core.integrity import weight_shapes

    if get_checkpoint_conversion_mapping(model.config.model_type) is not None:
        return  # transformers renames this family's weights while loading: left to check_loaded_weights
    files = weight_shapes(folder)
    if not files:
        return  # pickle weights (allowed by model.allow_pickle): checked at load
    found = {legacy_name(name): shape for shapes in files.values() for name, shape in shapes.items()}
    prefix = model.base_model_prefix
    if prefix and not any(name.startswith(prefix + ".") for name in found):
        found = {f"{prefix}.{name}": shape for name, shape in found.items()}  # saved from the bare base model
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    parameters = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        parameters.setdefault(id(param), []).append(name)
    buffers = {name for name, _ in model.named_buffers()}
    ignore_missing = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    ignore_unexpected = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    missing = sorted(name for group in parameters.values() if not any(n in found for n in group)
                     for name in group[:1] if not is_head(name) and not any(r.search(name) for r in ignore_missing))
    unexpected = sorted(name for name in found if name not in expected and name not in buffers
                        and in_base(name, prefix) and not any(r.search(name) for r in ignore_unexpected))
    mismatched = sorted(f"{name} {found[name]} vs {expected[name]}" for name in found
                        if name in expected and tuple(found[name]) != expected[name])
    report_mismatch(folder, ", ".join(files), missing, unexpected, mismatched)


def check_loaded_weights(net, info: dict[str, Any], source: str) -> list[str]:
    """What transformers reported while loading `source`, by the same rule. Returns the new heads' names."""
    prefix = getattr(net, "base_model_prefix", "")
    missing = sorted(k for k in info.get("missing_keys") or () if not is_head(k))
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if in_base(k, prefix))
    mismatched = sorted(" ".join(map(str, m)) if isinstance(m, (tuple, list)) else str(m)
                        for m in info.get("mismatched_keys") or ())
    report_mismatch(Path(source), "the weights", missing, unexpected, mismatched)
    return sorted({k.split(".")[0] for k in info.get("missing_keys") or () if is_head(k)})


def report_mismatch(folder: Path, files: str, missing: list[str], unexpected: list[str],
                    mismatched: list[str]) -> None:
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} with another shape ({'; '.join(mismatched[:SHOWN])})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:SHOWN])}"
                     f"{', ...' if len(unexpected) > SHOWN else ''})")
    raise PeftkitError(f"model.name_or_path: the weights in {folder} ({files}) do not match its config.json: "
                       f"{'; '.join(parts)} weights of the base model. A config.json of another model or size, or "
                       "an incomplete download: training would start from random weights. Use the config.json that "
                       "came with these weights")


def is_head(name: str) -> bool:
    return name.split(".")[0] in HEAD_NAMES


def in_base(name: str, prefix: str) -> bool:
    """Whether a checkpoint key belongs to the base model (not to a pretrained task head the task replaces)."""
    return bool(prefix) and name.startswith(prefix + ".")


def legacy_name(name: str) -> str:
    """transformers still reads old LayerNorm names (gamma/beta) as weight/bias."""
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
