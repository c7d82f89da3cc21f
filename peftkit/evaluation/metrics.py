"""Classification metrics (scikit-learn) and their files: metrics.json, a readable report, a confusion-matrix PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_text_atomic
from peftkit.runs.layout import CONFUSION_MATRIX_FILE, EVAL_REPORT_FILE, METRICS_FILE


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
    return (f"WARNING: never predicted: {', '.join(missing)} (F1 0.00); with imbalanced classes try "
            "imbalance.strategy: class_weights or balanced_sampling")


def format_metrics(metrics: dict[str, Any]) -> str:
    names = metrics["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro F1 {metrics['macro_f1']:.4f}   "
        f"macro precision {metrics['macro_precision']:.4f}   macro recall {metrics['macro_recall']:.4f}   "
        f"({metrics['num_examples']} examples)",
        "",
        f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    for name in names:
        c = metrics["per_class"][name]
        lines.append(f"{name:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + " " + " ".join(f"{n[:8]:>8}" for n in names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>8d}" for v in row))
    warning = never_predicted_warning(metrics)
    if warning:
        lines += ["", warning]
    return "\n".join(lines)


def write_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> None:
    """metrics.json, eval_report.txt and confusion_matrix.png, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_text_atomic(out_dir / EVAL_REPORT_FILE, format_metrics(metrics) + "\n")
    plot_confusion_matrix(metrics, out_dir / CONFUSION_MATRIX_FILE)


def plot_confusion_matrix(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(metrics["labels"])
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n))
    ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=metrics["labels"]).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
