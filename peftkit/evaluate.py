"""Classification metrics (scikit-learn) and their files: metrics.json, a readable report, a confusion-matrix PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from peftkit.io import write_json_atomic, write_text_atomic
from peftkit.recipe import CAUSAL_TASKS

METRICS_FILE = "metrics.json"
REPORT_FILE = "eval_report.txt"
CONFUSION_PNG = "confusion_matrix.png"


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
    }


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
    return "\n".join(lines)


def write_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> None:
    """metrics.json, eval_report.txt and confusion_matrix.png, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_text_atomic(out_dir / REPORT_FILE, format_metrics(metrics) + "\n")
    plot_confusion_matrix(metrics, out_dir / CONFUSION_PNG)


def plot_confusion_matrix(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    import numpy as np

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


def evaluate_run(run_dir: str | Path, data_file: str | None = None) -> dict[str, Any]:
    """`peftkit evaluate`: the trained adapter of a run folder on its eval split or on another file."""
    import tempfile

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peftkit.data import evaluation_file, format_report, load_classification_data, tokenize_split
    from peftkit.model import load_trained_classifier
    from peftkit.progress import stderr_is_terminal
    from peftkit.runfolder import evaluation_dir, label_names_of, load_run
    from peftkit.train import evaluate_with_trainer

    run_dir, recipe = load_run(run_dir)
    if recipe.task in CAUSAL_TASKS:  # scored by the causal LM itself, not a classification head
        from peftkit.generative import evaluate_causal_run

        return evaluate_causal_run(run_dir, recipe, data_file)
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
        metrics = evaluate_with_trainer(trainer, eval_ds, labels)
    metrics["data_file"] = data.reports["eval"].source
    out_dir = evaluation_dir(run_dir, data_file)
    if trainer.is_world_process_zero():
        write_metrics(out_dir, metrics)
        print(format_metrics(metrics), flush=True)
        print(f"written to {out_dir}", flush=True)
    return metrics

