"""Choosing the model on a validation split carved from the training data, never on the eval file.

With ``selection.validation_fraction`` > 0 a run holds out a seeded, stratified share of its training rows,
evaluates on it during training (accuracy and macro F1 for classification tasks: the head's argmax through
``compute_metrics``, or label scoring for generative_classification), keeps the best checkpoint
(``load_best_model_at_end``, set by the recipe loader), stops early when the metric stops improving, and then
evaluates the chosen checkpoint once on the eval file. ``metrics.json`` says which split chose the model.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe
from peftkit.recipe.loading import selection_metric

VALIDATION = "validation"


def enabled(recipe: Recipe) -> bool:
    return recipe.selection.enabled


def carve_validation(splits: dict[str, dict[str, list]], reports: dict, selection, seed: int, report_class: type,
                     unused: dict[str, list] | None = None) -> None:
    """Put the validation split in ``splits["validation"]`` (in place), seeded and stratified by the "label"
    column when there is one. From the training rows (``selection.validation_from: training_rows``, training
    keeps the rest) or from ``unused``, the training file's rows outside data.max_train_samples' sample
    (``unused_rows``: training keeps every sampled row). Rows keep their file order in both parts."""
    if not selection.enabled:
        return
    train = splits["train"]
    n_train = len(next(iter(train.values())))
    from_unused = selection.validation_from == "unused_rows"
    pool = unused if from_unused else train
    if from_unused and not pool:
        raise PeftkitError(f"selection.validation_from: unused_rows: {reports['train'].source} has no rows outside "
                           f"the {n_train:,}-row training sample (data.max_train_samples); lower "
                           "data.max_train_samples or use selection.validation_from: training_rows")
    eligible = long_enough(pool, selection.validation_min_words)
    n_pool = len(eligible)
    wanted = selection.validation_rows or round(selection.validation_fraction * n_train)
    if selection.validation_min_words and wanted > n_pool:
        raise PeftkitError(f"selection.validation_min_words {selection.validation_min_words}: only {n_pool:,} rows "
                           f"of {reports['train'].source} that validation may draw from have that many words, "
                           f"{wanted:,} wanted: lower selection.validation_min_words or the validation size")
    if from_unused and wanted > n_pool:
        raise PeftkitError(f"selection asks for {wanted:,} validation rows but only {n_pool:,} training-file rows lie "
                           "outside the training sample: lower selection.validation_rows (or the fraction) or "
                           "data.max_train_samples")
    if not from_unused and wanted >= n_train:
        raise PeftkitError(f"selection.validation_rows {wanted:,} would leave no training rows (the training split "
                           f"has {n_train:,}): lower it")
    exact = from_unused or bool(selection.validation_min_words)
    fraction = selection.validation_fraction if selection.validation_rows is None and not exact else wanted / n_pool
    pick = lambda rows, idx: {k: [v[i] for i in idx] for k, v in rows.items()}  # noqa: E731
    candidates = pick(pool, eligible) if selection.validation_min_words else pool
    chosen, how = pick_rows(candidates, fraction, wanted if exact else None, random.Random(seed))
    held = {eligible[i] for i in chosen}
    if selection.validation_min_words:
        how += f", rows of at least {selection.validation_min_words} words"
    splits[VALIDATION] = pick(pool, sorted(held))
    if from_unused:
        where = f"{len(held):,} rows outside the {n_train:,}-row training sample"
    else:
        splits["train"] = pick(train, [i for i in range(n_train) if i not in held])
        reports["train"].rows_used = n_train - len(held)
        lost = set(train.get("label", [])) - set(splits["train"].get("label", []))
        if lost:
            raise PeftkitError(f"the validation split took every training row of class id(s) {sorted(lost)}: lower "
                               "selection.validation_rows / validation_fraction or selection.validation_min_words")
        where = (f"{selection.validation_fraction:.0%} of the training rows" if selection.validation_rows is None
                 else f"{len(held):,} of the training rows")
    reports[VALIDATION] = report_class(
        source=f"{reports['train'].source} (validation: {where}, {how}, seed {seed})",
        rows_read=len(held), rows_used=len(held))


def long_enough(rows: dict[str, list], min_words: int | None) -> list[int]:
    """Indices of the rows validation may draw from: all, or those whose "text" has at least min_words words."""
    n = len(next(iter(rows.values())))
    if not min_words:
        return list(range(n))
    return [i for i, text in enumerate(rows["text"]) if len(str(text).split()) >= min_words]


def pick_rows(rows: dict[str, list], fraction: float, exact: int | None, rng: random.Random) -> tuple[list[int], str]:
    """Indices of a seeded share of ``rows``: each class gives round(fraction x its rows), at least one and never
    all of them (``exact``: then trimmed or topped up at random to exactly that many)."""
    n = len(next(iter(rows.values())))
    labels = rows.get("label")
    keep = 1 if exact is None else 0  # carved from the training rows: leave each class (or the split) one row
    if labels is None:
        order = list(range(n))
        rng.shuffle(order)
        size = max(1, int(n * fraction)) if exact is None else exact
        return order[:min(size, n - keep)], "random rows"
    chosen: list[int] = []
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        take = min(max(1, round(len(members) * fraction)), len(members) - keep)
        chosen += members[:take]
    if exact is not None and len(chosen) != exact:
        taken = set(chosen)
        rest = [i for i in range(n) if i not in taken]
        rng.shuffle(chosen)
        rng.shuffle(rest)
        chosen = chosen[:exact] + rest[:max(0, exact - len(chosen))]
    return chosen, "stratified by label"


def head_compute_metrics(label_names: list[str]):
    """compute_metrics for a classification head: accuracy and macro F1 of the argmax (the Trainer adds eval_)."""
    from peftkit.evaluation.metrics import classification_metrics

    def compute(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        metrics = classification_metrics(prediction.label_ids.tolist(), logits.argmax(-1).tolist(), label_names)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    return compute


class LabelScoringEvaluation:
    """Trainer mixin: evaluate() scores the label words on the validation split (generative_classification):
    eval_accuracy and eval_macro_f1, as the classification head reports them; eval_loss too when loss selects.

    Every process scores the whole (small) validation split, so early stopping decides the same on every rank.
    """

    validation_scoring: tuple | None = None  # (encoder, causal data, chat, batch size, LabelScoring)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        if self.validation_scoring is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        from peftkit.evaluation.causal import evaluate_generative

        encoder, causal, chat, batch_size, scoring = self.validation_scoring
        metrics: dict[str, float] = {}
        if self.args.metric_for_best_model in ("loss", "eval_loss"):
            metrics |= super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        scored = evaluate_generative(self.model, encoder, causal, chat, batch_size, split=VALIDATION,
                                     scoring=scoring)
        metrics |= {f"{metric_key_prefix}_accuracy": scored["accuracy"],
                    f"{metric_key_prefix}_macro_f1": scored["macro_f1"],
                    f"{metric_key_prefix}_seconds": scored["eval_seconds"]}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def selection_callbacks(recipe: Recipe) -> list:
    """Early stopping on the validation metric, when the recipe has a validation split and a patience."""
    if not enabled(recipe) or recipe.selection.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=recipe.selection.early_stopping_patience,
                                  early_stopping_threshold=recipe.selection.early_stopping_threshold)]


def selection_report(recipe: Recipe, trainer, validation_rows: int, eval_source: str | None) -> dict[str, Any]:
    """metrics.json's ``selection``: which split chose the model, how, and that the eval file was read once."""
    if not enabled(recipe):
        return {"split": None, "model": "the last training step (no validation split: selection.validation_fraction 0)",
                "eval_file_used_for": "this evaluation only"}
    state = trainer.state
    metric = selection_metric(recipe.selection, recipe.task)
    history = [entry for entry in state.log_history if f"eval_{metric}" in entry]
    best = state.best_model_checkpoint
    return {
        "split": VALIDATION,
        "rows": validation_rows,
        "from": recipe.selection.validation_from,
        "how": f"{validation_origin(recipe.selection)}, stratified by label, seed {recipe.seed}; never the eval file",
        "metric": metric,
        "best_checkpoint": Path(best).name if best else None,
        f"best_validation_{metric}": state.best_metric,
        "evaluations": [{"step": e["step"], metric: e[f"eval_{metric}"]} for e in history],
        "early_stopped": bool(state.max_steps and state.global_step < state.max_steps),
        "eval_file_used_for": "one evaluation of the selected checkpoint (this one)",
        "eval_file": eval_source,
    }


def validation_origin(selection) -> str:
    if selection.validation_from == "unused_rows":
        origin = "training-file rows outside the training sample (data.max_train_samples)"
    elif selection.validation_rows is not None:
        origin = f"{selection.validation_rows} of the training rows"
    else:
        origin = f"{selection.validation_fraction:.0%} of the training rows"
    if selection.validation_min_words:
        origin += f" of at least {selection.validation_min_words} words"
    return origin


def describe(report: dict[str, Any]) -> str:
    """One line for the console."""
    if report.get("split") is None:
        return "model: the last training step (no validation split); evaluated once on the eval file"
    metric = report["metric"]
    best = report.get(f"best_validation_{metric}")
    stopped = ", stopped early" if report["early_stopped"] else ""
    origin = "outside the training sample" if report.get("from") == "unused_rows" else "carved from train"
    return (f"model selected on the validation split ({report['rows']} rows {origin}): "
            f"{report['best_checkpoint']} with validation {metric} "
            f"{best if best is None else round(best, 4)}{stopped}; evaluated once on the eval file "
            f"{report.get('eval_file') or ''}".rstrip())


def validation_rows(data) -> int:
    """Rows in a run's validation split (0 without one), from its data report."""
    return int((data.report.get(VALIDATION) or {}).get("rows_used", 0))
