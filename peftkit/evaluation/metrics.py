"""Classification metrics (scikit-learn) and their files: metrics.json, a readable report, a confusion-matrix PNG
(peftkit/evaluation/confusion.py) and the eval predictions (peftkit/evaluation/predictions.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_text_atomic
from peftkit.evaluation.calibration import CALIBRATION_FILE
from peftkit.evaluation.confusion import FULL_MATRIX_MAX, plot_confusion_matrix, top_confusions
from peftkit.evaluation.predictions import PREDICTIONS_KEY, reliability, write_predictions
from peftkit.runs.layout import CONFUSION_MATRIX_FILE, EVAL_REPORT_FILE, METRICS_FILE

WORST_SHOWN = 10
PAIRS_SHOWN = 10
PAIRS_IN_FILE = 30
NAMES_IN_WARNING = 20



def evaluation_dir(run_dir: Path, data_file: str | None) -> Path:
    """Where `peftkit evaluate` writes: the run folder for its own eval split; for --data FILE a folder named by
    the file's stem and a short hash of its resolved path, so two different files named test.csv never overwrite
    each other's results (evaluating the same file again replaces its own)."""
    import hashlib

    from peftkit.data.files import resolve_data_path

    if data_file is None:
        return Path(run_dir)
    path = resolve_data_path(data_file)
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
    return Path(run_dir) / f"eval-{path.stem}-{digest}"


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix (rows: true, columns: predicted)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=ids, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "labels": list(label_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "num_examples": len(y_true),
        "never_predicted": never_predicted(y_pred, label_names),
    }


def never_predicted(y_pred: Sequence[int], label_names: list[str]) -> list[str]:
    """Classes the model did not predict for a single evaluated row (their F1 is 0 whatever their support)."""
    seen = set(int(p) for p in y_pred)
    return [name for i, name in enumerate(label_names) if i not in seen]


def never_predicted_warning(metrics: dict[str, Any]) -> str | None:
    missing = metrics.get("never_predicted")
    if missing is None and "confusion_matrix" in metrics:  # metrics.json written before this key existed
        matrix = metrics["confusion_matrix"]
        missing = [n for j, n in enumerate(metrics["labels"]) if not sum(row[j] for row in matrix)]
    if not missing:
        return None
    names = ", ".join(missing[:NAMES_IN_WARNING]) + (f" and {len(missing) - NAMES_IN_WARNING} more"
                                                     if len(missing) > NAMES_IN_WARNING else "")
    return (f"WARNING: never predicted: {names} (F1 0.00); with imbalanced classes try "
            "imbalance.strategy: class_weights or balanced_sampling")


def format_metrics(metrics: dict[str, Any], every_class: bool = False) -> str:
    """The readable report: headline metrics, then for a few classes (FULL_MATRIX_MAX) every class and the full
    matrix; for more, the worst classes and the most-confused pairs (`every_class`: all classes' rows, the file's
    version), never a K x K table. The whole matrix stays in metrics.json."""
    names = metrics["labels"]
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro F1 {metrics['macro_f1']:.4f}   "
        f"macro precision {metrics['macro_precision']:.4f}   macro recall {metrics['macro_recall']:.4f}   "
        f"({metrics['num_examples']} examples, {len(names)} classes)",
        "",
    ]
    if len(names) <= FULL_MATRIX_MAX:
        lines += class_table(metrics, names) + ["", *matrix_table(metrics)]
    else:
        shown = names if every_class else worst_classes(metrics, WORST_SHOWN)
        title = "every class" if every_class else f"the {len(shown)} classes with the lowest F1"
        pairs = top_confusions(metrics["confusion_matrix"], names, PAIRS_IN_FILE if every_class else PAIRS_SHOWN)
        lines += [f"{title} (of {len(names)}):", *class_table(metrics, shown), "",
                  *pair_lines(pairs), "",
                  f"all {len(names)} classes: {'' if every_class else 'eval_report.txt, '}report.html (with the "
                  "confusion heatmap and the misclassified texts); the full confusion matrix: metrics.json"]
    warning = never_predicted_warning(metrics)
    if warning:
        lines += ["", warning]
    return "\n".join(lines)


def worst_classes(metrics: dict[str, Any], n: int) -> list[str]:
    """The n classes with the lowest F1 (ties: more support first, then label order)."""
    per_class = metrics["per_class"]
    ranked = sorted(enumerate(metrics["labels"]), key=lambda p: (per_class[p[1]]["f1"], -per_class[p[1]]["support"],
                                                                p[0]))
    return [name for _, name in ranked[:n]]


def class_table(metrics: dict[str, Any], names: list[str]) -> list[str]:
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        c = metrics["per_class"][name]
        lines.append(f"{name:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8d}")
    return lines


def matrix_table(metrics: dict[str, Any]) -> list[str]:
    names = metrics["labels"]
    width = max(12, *(len(n) for n in names))
    lines = ["confusion matrix (rows: true, columns: predicted)",
             " " * width + " " + " ".join(f"{n[:8]:>8}" for n in names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>8d}" for v in row))
    return lines


def pair_lines(pairs: list[dict[str, Any]]) -> list[str]:
    if not pairs:
        return ["no confusions: every example is on the diagonal"]
    lines = ["most-confused pairs (true -> predicted: examples, share of the true class):"]
    lines += [f"  {p['true']} -> {p['predicted']}: {p['count']} ({p['share_of_true']:.0%})" for p in pairs]
    return lines


def write_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> None:
    """metrics.json, eval_report.txt, confusion_matrix.png and, when the metrics carry them, the predictions
    (moved out of the dict to eval_predictions.jsonl: metrics.json stays small), each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = metrics.pop(PREDICTIONS_KEY, None)
    if records is not None:
        write_predictions(out_dir, records)
        # the ECE of the probabilities the predictions file holds (the report's reliability diagram)
        metrics.setdefault("calibration", {})["ece"] = reliability(records)["ece"]
    if "temperature" in metrics.get("calibration", {}):  # saved with the run for the inference paths
        write_json_atomic(out_dir / CALIBRATION_FILE, metrics["calibration"])
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_text_atomic(out_dir / EVAL_REPORT_FILE, format_metrics(metrics, every_class=True) + "\n")
    plot_confusion_matrix(metrics, out_dir / CONFUSION_MATRIX_FILE)
