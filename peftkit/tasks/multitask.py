"""Task ``multitask``: several generative classification tasks trained into one shared LoRA adapter on one base.

Each entry of the recipe's ``tasks`` list is a generative_classification task with its own data, labels, prompt
template and label words (multi-task instruction tuning): its data is read, fitted and audited by
``peftkit.tasks.causal`` exactly as a one-task run would (``sub_recipe``), the training examples of all tasks are
mixed as ``multitask.mixing`` says (``peftkit.data.mixing``) and trained by one SFTTrainer, and every task is evaluated
separately on its own eval split by label scoring; the run's headline metrics are the unweighted means over tasks.

Run folder: ``recipe.yaml`` (every task's label names written in, so evaluation never re-infers them),
``adapter/``, ``metrics.json`` (``tasks``: each task's metrics; ``accuracy``/``macro_f1``: the means) and
``tasks/NAME/`` with each task's metrics.json, report and confusion matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_text_atomic
from peftkit.core.console import say
from peftkit.data import mixing
from peftkit.data.causal import CausalData, format_causal_report, load_causal_data
from peftkit.data.causal_encode import prepare_examples, truncation_length
from peftkit.errors import PeftkitError
from peftkit.model.base import load_trained_causal_lm
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import CAUSAL_LM
from peftkit.runs.layout import EVAL_REPORT_FILE, METRICS_FILE, TASKS_DIR
from peftkit.tasks import causal
from peftkit.tasks.cards import AGGREGATE_METRICS, evaluation_intro, fmt
from peftkit.tasks.interface import TaskCard, TaskData
from peftkit.trainer.attention import attention_kernel
from peftkit.trainer.lm_head import apply_recipe_choice
from peftkit.trainer.loop import run_callbacks
from peftkit.trainer.packing import TokenCounter, batching_plan, check_packing_exact
from peftkit.trainer.trainer import build_trainer as build_trainer_of
from peftkit.trainer.trainer import setup_for

PEFT_TASK_TYPE = CAUSAL_LM


@dataclass
class MultitaskRead:
    """Each task's examples as read by causal.read_data; ``label_names`` is None: every task has its own."""

    tasks: dict[str, CausalData]
    label_names: None = None


def sub_recipe(recipe: Recipe, index: int) -> Recipe:
    """Task `index` of the list as a one-task generative_classification recipe (same model, adapter, train)."""
    sub = recipe.tasks[index]
    where = f"{recipe.source or '<recipe>'}: tasks[{index}] ({sub.name})"
    return dataclasses.replace(recipe, task="generative_classification", data=sub.data, tasks=[], source=where)


def read_data(recipe: Recipe) -> MultitaskRead:
    """Every task's files read and checked; the label names found are written into the recipe (and so into the
    run's recipe.yaml), so that evaluating later reads the classes in the same order."""
    read = {}
    for i, sub in enumerate(recipe.tasks):
        read[sub.name] = causal.read_data(sub_recipe(recipe, i))
        sub.data.label_names = list(read[sub.name].label_names)
    return MultitaskRead(tasks=read)


def check_inputs(recipe: Recipe) -> tuple[str, None]:
    """`peftkit validate`: each task's data audited as its own generative_classification recipe."""
    return "\n".join(f"task {t.name}: {causal.check_inputs(sub_recipe(recipe, i))[0]}"
                     for i, t in enumerate(recipe.tasks)), None


def prepare_data(recipe: Recipe, tokenizer, read: MultitaskRead) -> TaskData:
    """Each task fitted and audited as its own run would be, then the training examples mixed."""
    prepared = {}
    for i, sub in enumerate(recipe.tasks):
        say(f"task {sub.name}:")
        prepared[sub.name] = causal.prepare_data(sub_recipe(recipe, i), tokenizer, read.tasks[sub.name])
    examples = {name: task.prepared["causal"].examples("train") for name, task in prepared.items()}
    sizes = {name: len(rows) for name, rows in examples.items()}
    counts = mixing.task_counts(sizes, recipe.multitask.mixing, recipe.multitask.temperature)
    say(mixing.describe(sizes, counts, recipe.multitask.mixing, recipe.multitask.temperature))
    train = mixing.mix(examples, counts, recipe.seed)
    report = {name: task.report for name, task in prepared.items()} | {"mixing": counts}
    return TaskData(label_names=None, report=report, train_examples=len(train),
                    eval_examples=sum(task.eval_examples for task in prepared.values()),
                    prepared={"tasks": prepared, "train": train})


def training_arguments(recipe: Recipe, run_dir: Path):
    return causal.training_arguments(recipe, run_dir)


def load_model(recipe: Recipe, tokenizer, data: TaskData, source: str):
    return causal.load_model(recipe, tokenizer, data, source)


def build_trainer(recipe: Recipe, args, model, tokenizer, data: TaskData):
    """One SFTTrainer (with peftkit's run guards) on the mixed examples of every task."""
    import datasets
    from trl import SFTTrainer

    setup = setup_for(recipe, args)
    if args.packing or args.padding_free:  # check on each task's own tokens that packed sequences stay apart
        with attention_kernel(setup.attention_kernel, args.device.type):  # under the kernel training will use
            for task in data.prepared["tasks"].values():
                check_packing_exact(model, tokenizer, task.prepared["encoder"], task.prepared["causal"], recipe)
    trainer = build_trainer_of(
        SFTTrainer, setup,
        model=model, args=args, train_dataset=datasets.Dataset.from_list(data.prepared["train"]),
        processing_class=tokenizer, callbacks=run_callbacks(recipe))
    apply_recipe_choice(trainer, recipe.model.lm_head_positions)  # TRL 1.16 projects every position on CPU
    trainer.data_collator = TokenCounter(trainer.data_collator)
    say(batching_plan(trainer, recipe))
    return trainer


def training_facts(trainer) -> dict[str, Any]:
    return causal.training_facts(trainer)


def evaluate(recipe: Recipe, trainer, data: TaskData) -> dict[str, Any]:
    """Every task on its own eval split (main process only), and the means over tasks."""
    if not trainer.is_world_process_zero():
        return {}
    per_task = {}
    for i, sub in enumerate(recipe.tasks):
        task = data.prepared["tasks"][sub.name]
        per_task[sub.name] = causal.evaluate_causal(sub_recipe(recipe, i), trainer.model, task.prepared["encoder"],
                                                    task.prepared["causal"])
    return combine(per_task)


def combine(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's metrics: each task's, and the unweighted means over tasks (a small task counts as much)."""
    n = len(per_task)
    return {
        "tasks": per_task,
        "accuracy": sum(m["accuracy"] for m in per_task.values()) / n,
        "macro_f1": sum(m["macro_f1"] for m in per_task.values()) / n,
        "num_examples": sum(m["num_examples"] for m in per_task.values()),
        "aggregate": f"unweighted mean over {n} tasks ({', '.join(per_task)})",
    }


def save_metrics(out_dir: Path, metrics: dict[str, Any]) -> str:
    """tasks/NAME/ with each task's metric files, metrics.json and eval_report.txt with every task and the means."""
    lines = []
    for name, task_metrics in metrics["tasks"].items():
        text = causal.save_metrics(out_dir / TASKS_DIR / name, task_metrics)
        lines += [f"== task {name} ({task_metrics.get('data_file')}) ==", text, ""]
    lines.append(format_summary(metrics))
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_text_atomic(out_dir / EVAL_REPORT_FILE, "\n".join(lines) + "\n")
    return "\n".join(lines)


def format_summary(metrics: dict[str, Any]) -> str:
    rows = [f"{name:<16} accuracy {m['accuracy']:.4f}   macro F1 {m['macro_f1']:.4f}   ({m['num_examples']} examples)"
            for name, m in metrics["tasks"].items()]
    return "\n".join([*rows, f"{'mean over tasks':<16} accuracy {metrics['accuracy']:.4f}   macro F1 "
                             f"{metrics['macro_f1']:.4f}"])


def evaluate_tasks(recipe: Recipe, tokenizer, model) -> dict[str, Any]:
    """Every task's eval split read, fitted as in training and scored with `model` (peftkit evaluate, and
    peftkit merge-adapters on its merged adapter)."""
    per_task = {}
    for i, sub in enumerate(recipe.tasks):
        one = sub_recipe(recipe, i)
        data = load_causal_data(one.data, one.task, one.seed)
        data.splits = {"eval": data.splits["eval"]}
        data.reports = {"eval": data.reports["eval"]}
        encoder = prepare_examples(one, tokenizer, data)
        print(f"task {sub.name}: " + format_causal_report(data, truncation_length(one)), flush=True)
        per_task[sub.name] = causal.evaluate_causal(one, model, encoder, data)
    return combine(per_task)


def evaluate_run(run_dir: Path, recipe: Recipe, data_file: str | None = None) -> dict[str, Any]:
    """`peftkit evaluate` on a multitask run: the adapter on every task's eval split."""
    if data_file is not None:
        raise PeftkitError(f"{run_dir} is a multitask run ({', '.join(t.name for t in recipe.tasks)}): evaluate "
                           "--data FILE cannot tell which task's prompt and labels to use; evaluate without --data "
                           "(every task's eval split), or change a task's eval_file in a copy of its recipe.yaml")
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    metrics = evaluate_tasks(recipe, tokenizer, model)
    print(save_metrics(Path(run_dir), metrics), flush=True)
    print(f"written to {run_dir}", flush=True)
    return metrics


def card(run, *, merged: bool, repo_id: str, base_id: str) -> TaskCard:
    """A model card table of every task's metrics; usage asks each task with its own prompt and label words."""
    tasks = run.metrics.get("tasks") or {}
    rows = ["| task | eval file | examples | accuracy | macro F1 |", "|---|---|---|---|---|"]
    rows += [f"| {name} | `{m.get('data_file')}` | {m.get('num_examples')} | {fmt(m.get('accuracy'))} | "
             f"{fmt(m.get('macro_f1'))} |" for name, m in tasks.items()]
    prompts = "\n".join(f"- **{t['name']}**: prompt `{t['data'].get('prompt_template')!r}`, label words "
                        f"`{t['data'].get('label_words')}`" for t in run.recipe.get("tasks", []))
    return TaskCard(
        pipeline_tag="text-generation",
        what=f"**text classification** on {len(tasks)} tasks ({', '.join(tasks)}) by one causal-LM adapter that "
             "answers each task's prompt with a label word",
        task_line="multitask (one shared adapter; each task scored by its label words)",
        headline=(f"**Eval accuracy (mean over tasks):** {fmt(run.metrics.get('accuracy'))}, macro F1: "
                  f"{fmt(run.metrics.get('macro_f1'))}"),
        evaluation="\n".join([*evaluation_intro(run), "", *rows]),
        usage="## How to use\n\nAsk each task the way it was trained:\n\n" + prompts,
        limits=["- Each task was evaluated on its own eval split only; the means weight every task equally."],
        metrics=AGGREGATE_METRICS,
    )
