"""Pieces of model-card text that several tasks share: metric tables, label limits, number formatting."""

from __future__ import annotations

from typing import Any

from peftkit.evaluation.confusion import FULL_MATRIX_MAX, top_confusions

# (metrics.json key, model-index metric type, pretty name, metric args)
AGGREGATE_METRICS = (
    ("accuracy", "accuracy", "Accuracy", None),
    ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
    ("macro_precision", "precision", "Macro Precision", {"average": "macro"}),
    ("macro_recall", "recall", "Macro Recall", {"average": "macro"}),
)


def classification_evaluation(run, aggregate=AGGREGATE_METRICS, how: str = "") -> str:
    """The evaluation section of a classifier: aggregate metrics, per class, confusion matrix."""
    metrics = run.metrics
    lines = [*evaluation_intro(run, how), *metric_table(metrics, aggregate), "", "Per class:", "",
             "| Label | Precision | Recall | F1 | Support |", "| --- | --- | --- | --- | --- |"]
    for label, scores in (metrics.get("per_class") or {}).items():
        lines.append(
            f"| {cell(label)} | {fmt(scores.get('precision'))} | {fmt(scores.get('recall'))} "
            f"| {fmt(scores.get('f1'))} | {scores.get('support', '')} |"
        )
    matrix = metrics.get("confusion_matrix")
    labels = metrics.get("labels") or run.labels
    if matrix and len(labels) <= FULL_MATRIX_MAX:
        lines += ["", confusion_table(labels, matrix)]
    elif matrix:  # a K x K Markdown table is unreadable beyond a few classes: the pairs that matter instead
        lines += ["", confused_pairs_table(labels, matrix)]
    return "\n".join(lines)


def confused_pairs_table(labels: list[str], matrix: list[list[int]], n: int = 10) -> str:
    rows = [f"| {cell(p['true'])} | {cell(p['predicted'])} | {p['count']} | {p['share_of_true']:.0%} |"
            for p in top_confusions(matrix, labels, n)]
    return (f"The {len(rows)} most-confused pairs (the full {len(labels)} x {len(labels)} matrix is in "
            "`metrics.json`):\n\n| True label | Predicted | Examples | Share of the true class |\n"
            "| --- | --- | --- | --- |\n" + "\n".join(rows))


def evaluation_intro(run, how: str = "") -> list[str]:
    from pathlib import Path

    metrics = run.metrics
    evaluated = Path(str(metrics["data_file"])).name if metrics.get("data_file") else "the eval data"
    return [
        "## Evaluation",
        "",
        f"Measured by `peftkit` on the `{metrics.get('split', 'eval')}` split ({evaluated}, "
        f"{metrics.get('num_examples', '?')} examples) after training{how}; these are the numbers in "
        "`metrics.json` and in the `model-index` metadata above.",
        "",
    ]


def metric_table(metrics: dict[str, Any], aggregate) -> list[str]:
    return ["| Metric | Value |", "| --- | --- |",
            *[f"| {pretty} | {fmt(metrics.get(key))} |" for key, _, pretty, _ in aggregate]]


def confusion_table(labels: list[str], matrix: list[list[int]]) -> str:
    """Confusion matrix as a Markdown table: rows are true labels, columns predicted labels."""
    header = "| true \\ predicted | " + " | ".join(cell(label) for label in labels) + " |"
    rule = "| --- " * (len(labels) + 1) + "|"
    rows = [f"| {cell(label)} | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(labels, matrix)]
    return "Confusion matrix (rows: true label, columns: predicted label):\n\n" + "\n".join([header, rule, *rows])


def label_limits(run) -> list[str]:
    return [f"- The model can only output the {len(run.labels)} labels it was trained on; it has no "
            "'none of these' option."]


def is_number(value: Any) -> bool:
    """True for a real metric value (bools and missing values are not metrics)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def cell(text: Any) -> str:
    """Escape a value for a Markdown table cell (a `|` in a label would split the cell)."""
    return str(text).replace("|", "\\|")
