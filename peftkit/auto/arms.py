"""The arms `peftkit auto` chooses between: one per backbone and method, each with its base recipe from
`peftkit init` and its search space.

An encoder gets a classification head; a causal LM gets both generative classification (label words scored by
likelihood) and a classification head. Each arm's base recipe is what ``peftkit init TRAIN --model M --task T``
writes (``OUT/recipes/ARM.yaml``, written once and read back, so a resumed search keeps the recipes it started
with); its trials are built from it by ``peftkit sweep``'s Sweep (validation split, trial folders, evaluation
off in trials), and its first trial is that recipe as written (the baseline the search has to beat). The
space, the same keys for every arm: learning rate (0.2x to 3x the arm's own, log scale), LoRA rank (lora_alpha
keeps init's alpha/r ratio), epochs (1 to twice init's, at most 20) and batch size. Prompt and label words of
the generative form stay as init writes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.console import say
from peftkit.errors import PeftkitError
from peftkit.recipe.task_traits import classifier_task, tasks_where, traits_of

DEFAULT_MODELS = ("packaged:all-minilm-l6-v2", "packaged:smollm2-135m-instruct")
METHOD_NAMES = {task: "head" if traits_of(task).head else "generative" for task in tasks_where("init_writes")}
"""The short name of each method (the task init writes) in an arm's name: 'minilm/head', 'smollm2/generative'."""
RANKS = [4, 8, 16, 32]
BATCH_SIZES = [8, 16, 32]
LR_RANGE = (0.2, 3.0)
"""The learning rate is searched from 0.2x to 3x the rate init writes for the arm (log scale)."""
MAX_EPOCHS = 20


@dataclass
class Arm:
    name: str
    model: str
    method: str
    recipe_path: Path
    sweep: Any  # peftkit.sweep.study.Sweep over the arm's base recipe
    space: dict[str, Any]
    alpha_per_rank: float
    defaults: dict[str, Any]
    """The base recipe's own value of each searched key: the arm's first trial (its `peftkit init` baseline)."""

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's recipe overrides, from Optuna (the same parameter names for every arm)."""
        from peftkit.sweep.study import suggest

        params = {key: suggest(trial, key, space) for key, space in self.space.items()}
        params["adapter.lora_alpha"] = round(params["adapter.r"] * self.alpha_per_rank, 4)
        return params


def methods_of(model: str) -> list[str]:
    from peftkit.init.recipe_writer import is_causal_lm

    head = classifier_task(causal=False)  # a head works on a causal LM too; label words need one
    return [classifier_task(causal=True), head] if is_causal_lm(model) else [head]


def arm_names(models: list[str]) -> list[tuple[str, str, str]]:
    """(name, model, method) for every arm, named model-short/method ('minilm/head', 'smollm2/generative')."""
    from peftkit.init.recipe_writer import short_model_name

    shorts = [short_model_name(m) for m in models]
    out = []
    for i, (model, short) in enumerate(zip(models, shorts)):
        if shorts.count(short) > 1:  # two llama folders: tell them apart
            short = f"{short}{i + 1}"
        for method in methods_of(model):
            out.append((f"{short}/{METHOD_NAMES[method]}", model, method))
    return out


def prepare_arms(train_file: str, models: list[str], out: Path, overrides: list[str] = (),
                 eval_file: str | None = None) -> list[Arm]:
    """Every arm with its base recipe (written by `peftkit init` once, then read back) and its search space.
    ``overrides`` (section.key=value) apply to every arm's recipe, as on `peftkit train`. With an eval file, the
    trials name it (so no training row is held out for it) but never evaluate on it (Sweep.trial_raw): only the
    winner reads it."""
    from peftkit.recipe import read_yaml
    from peftkit.recipe.loading import apply_override

    searched = {"train.learning_rate", "adapter.r", "adapter.lora_alpha", "train.num_train_epochs",
                "train.per_device_train_batch_size"}
    fixed = [item for item in overrides if item.partition("=")[0].strip() in searched]
    if fixed:
        raise PeftkitError(f"{', '.join(fixed)}: auto searches that key; leave it out (or use peftkit train)")
    named = arm_names(models)
    paths = [write_base_recipe(name, model, method, train_file, out, eval_file) for name, model, method in named]
    raws = [read_yaml(p) for p in paths]
    for raw in raws:
        for item in overrides:
            apply_override(raw, item)
    # one list of choices for every arm (Optuna needs the same categorical choices), holding each init value
    ranks = sorted({*RANKS, *(int(section(raw, "adapter").get("r", 16)) for raw in raws)})
    batches = sorted({*BATCH_SIZES, *(int(section(raw, "train").get("per_device_train_batch_size", 8))
                                      for raw in raws)})
    arms = [build_arm(name, model, method, path, raw, list(overrides), ranks, batches)
            for (name, model, method), path, raw in zip(named, paths, raws)]
    metrics = {(a.sweep.metric, a.sweep.direction) for a in arms}
    if len(metrics) > 1:
        raise PeftkitError(f"the arms select on different validation metrics ({sorted(metrics)}); auto needs one")
    return arms


def section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return raw.get(name) or {}


def write_base_recipe(name: str, model: str, method: str, train_file: str, out: Path,
                      eval_file: str | None = None) -> Path:
    from peftkit.init.recipe_writer import init_recipe

    path = out / "recipes" / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".yaml")
    if not path.is_file():  # written once: a resumed search keeps its base recipes
        path.parent.mkdir(parents=True, exist_ok=True)
        init_recipe(train_file, eval_file, model=model, task=method, out=str(path), output_dir=str(out))
        said_eval = f" --eval {eval_file}" if eval_file else ""
        say(f"auto: {name}: base recipe {path} (peftkit init {train_file}{said_eval} --model {model} "
            f"--task {method})")
    return path


def build_arm(name: str, model: str, method: str, path: Path, raw: dict[str, Any], overrides: list[str],
              ranks: list[int], batches: list[int]) -> Arm:
    from peftkit.sweep.study import Sweep

    train, adapter = section(raw, "train"), section(raw, "adapter")
    lr = float(train.get("learning_rate", 1e-3))
    epochs = int(train.get("num_train_epochs", 1))
    r = int(adapter.get("r", 16))
    space = {
        "train.learning_rate": {"low": lr * LR_RANGE[0], "high": lr * LR_RANGE[1], "log": True},
        "adapter.r": ranks,
        "train.num_train_epochs": {"low": 1, "high": max(2, min(MAX_EPOCHS, 2 * epochs))},
        "train.per_device_train_batch_size": batches,
    }
    sweep = Sweep(str(path), [*overrides, f"sweep.params={json.dumps(space)}"])
    defaults = {"train.learning_rate": lr, "adapter.r": r, "train.num_train_epochs": epochs,
                "train.per_device_train_batch_size": int(train.get("per_device_train_batch_size", 8))}
    return Arm(name, model, method, path, sweep, space, float(adapter.get("lora_alpha", 2 * r)) / r, defaults)


def parse_models(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_MODELS)
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise PeftkitError("--models: give one or more models separated by commas, e.g. "
                           + ",".join(DEFAULT_MODELS))
    if len(set(models)) < len(models):
        raise PeftkitError(f"--models {text!r}: a model is named twice")
    return models
