"""What a task module provides to the one checklist (peftkit.run) and to the later commands.

A task is a plain module, registered by name in ``peftkit.tasks``; nothing is inherited. Each provides:

``PEFT_TASK_TYPE``
    the ``peft.TaskType`` of its adapter (``SEQ_CLS``, ``CAUSAL_LM``).
``check_inputs(recipe) -> (report, number of classes or None)``
    ``peftkit validate``: the data read (and tokenized, where that needs no model) as training will; the number
    of classes sizes the head of the model checked on the meta device.
``read_data(recipe)``
    read and clean the examples; every check of the data files fails here, before the run folder is opened or
    anything is loaded.
``prepare_data(recipe, tokenizer, read) -> TaskData``
    the examples as training will see them (tokenized, audited); may still stop the run, before the previous
    run in the folder is replaced.
``training_arguments(recipe, run_dir)``
    ``TrainingArguments`` (or a subclass such as ``trl.SFTConfig``) from the recipe's ``train`` section.
``load_model(recipe, tokenizer, data, source)``
    the base model for this task, quantized as the recipe says (the checklist prepares it and adds the adapter).
``build_trainer(recipe, args, model, tokenizer, data)``
    a Trainer composed by ``peftkit.trainer.trainer.build_trainer`` (peftkit's layers, their state given in a
    ``TrainerSetup``) with ``trainer.loop.run_callbacks``.
``training_facts(trainer) -> dict``
    what the task measured while training, said to the user and added to ``train_summary.json``.
``evaluate(recipe, trainer, data) -> dict``
    metrics on the eval split, called on every process (a task gathers or computes on the main one).
``save_metrics(out_dir, metrics) -> str``
    the metric files of a run folder; returns the readable report.
``evaluate_run(run_dir, recipe, data_file) -> dict``
    ``peftkit evaluate``: the saved adapter on the eval split or another file.
``card(run) -> TaskCard``
    how the model card describes a run of this task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TaskData:
    """What the checklist needs to know of a task's data; ``prepared`` is the task's own (datasets, encoder...)."""

    label_names: list[str] | None
    """Class names in id order (saved as label_map.json); None for tasks without labels."""
    report: dict[str, Any]
    """data_report.json: rows read, used, skipped, truncated per split."""
    train_examples: int
    eval_examples: int
    prepared: Any


@dataclass
class TaskCard:
    """A task's part of the model card; the rest (data, recipe, hardware) is the same for every task."""

    pipeline_tag: str
    what: str
    """Completes "This repository holds <an adapter> for ..." (e.g. "**text classification** into 2 classes")."""
    task_line: str
    """The **Task:** line of the summary."""
    headline: str
    """The **Eval ...:** line of the summary."""
    evaluation: str
    """The Markdown evaluation section."""
    usage: str
    """The Markdown "How to use" section."""
    limits: list[str]
    """Task-specific lines of the Limitations section."""
    metrics: tuple
    """(metrics.json key, model-index metric type, pretty name, metric args) of the metrics the hub shows."""
