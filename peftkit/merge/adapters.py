"""`peftkit merge-adapters RUN_DIR [RUN_DIR ...] --method ... --out DIR`: one adapter built from several.

The runs' adapters are loaded onto one base and combined by PEFT's ``add_weighted_adapter``: linear (PEFT's rough
sum of the A and B matrices), cat (the exact weighted sum of the weight updates, rank = sum of ranks), ties,
dare_linear, dare_ties (task-vector merging with pruning to ``density``, sign election for ties). The result is a
multitask run folder (recipe.yaml listing every source task with its own prompt and label words, adapter/), so
``peftkit evaluate OUT`` scores it again on every task. It is evaluated on every source task's eval split at once,
and merge_report.json / merge_report.md compare it, per task, with the source adapter trained on that task.

Which runs can merge: generative_classification and multitask runs on the same base model (name and revision)
with adapters of the same targets (and the same rank, except for cat). Classification-head runs cannot: each
has its own head (a modules_to_save copy, sized to its own labels), which PEFT refuses to combine and which would
mean nothing averaged across label sets. SFT runs have no per-task evaluation to report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import replace_dir_atomic, staging_dir, write_json_atomic, write_text_atomic
from peftkit.core.console import say
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection, Recipe, validate
from peftkit.recipe.sections import SubTask
from peftkit.recipe.task_traits import MULTITASK, tasks_where, traits_of
from peftkit.runs.folder import save_run_files
from peftkit.runs.layout import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_FILE,
    MERGE_REPORT_FILE,
    MERGE_REPORT_MARKDOWN_FILE,
    METRICS_FILE,
    RECIPE_FILE,
)
from peftkit.runs.read import load_run

METHODS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
PRUNING_METHODS = ("ties", "dare_linear", "dare_ties")
DEFAULT_DENSITY = 0.5


def merge_adapters(run_dirs: Sequence[str], out: str, method: str, weights: Sequence[float] | None = None,
                   density: float | None = None, seed: int = 42) -> dict[str, Any]:
    """Merge, save OUT (atomically), evaluate every task, write the report. Returns the report."""
    from peft import PeftModel
    from transformers import set_seed

    sources = [load_run(d) for d in run_dirs]
    weights, density = check_request(sources, method, weights, density, Path(out))
    recipe = merged_recipe(sources, Path(out))
    from peftkit.model.base import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(recipe.model, str(sources[0][0] / ADAPTER_DIR))
    net = PeftModel.from_pretrained(load_causal_lm(recipe.model, recipe.quantization, tokenizer),
                                    str(sources[0][0] / ADAPTER_DIR), adapter_name="source0")
    for i, (run_dir, _) in enumerate(sources[1:], start=1):
        net.load_adapter(str(run_dir / ADAPTER_DIR), adapter_name=f"source{i}")
    set_seed(seed)  # dare_* prune at random
    names = [f"source{i}" for i in range(len(sources))]
    net.add_weighted_adapter(names, list(weights), "merged", combination_type=method, density=density)
    net.set_adapter("merged")
    for name in names:
        net.delete_adapter(name)
    save_merged(net, tokenizer, recipe, Path(out))
    say(f"merged {len(sources)} adapters ({method}, weights {list(weights)}"
        + (f", density {density}" if density is not None else "") + f") into {out}; evaluating every task")
    return evaluate_and_report(recipe, tokenizer, net.eval(), sources, Path(out),
                               {"method": method, "weights": list(weights), "density": density, "seed": seed})


def check_request(sources, method: str, weights, density, out: Path) -> tuple[list[float], float | None]:
    """Refuse, before any weight loads, what cannot merge or cannot be compared; returns weights and density."""
    if method not in METHODS:
        raise PeftkitError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(sources) < 2:
        raise PeftkitError("merge-adapters needs two or more run folders")
    for run_dir, recipe in sources:
        traits = traits_of(recipe.task)
        if not traits.adapters_mergeable:
            why = ("its classification head is its own (sized to its labels); PEFT cannot merge heads and an "
                   "averaged head would mean nothing" if traits.head else
                   f"an {recipe.task} run has no per-task evaluation to compare")
            first_kind, *others = tasks_where("adapters_mergeable")
            raise PeftkitError(f"{run_dir} is a task: {recipe.task} run: merge-adapters merges "
                               f"{first_kind} (and {', '.join(others)}) runs; {why}")
    first_dir, first = sources[0]
    for run_dir, recipe in sources[1:]:
        for key in ("name_or_path", "revision"):
            if getattr(recipe.model, key) != getattr(first.model, key):
                raise PeftkitError(f"{run_dir} has model.{key} {getattr(recipe.model, key)!r}, {first_dir} has "
                                   f"{getattr(first.model, key)!r}: adapters merge only on the base they were "
                                   "trained on")
        for key in ("target_modules", "use_dora") + (() if method == "cat" else ("r",)):
            if getattr(recipe.adapter, key) != getattr(first.adapter, key):
                raise PeftkitError(f"{run_dir} has adapter.{key} {getattr(recipe.adapter, key)!r}, {first_dir} "
                                   f"has {getattr(first.adapter, key)!r}: --method {method} needs the same"
                                   + (" (use --method cat for different ranks)" if key == "r" else ""))
    weights = list(weights) if weights else [1.0] * len(sources)
    if len(weights) != len(sources):
        raise PeftkitError(f"--weights gives {len(weights)} numbers for {len(sources)} run folders: one per run")
    if method in PRUNING_METHODS:
        density = DEFAULT_DENSITY if density is None else density
        if not 0 < density <= 1:
            raise PeftkitError(f"--density must be in (0, 1] (the share of each update kept), got {density}")
    elif density is not None:
        raise PeftkitError(f"--density is for {', '.join(PRUNING_METHODS)}; --method {method} keeps every value")
    if out.exists() and any(out.iterdir()):
        raise PeftkitError(f"--out {out} exists and is not empty; choose a new folder (nothing was merged)")
    return weights, density


def source_tasks(run_dir: Path, recipe: Recipe) -> list[SubTask]:
    """The tasks a source run was trained on: a multitask run's list, or one task named after its folder."""
    if traits_of(recipe.task).subtasks:
        return list(recipe.tasks)
    return [SubTask(name=run_dir.resolve().name, data=recipe.data)]


def merged_recipe(sources, out: Path) -> Recipe:
    """A multitask recipe holding every source task (for `peftkit evaluate OUT`), on the first source's base."""
    tasks: list[SubTask] = []
    for run_dir, recipe in sources:
        for task in source_tasks(run_dir, recipe):
            name = task.name if task.name not in {t.name for t in tasks} else f"{task.name}-{len(tasks)}"
            tasks.append(SubTask(name=name, data=task.data))
    first = sources[0][1]
    train = {k: v for k, v in first.train.items() if k not in ("load_best_model_at_end", "metric_for_best_model")}
    recipe = dataclasses.replace(
        first, task=MULTITASK, output_dir=str(out), tasks=tasks, source=str(out / RECIPE_FILE),
        adapter=dataclasses.replace(first.adapter, init_from=None),
        data=DataSection(max_length=max(t.data.max_length for t in tasks)),
        train=train | {"eval_strategy": "no"}, selection=type(first.selection)())
    validate(recipe)
    return recipe


def save_merged(net, tokenizer, recipe: Recipe, out: Path) -> None:
    """OUT/recipe.yaml and OUT/adapter (the merged adapter as adapter_model.safetensors), written in a staging
    folder and moved into place whole."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    stage = staging_dir(out)
    try:
        adapter = stage / ADAPTER_DIR
        adapter.mkdir(parents=True)
        config = net.peft_config["merged"]
        config.save_pretrained(str(adapter))
        state = get_peft_model_state_dict(net, adapter_name="merged")
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(adapter / ADAPTER_WEIGHTS_FILE),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(str(adapter))
        save_run_files(stage, recipe, None)
        replace_dir_atomic(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def evaluate_and_report(recipe: Recipe, tokenizer, model, sources, out: Path, how: dict[str, Any]) -> dict[str, Any]:
    from peftkit.tasks import multitask

    metrics = multitask.evaluate_tasks(recipe, tokenizer, model)
    say(multitask.save_metrics(out, metrics))
    report = {"merge": how, "sources": [str(d) for d, _ in sources], "tasks": compare(recipe, metrics, sources),
              "mean_merged": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}}
    write_json_atomic(out / MERGE_REPORT_FILE, report)
    text = report_markdown(report)
    write_text_atomic(out / MERGE_REPORT_MARKDOWN_FILE, text)
    say(text)
    return report


def compare(recipe: Recipe, metrics: dict[str, Any], sources) -> dict[str, Any]:
    """Per task: the merged adapter's accuracy / macro F1 and those of the source adapter trained on that task
    (read from its metrics.json; comparable when it scored the same eval file with the same number of rows)."""
    rows = {}
    names = iter(t.name for t in recipe.tasks)
    for run_dir, source in sources:
        metrics_file = run_dir / METRICS_FILE
        saved = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        for task in source_tasks(run_dir, source):
            name = next(names)
            merged = metrics["tasks"][name]
            own = saved.get("tasks", {}).get(task.name) if traits_of(source.task).subtasks else saved
            row = {"source_run": str(run_dir), "eval_file": merged.get("data_file"), "examples": merged["num_examples"],
                   "merged_accuracy": merged["accuracy"], "merged_macro_f1": merged["macro_f1"]}
            same_rows = source.seed == recipe.seed and own and own.get("data_file") == merged.get("data_file")
            if same_rows and own.get("num_examples") == merged["num_examples"]:
                row |= {"source_accuracy": own["accuracy"], "source_macro_f1": own["macro_f1"],
                        "accuracy_change": merged["accuracy"] - own["accuracy"],
                        "macro_f1_change": merged["macro_f1"] - own["macro_f1"]}
            else:
                row["source_note"] = ("no comparable metrics.json in the source run (another eval file, "
                                     "seed or row count, or none)")
            rows[name] = row
    return rows


def report_markdown(report: dict[str, Any]) -> str:
    how = report["merge"]
    lines = [f"# Merged adapter: {how['method']} (weights {how['weights']}"
             + (f", density {how['density']}" if how["density"] is not None else "") + ")", "",
             "| task | eval rows | merged acc | source acc | change | merged macro-F1 | source macro-F1 | change |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["tasks"].items():
        def cell(key, signed=False, r=r):
            value = r.get(key)
            return "n/a" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")
        lines.append(f"| {name} | {r['examples']} | {cell('merged_accuracy')} | {cell('source_accuracy')} | "
                     f"{cell('accuracy_change', True)} | {cell('merged_macro_f1')} | {cell('source_macro_f1')} | "
                     f"{cell('macro_f1_change', True)} |")
    lines += ["", f"Sources: {', '.join(report['sources'])}. Source metrics come from each source run's metrics.json "
                  "(same eval file and rows)."]
    return "\n".join(lines) + "\n"
