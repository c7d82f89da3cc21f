"""Task ``classification``: a sequence-classification head on the base model, trained with the adapter.

The head is new (randomly initialised) and trained in full (``modules_to_save``); evaluation is the head's
argmax on the eval split, gathered over every process.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from peftkit.core.console import say
from peftkit.core.progress import stderr_is_terminal
from peftkit.data.classification import (
    ClassificationData,
    SplitReport,
    evaluation_file,
    format_report,
    load_classification_data,
    split_size,
    tokenize_split,
)
from peftkit.evaluation.calibration import CALIBRATION_FILE, recheck, temperature_report
from peftkit.evaluation.metrics import classification_metrics, evaluation_dir, format_metrics, write_metrics
from peftkit.evaluation.predictions import PREDICTIONS_KEY, prediction_records
from peftkit.evaluation.run_report import write_run_report
from peftkit.model.base import load_classifier, load_trained_classifier
from peftkit.model.quantize import quant_storage_for
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import SEQ_CLS
from peftkit.runs.read import label_names_of
from peftkit.tasks.cards import AGGREGATE_METRICS, classification_evaluation, fmt, label_limits
from peftkit.tasks.interface import TaskCard, TaskData
from peftkit.trainer.imbalance import decide as decide_imbalance
from peftkit.trainer.launch import disable_token_count_loss_scaling
from peftkit.trainer.loop import run_callbacks, trainer_kwargs
from peftkit.trainer.selection import VALIDATION, carve_validation, head_compute_metrics
from peftkit.trainer.speed import collator_pad_multiple
from peftkit.trainer.trainer import build_trainer as build_trainer_of
from peftkit.trainer.trainer import setup_for

PEFT_TASK_TYPE = SEQ_CLS


def read_data(recipe: Recipe) -> ClassificationData:
    """Both splits read and cleaned, the label set resolved, and the validation split carved from train when
    ``selection`` asks for one: every check of the files, no tokenizer needed."""
    data = load_classification_data(recipe.data, recipe.seed)
    carve_validation(data.splits, data.reports, recipe.selection, recipe.seed, SplitReport, data.unused_train)
    return data


def check_inputs(recipe: Recipe) -> tuple[str, int]:
    """`peftkit validate`: both splits read as training reads them; (data report, number of classes)."""
    data = load_classification_data(recipe.data, recipe.seed)
    return format_report(data), len(data.label_names)


def prepare_data(recipe: Recipe, tokenizer, data: ClassificationData) -> TaskData:
    """Every split tokenized (truncation is counted in the data report)."""
    train = tokenize_split(data.splits["train"], tokenizer, recipe.data.max_length, data.reports["train"])
    eval_ = tokenize_split(data.splits["eval"], tokenizer, recipe.data.max_length, data.reports["eval"])
    validation = (tokenize_split(data.splits[VALIDATION], tokenizer, recipe.data.max_length, data.reports[VALIDATION])
                  if VALIDATION in data.splits else None)
    say(format_report(data))
    return TaskData(label_names=data.label_names, report=data.report_dict(),
                    train_examples=split_size(data.splits["train"]), eval_examples=split_size(data.splits["eval"]),
                    prepared={"train": train, "eval": eval_, "source": data.reports["eval"].source,
                              VALIDATION: validation, "train_labels": data.splits["train"]["label"],
                              "eval_texts": list(data.splits["eval"]["text"])})


def training_arguments(recipe: Recipe, run_dir: Path):
    from transformers import TrainingArguments

    from peftkit.runs.layout import CHECKPOINT_DIR

    return TrainingArguments(output_dir=str(run_dir / CHECKPOINT_DIR), **trainer_kwargs(recipe, run_dir))


def load_model(recipe: Recipe, tokenizer, data: TaskData, source: str):
    model = load_classifier(recipe.model, recipe.quantization, data.label_names, tokenizer, source,
                            quant_storage=quant_storage_for(recipe.quantization))
    disable_token_count_loss_scaling(model)
    for head in getattr(model, "peftkit_new_heads", ()):
        say(f"the classification head ({head}) is new and trained by this run")
    return model


def build_trainer(recipe: Recipe, args, model, tokenizer, data: TaskData):
    from transformers import DataCollatorWithPadding, Trainer

    eval_during_training = args.eval_strategy != "no"
    validation = data.prepared.get(VALIDATION)
    # with a validation split, evaluation during training (and the choice of checkpoint) reads it, not the eval file
    during = validation if validation is not None else data.prepared["eval"]
    decision = decide_imbalance(recipe, data.prepared["train_labels"], data.label_names)
    say(decision.line)
    setup = setup_for(recipe, args, imbalance=True, class_weights=decision.class_weights,
                      sample_weights=decision.sample_weights, facts=decision.facts())
    return build_trainer_of(
        Trainer, setup,
        model=model,
        args=args,
        train_dataset=data.prepared["train"],
        eval_dataset=during if eval_during_training else None,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=collator_pad_multiple(args)),
        processing_class=tokenizer,
        callbacks=run_callbacks(recipe),
        compute_metrics=head_compute_metrics(data.label_names) if validation is not None else None,
    )


def training_facts(trainer) -> dict[str, Any]:
    return dict(trainer.facts)  # the imbalance decision


def evaluate(recipe: Recipe, trainer, data: TaskData) -> dict[str, Any]:
    """Metrics on the eval split; with a validation split, a temperature fitted on it and the eval split's
    calibration error before and after (metrics.json's ``calibration``)."""
    logits, labels = predict_logits(trainer, data.prepared["eval"])
    metrics = metrics_from_logits(logits, labels, data.label_names, data.prepared.get("eval_texts"))
    validation = data.prepared.get(VALIDATION)
    if validation is not None and len(validation):
        validation_logits, validation_labels = predict_logits(trainer, validation)
        metrics["calibration"] = temperature_report(validation_logits, validation_labels, logits, labels)
    metrics["data_file"] = data.prepared["source"]
    return metrics


def predict_logits(trainer, dataset):
    """(logits, labels) of every row in the dataset's order; under several processes the Trainer gathers every
    rank's share once. Rows are predicted sorted by length so each batch pads little, then put back in order."""
    import numpy as np

    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lengths.__getitem__)
    with in_dataset_order(trainer):
        output = trainer.predict(dataset.select(order), metric_key_prefix="eval")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    in_order, labels = np.empty_like(logits), np.empty_like(output.label_ids)
    in_order[order], labels[order] = logits, output.label_ids
    return in_order, labels


@contextlib.contextmanager
def in_dataset_order(trainer):
    """Predictions in the order of the dataset given. With train_sampling_strategy group_by_length (a speed
    default) the Trainer also length-groups evaluation batches in a seeded random order: labels travel with the
    rows, so metrics are right, but the rows no longer line up with their texts. One process reads sequentially;
    several take the Trainer's default (each rank a contiguous shard, gathered back in order)."""
    from torch.utils.data import SequentialSampler

    trainer._get_eval_sampler = lambda ds: SequentialSampler(ds) if trainer.args.world_size <= 1 else None
    try:
        yield
    finally:
        del trainer._get_eval_sampler  # the class's own again


def metrics_from_logits(logits, labels, label_names: list[str], texts: list[str] | None) -> dict[str, Any]:
    """The metrics; with the texts, the per-row predictions (top-3 probabilities) for eval_predictions.jsonl."""
    metrics = classification_metrics(labels.tolist(), logits.argmax(-1).tolist(), label_names)
    if texts is not None and len(texts) == len(logits):
        metrics[PREDICTIONS_KEY] = prediction_records(texts, labels.tolist(), logits, label_names)
    return metrics


def save_metrics(out_dir: Path, metrics: dict[str, Any]) -> str:
    write_metrics(out_dir, metrics)
    write_run_report(out_dir)
    return format_metrics(metrics)


def evaluate_run(run_dir: Path, recipe: Recipe, data_file: str | None = None) -> dict[str, Any]:
    """`peftkit evaluate`: the trained adapter of a run folder on its eval split or on another file."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    labels = label_names_of(run_dir)
    recipe.data.label_names = labels
    data = load_classification_data(recipe.data, recipe.seed, eval_file=evaluation_file(recipe.data, data_file))
    tokenizer, model = load_trained_classifier(run_dir, recipe.model, recipe.quantization, labels)
    eval_ds = tokenize_split(data.splits["eval"], tokenizer, recipe.data.max_length, data.reports["eval"])
    print(format_report(data), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=recipe.evaluate.batch_size,
                                 report_to=[], disable_tqdm=not stderr_is_terminal())
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer)
        logits, gold = predict_logits(trainer, eval_ds)
    metrics = metrics_from_logits(logits, gold, labels, data.splits["eval"]["text"])
    metrics["data_file"] = data.reports["eval"].source
    saved = read_json_if_any(run_dir / CALIBRATION_FILE)
    if isinstance(saved, dict) and "temperature" in saved:  # fitted at training time, measured on this data
        metrics["calibration"] = recheck(saved, logits, gold, metrics["data_file"])
    out_dir = evaluation_dir(run_dir, data_file)
    if trainer.is_world_process_zero():
        print(save_metrics(out_dir, metrics), flush=True)
        print(f"written to {out_dir}", flush=True)
    return metrics


def read_json_if_any(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def card(run, *, merged: bool, repo_id: str, base_id: str) -> TaskCard:
    labels = ", ".join(f"`{label}`" for label in run.labels)
    return TaskCard(
        pipeline_tag="text-classification",
        what=f"**text classification** into {len(run.labels)} classes ({labels})",
        task_line="classification (sequence classification head)",
        headline=classification_headline(run),
        evaluation=classification_evaluation(run, AGGREGATE_METRICS),
        usage=usage(run, merged=merged, repo_id=repo_id, base_id=base_id),
        limits=label_limits(run),
        metrics=AGGREGATE_METRICS,
    )


def classification_headline(run) -> str:
    return (f"**Eval accuracy:** {fmt(run.metrics.get('accuracy'))}, macro F1: {fmt(run.metrics.get('macro_f1'))} "
            f"(on {run.metrics.get('num_examples', '?')} evaluation examples)")


def usage(run, *, merged: bool, repo_id: str, base_id: str) -> str:
    if merged:
        return (
            "## How to use\n\n"
            "The adapter is merged into the weights, so this loads with plain `transformers` "
            "(no `peft` needed); the label names are in the config.\n\n"
            "```python\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            'classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)\n'
            'print(classifier("Your text here"))\n'
            "```"
        )
    id2label = dict(enumerate(run.labels))
    label2id = {label: i for i, label in id2label.items()}
    head_kwargs = f"num_labels={len(id2label)},\n    id2label={id2label!r},\n    label2id={label2id!r},"
    return (
        "## How to use\n\n"
        f"This is a PEFT adapter: `peft` downloads the base model (`{base_id}`) and applies it. The "
        "classification head is stored in the adapter, so pass the label set when loading (a size "
        "mismatch error means it was left out); a warning that `score.weight` is newly initialized "
        "is expected, the adapter then restores it.\n\n"
        "```python\n"
        "from peft import AutoPeftModelForSequenceClassification\n"
        "from transformers import AutoTokenizer\n\n"
        "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
        f'    "{repo_id}",\n    {head_kwargs}\n)\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        "model.config.pad_token_id = tokenizer.pad_token_id\n"
        "```\n\n"
        "Or on a base model you already loaded:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification\n\n"
        "base = AutoModelForSequenceClassification.from_pretrained(\n"
        f'    "{base_id}",\n    {head_kwargs}\n)\n'
        f'model = PeftModel.from_pretrained(base, "{repo_id}")\n'
        "```"
    )
