"""Task ``distillation``: a classification-head student (MiniLM, typically) trained on a teacher run's soft labels.

The teacher is any finished peftkit classification run (head or generative; ``distill.teacher``), checked before
anything is loaded: the folder is a run, its task classifies, its label names are this recipe's in the same
order, and ``distill.unlabelled_file`` (optional) has the text column. Its probabilities over the student's
training text (plus the unlabelled text) are computed once and cached in the run folder (peftkit.inference.teacher). The
loss mixes the KL to the softened teacher and the hard-label cross-entropy (peftkit.tasks.distillation.loss). After
training the student is merged, saved as a plain transformers model and as an int8 copy, both measured
(peftkit.tasks.distillation.student). Everything else (data, head, evaluation, cards) is the classification task's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.console import say
from peftkit.data.classification import (
    ClassificationData,
    SplitReport,
    format_report,
    load_classification_data,
    tokenize_split,
)
from peftkit.data.files import read_table
from peftkit.errors import PeftkitError
from peftkit.inference.teacher import cached_soft_labels, open_teacher
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import SEQ_CLS
from peftkit.runs.layout import SOFT_LABELS_FILE
from peftkit.tasks import classification
from peftkit.tasks.distillation.loss import IGNORE, DistillationLoss
from peftkit.tasks.interface import TaskCard, TaskData
from peftkit.trainer.attention import trainer_attention_kernel, with_attention_kernel
from peftkit.trainer.loop import run_callbacks, trainer_kwargs
from peftkit.trainer.selection import VALIDATION, head_compute_metrics
from peftkit.trainer.speed import collator_pad_multiple, with_seeded_length_grouping
from peftkit.trainer.trainer import build_trainer as build_trainer_of
from peftkit.trainer.trainer import setup_for

PEFT_TASK_TYPE = SEQ_CLS
load_model = classification.load_model
save_metrics = classification.save_metrics
evaluate_run = classification.evaluate_run


@dataclass
class DistillationData:
    """The labelled data (as the classification task reads it), the unlabelled texts and the teacher's folder."""

    labelled: ClassificationData
    unlabelled: list[str]
    teacher_dir: Path
    teacher_recipe: Any

    @property
    def label_names(self) -> list[str]:
        return self.labelled.label_names


def read_data(recipe: Recipe) -> DistillationData:
    labelled = classification.read_data(recipe)
    teacher_dir, teacher_recipe, _ = open_teacher(recipe.distill.teacher, labelled.label_names, "distill.teacher")
    return DistillationData(labelled, read_unlabelled(recipe), teacher_dir, teacher_recipe)


def check_inputs(recipe: Recipe) -> tuple[str, int]:
    """`peftkit validate`: the labelled data as the classification task checks it, the teacher run folder (a
    classification run with these labels) and the unlabelled file's text column."""
    data = load_classification_data(recipe.data, recipe.seed)
    teacher_dir, teacher_recipe, _ = open_teacher(recipe.distill.teacher, data.label_names, "distill.teacher")
    unlabelled = read_unlabelled(recipe)
    teacher = (f"teacher: {teacher_dir} ({teacher_recipe.task}); unlabelled: {len(unlabelled)} rows"
               + (f" from {recipe.distill.unlabelled_file}" if unlabelled else ""))
    return format_report(data) + "\n" + teacher, len(data.label_names)


def read_unlabelled(recipe: Recipe) -> list[str]:
    """Texts of distill.unlabelled_file (its data.text_column; a label column, if any, is ignored)."""
    import random

    path = recipe.distill.unlabelled_file
    if path is None:
        return []
    rows = read_table(path, recipe.data)
    column = recipe.data.text_column
    if column not in rows[0]:
        raise PeftkitError(f"distill.unlabelled_file {path}: no column {column!r} (data.text_column); its columns "
                           f"are {', '.join(map(str, rows[0]))}")
    texts = [str(r[column]).strip() for r in rows if r.get(column) is not None and str(r[column]).strip()]
    if not texts:
        raise PeftkitError(f"distill.unlabelled_file {path}: no non-empty text in column {column!r}")
    limit = recipe.distill.max_unlabelled_samples
    if limit is not None and limit < len(texts):
        texts = random.Random(recipe.seed).sample(texts, limit)
    return texts


def prepare_data(recipe: Recipe, tokenizer, data: DistillationData) -> TaskData:
    """The classification task's tokenized splits; unlabelled rows appended to train with label -100."""
    import datasets

    task_data = classification.prepare_data(recipe, tokenizer, data.labelled)
    texts = list(data.labelled.splits["train"]["text"])
    train = task_data.prepared["train"]
    labelled = set(texts)  # a labelled row also read as unlabelled (both from one file) keeps only its label
    unlabelled = [t for t in data.unlabelled if t not in labelled]
    if len(unlabelled) < len(data.unlabelled):
        say(f"unlabelled: {len(data.unlabelled) - len(unlabelled)} rows are labelled training rows; left out")
    data.unlabelled = unlabelled
    if data.unlabelled:
        report = SplitReport(source=str(recipe.distill.unlabelled_file), rows_read=len(data.unlabelled),
                             rows_used=len(data.unlabelled))
        extra = tokenize_split({"text": data.unlabelled, "label": [IGNORE] * len(data.unlabelled)}, tokenizer,
                               recipe.data.max_length, report)
        train = datasets.concatenate_datasets([train, extra.cast(train.features)])
        texts += data.unlabelled
        task_data.report["unlabelled"] = {**report.__dict__, "skipped": 0}
        say(f"unlabelled: {len(data.unlabelled)} rows from {report.source} (labelled by the teacher only)")
    task_data.prepared |= {"train": train, "train_texts": texts, "teacher": (data.teacher_dir, data.teacher_recipe),
                           "eval_texts": list(data.labelled.splits["eval"]["text"]),
                           "eval_labels": list(data.labelled.splits["eval"]["label"])}
    task_data.train_examples = len(texts)
    return task_data


def training_arguments(recipe: Recipe, run_dir: Path):
    from transformers import TrainingArguments

    from peftkit.runs.layout import CHECKPOINT_DIR

    # the teacher_probs column must reach compute_loss, which takes it out before the forward pass
    return TrainingArguments(output_dir=str(run_dir / CHECKPOINT_DIR), remove_unused_columns=False,
                             **trainer_kwargs(recipe, run_dir))


def build_trainer(recipe: Recipe, args, model, tokenizer, data: TaskData):
    from transformers import DataCollatorWithPadding, Trainer

    teacher_dir, teacher_recipe = data.prepared["teacher"]
    probs = cached_soft_labels(Path(recipe.output_dir) / SOFT_LABELS_FILE, teacher_dir, teacher_recipe,
                               data.prepared["train_texts"], recipe.distill.teacher_batch_size)
    train = data.prepared["train"].add_column("teacher_probs", probs.tolist())
    validation = data.prepared.get(VALIDATION)
    during = validation if validation is not None else data.prepared["eval"]
    agree = teacher_agreement(probs, data.prepared["train"]["labels"])
    facts = {"teacher": str(teacher_dir), "temperature": recipe.distill.temperature, "alpha": recipe.distill.alpha,
             "soft_label_rows": len(probs), "unlabelled_rows": len(data.prepared["train_texts"]) - labelled_rows(data),
             "teacher_agrees_with_train_labels": agree}
    setup = setup_for(recipe, args, task_loss=DistillationLoss, facts=facts,
                      task_state={"distill_temperature": recipe.distill.temperature,
                                  "distill_alpha": recipe.distill.alpha})
    trainer = build_trainer_of(
        Trainer, setup,
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=during if args.eval_strategy != "no" else None,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=collator_pad_multiple(args)),
        processing_class=tokenizer,
        callbacks=run_callbacks(recipe),
        compute_metrics=head_compute_metrics(data.label_names) if validation is not None else None,
    )
    say(f"distillation: T={recipe.distill.temperature:g}, alpha={recipe.distill.alpha:g}; the teacher agrees with "
        f"{agree:.1%} of the hard training labels")
    return trainer


def labelled_rows(data: TaskData) -> int:
    return sum(1 for label in data.prepared["train"]["labels"] if label != IGNORE)


def teacher_agreement(probs, labels) -> float:
    pairs = [(int(p), y) for p, y in zip(probs.argmax(-1).tolist(), labels) if y != IGNORE]
    return sum(p == y for p, y in pairs) / max(1, len(pairs))


def training_facts(trainer) -> dict[str, Any]:
    return {"distillation": dict(trainer.facts)}


def evaluate(recipe: Recipe, trainer, data: TaskData) -> dict[str, Any]:
    """The classification metrics; then (distill.int8) the merged float and int8 students saved and measured."""
    metrics = classification.evaluate(recipe, trainer, data)
    if recipe.distill.int8 and trainer.is_world_process_zero():
        from peftkit.tasks.distillation.student import describe, export_student

        report = export_student(trainer.model, trainer.processing_class, Path(recipe.output_dir),
                                data.prepared["eval_texts"], data.prepared["eval_labels"], recipe.data.max_length)
        say(describe(report))
        metrics["export"] = {name: {k: report[name][k] for k in ("accuracy", "size_bytes", "texts_per_second")}
                             for name in ("float32", "int8")}
    return metrics


def card(run, *, merged: bool, repo_id: str, base_id: str) -> TaskCard:
    base = classification.card(run, merged=merged, repo_id=repo_id, base_id=base_id)
    teacher = (run.recipe.get("distill") or {}).get("teacher", "?")
    base.task_line = f"classification (sequence classification head), distilled from the teacher run `{teacher}`"
    return base
