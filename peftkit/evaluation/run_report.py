"""`report.html` of one classification run (or of one `peftkit evaluate --data` folder inside it).

Everything comes from the files the run wrote, so `peftkit report RUN` rebuilds the same page later:
metrics.json (headline, per class, confusion matrix), confusion_matrix.png, eval_predictions.jsonl (the
misclassified texts and the reliability diagram), training_log.json (curves) and data_report.json.
Memory and size stay bounded at any number of classes: the heatmap is the bounded PNG, the per-class table has K
rows, and the misclassified texts are capped per confusion pair and in pairs shown.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_text_atomic
from peftkit.errors import PeftkitError
from peftkit.evaluation.confusion import plot_confusion_matrix, top_confusions
from peftkit.evaluation.html_page import (
    cards,
    esc,
    note,
    number_cell,
    page,
    png_figure,
    png_file,
    pyplot,
    section,
    table,
    text_cell,
)
from peftkit.evaluation.predictions import read_predictions, reliability
from peftkit.recipe.task_traits import DEFAULT_TASK
from peftkit.runs.layout import (
    CONFUSION_MATRIX_FILE,
    DATA_REPORT_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    RUN_REPORT_FILE,
    TRAINING_LOG_FILE,
)

PAIRS_LISTED = 20
PAIRS_WITH_EXAMPLES = 25
EXAMPLES_PER_PAIR = 5
PAIRS_OPEN = 3
SECTIONS = ("headline", "per-class", "confusion", "errors", "curves", "reliability", "data")
"""The id of every section of a run's report, in page order (the browser test checks each is there)."""


def write_run_report(folder: str | Path) -> Path:
    """Write FOLDER/report.html from the run's files, atomically; returns its path."""
    folder = Path(folder)
    path = folder / RUN_REPORT_FILE
    write_text_atomic(path, run_report_html(folder))
    return path


def run_report_html(folder: Path) -> str:
    metrics = read_classification_metrics(folder)
    root = run_root(folder)
    records = read_predictions(folder)
    subtitle = describe_run(folder, root, metrics)
    return page(f"peftkit report: {folder.resolve().name}", subtitle, [
        headline_section(metrics, records),
        per_class_section(metrics),
        confusion_section(folder, metrics),
        errors_section(records),
        curves_section(root),
        reliability_section(records),
        data_section(root, folder),
    ])


def read_classification_metrics(folder: Path) -> dict[str, Any]:
    path = folder / METRICS_FILE
    if not path.is_file():
        raise PeftkitError(f"{folder}: no {METRICS_FILE}; give a run folder whose train (or evaluate) finished")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PeftkitError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(metrics, dict) or "confusion_matrix" not in metrics or "labels" not in metrics:
        raise PeftkitError(f"{path}: not a classification run's metrics (no confusion_matrix); the report covers "
                           "classification and generative_classification runs")
    return metrics


def run_root(folder: Path) -> Path:
    """The run folder that holds `folder`: itself, or the run above an evaluate --data or multitask task folder."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / RECIPE_FILE).is_file():
            return candidate
    return folder


def describe_run(folder: Path, root: Path, metrics: dict[str, Any]) -> str:
    recipe = read_recipe_fields(root)
    parts = [f"task {recipe.get('task', DEFAULT_TASK)}", f"model {recipe.get('model', '?')}",
             f"evaluated on {metrics.get('data_file', '?')}",
             f"{metrics.get('num_examples', '?')} examples", f"{len(metrics['labels'])} classes"]
    if root != folder:
        parts.append(f"run folder {root.resolve()}")
    return " · ".join(parts) + f" · written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"


def read_recipe_fields(root: Path) -> dict[str, str]:
    import yaml

    try:
        raw = yaml.safe_load((root / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    return {"task": str(raw.get("task", DEFAULT_TASK)), "model": str(model.get("name_or_path", "?"))}


def headline_section(metrics: dict[str, Any], records: list[dict] | None) -> str:
    items = [("accuracy", f"{metrics['accuracy']:.4f}"), ("macro F1", f"{metrics['macro_f1']:.4f}"),
             ("macro precision", f"{metrics['macro_precision']:.4f}"),
             ("macro recall", f"{metrics['macro_recall']:.4f}"), ("examples", str(metrics["num_examples"])),
             ("classes", str(len(metrics["labels"])))]
    if records:
        items.append(("calibration error (ECE)", f"{reliability(records)['ece']:.4f}"))
    calibration = metrics.get("calibration") or {}
    if "eval_ece_after" in calibration:
        items.append((f"ECE after temperature {calibration['temperature']:.2f}",
                      f"{calibration['eval_ece_after']:.4f}"))
    body = [cards(items)]
    if metrics.get("never_predicted"):
        body.append(note(f"never predicted: {', '.join(metrics['never_predicted'])}"))
    selection = metrics.get("selection")
    if isinstance(selection, dict) and selection.get("split"):
        body.append(note(f"model chosen on the {selection['split']} split ({selection.get('rows', '?')} rows) by "
                         f"{selection.get('metric', '?')}; the eval file was used for this evaluation only"))
    elif isinstance(selection, dict) and selection.get("model"):
        body.append(note(f"model: {selection['model']}"))
    return section("headline", "Headline metrics", *body)


def per_class_section(metrics: dict[str, Any]) -> str:
    rows = []
    for name in metrics["labels"]:
        c = metrics["per_class"][name]
        rows.append([text_cell(name), number_cell(c["precision"]), number_cell(c["recall"]), number_cell(c["f1"]),
                     number_cell(c["support"])])
    return section("per-class", "Per class",
                   note("Click a column heading to sort (again to reverse)."),
                   '<div class="scroll">' + table(["class", "precision", "recall", "F1", "support"], rows,
                                                  sortable=True) + "</div>")


def confusion_section(folder: Path, metrics: dict[str, Any]) -> str:
    png = folder / CONFUSION_MATRIX_FILE
    if not png.is_file():
        plot_confusion_matrix(metrics, png)
    pairs = top_confusions(metrics["confusion_matrix"], metrics["labels"], PAIRS_LISTED)
    rows = [[text_cell(p["true"]), text_cell(p["predicted"]), number_cell(p["count"]),
             number_cell(p["share_of_true"], 3)] for p in pairs]
    listed = (table(["true", "predicted", "examples", "share of the true class"], rows, sortable=True) if rows
              else note("No confusions: every example is on the diagonal."))
    return section("confusion", "Confusion matrix", png_file(png, "confusion matrix"),
                   f"<h3>The {len(pairs)} most-confused pairs</h3>", listed)


def errors_section(records: list[dict] | None) -> str:
    if records is None:
        return section("errors", "Misclassified examples",
                       note("No eval_predictions.jsonl in this folder (a run from before peftkit saved them); "
                            "`peftkit evaluate RUN` writes it."))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["label"] != r["predicted"]:
            groups[(r["label"], r["predicted"])].append(r)
    wrong = sum(len(g) for g in groups.values())
    if not wrong:
        return section("errors", "Misclassified examples", note(f"None: all {len(records)} examples are right."))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    shown = ordered[:PAIRS_WITH_EXAMPLES]
    head = note(f"{wrong} of {len(records)} examples are wrong, in {len(groups)} confusion pairs; the "
                f"{len(shown)} largest pairs below, at most {EXAMPLES_PER_PAIR} texts each (the most confident "
                "mistakes first).")
    blocks = [pair_block(true, predicted, items, open_=i < PAIRS_OPEN)
              for i, ((true, predicted), items) in enumerate(shown)]
    return section("errors", "Misclassified examples", head, *blocks)


def pair_block(true: str, predicted: str, items: list[dict], open_: bool) -> str:
    items = sorted(items, key=lambda r: -r["top"][0][1])
    rows = [[text_cell(r["text"]), text_cell(r["label"]), text_cell(r["predicted"]), text_cell(top_two(r))]
            for r in items[:EXAMPLES_PER_PAIR]]
    showing = f" (showing {min(len(items), EXAMPLES_PER_PAIR)})" if len(items) > EXAMPLES_PER_PAIR else ""
    return (f"<details{' open' if open_ else ''}><summary>true <b>{esc(true)}</b> → predicted "
            f"<b>{esc(predicted)}</b>: {len(items)} example{'s' if len(items) != 1 else ''}{showing}</summary>"
            + table(["text", "true", "predicted", "top-2 probabilities"], rows) + "</details>")


def top_two(record: dict) -> str:
    return ", ".join(f"{name} {p:.3f}" for name, p in record["top"][:2])


def curves_section(root: Path) -> str:
    history = read_json(root / TRAINING_LOG_FILE)
    if not isinstance(history, list) or not history:
        return section("curves", "Training and validation curves",
                       note(f"No {TRAINING_LOG_FILE} in {root} (a run from before peftkit saved its log history)."))
    figure = curves_figure(history)
    if figure is None:
        return section("curves", "Training and validation curves", note("The log history has no logged losses."))
    return section("curves", "Training and validation curves", png_figure(figure, "training and validation curves"))


def curves_figure(history: list[dict]):
    """Left: training loss (and validation loss) by step; right: the validation metrics, or the learning rate."""
    def series(key: str) -> tuple[list, list]:
        points = [(e["step"], e[key]) for e in history if isinstance(e, dict) and key in e and "step" in e]
        return [p[0] for p in points], [p[1] for p in points]

    train, validation = series("loss"), series("eval_loss")
    if not train[0] and not validation[0]:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.plot(*train, label="training loss", color="#1f77b4")
    if validation[0]:
        left.plot(*validation, "o-", label="validation loss", color="#d62728")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    metrics = [(key, series(key)) for key in ("eval_accuracy", "eval_macro_f1")]
    metrics = [(key, s) for key, s in metrics if s[0]]
    for key, s in metrics:
        right.plot(*s, "o-", label=key.removeprefix("eval_").replace("_", " ") + " (validation)")
    if metrics:
        right.set_ylabel("validation metric")
    else:
        right.plot(*series("learning_rate"), color="#555", label="learning rate")
        right.set_ylabel("learning rate")
    right.set_xlabel("step")
    right.legend()
    fig.tight_layout()
    return fig


def reliability_section(records: list[dict] | None) -> str:
    if not records:
        return section("reliability", "Reliability diagram", note("No eval predictions saved with this run."))
    table_ = reliability(records)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    filled = [b for b in table_["bins"] if b["count"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=0.09,
           color="#4c78a8", edgecolor="#2a4a6a", label="accuracy in the bin")
    ax.plot([0, 1], [0, 1], "--", color="#888", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"expected calibration error {table_['ece']:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    rows = [[text_cell(f"{b['low']:.1f}-{b['high']:.1f}"), number_cell(b["count"]), number_cell(b["confidence"], 3),
             number_cell(b["accuracy"], 3)] for b in filled]
    return section("reliability", "Reliability diagram", png_figure(fig, "reliability diagram"),
                   table(["confidence", "examples", "mean confidence", "accuracy"], rows))


def data_section(root: Path, folder: Path) -> str:
    report = read_json(root / DATA_REPORT_FILE)
    if isinstance(report, dict) and isinstance(report.get(folder.name), dict) and folder != root:
        report = report[folder.name]  # a multitask run's tasks/NAME folder: that task's splits
    if not isinstance(report, dict) or not report:
        return section("data", "Data report", note(f"No {DATA_REPORT_FILE} in {root}."))
    splits = {name: facts for name, facts in report.items() if isinstance(facts, dict)}
    keys = [k for k in ("source", "rows_read", "rows_used", "skipped", "empty_text", "unknown_label", "truncated",
                        "text_shortened") if any(k in facts for facts in splits.values())]
    rows = [[text_cell(name)] + [number_cell(facts[k]) if isinstance(facts.get(k), int) else text_cell(facts.get(k, ""))
                                 for k in keys] for name, facts in splits.items()]
    bad = [line for facts in splits.values() for line in facts.get("examples_of_bad_rows", [])[:5]]
    body = [table(["split", *(k.replace("_", " ") for k in keys)], rows)]
    if bad:
        body.append("<h3>Examples of skipped rows</h3><ul>" + "".join(f"<li>{esc(b)}</li>" for b in bad) + "</ul>")
    return section("data", "Data report", *body)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
