"""`peftkit report RUN RUN [...] --out FILE`: several classification runs side by side in one offline HTML page.

The first run is the baseline: every other run's per-class F1 is shown with its difference from it, and the eval
texts one gets right and the other wrong are listed both ways. Texts are matched by their content (repeated texts
by their order), so two runs evaluated on the same file compare even when their rows were read in another order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_text_atomic
from peftkit.errors import PeftkitError
from peftkit.evaluation.html_page import cards, esc, note, number_cell, page, section, table, text_cell
from peftkit.evaluation.predictions import read_predictions
from peftkit.evaluation.run_report import read_classification_metrics, top_two

EXAMPLES_SHOWN = 15
SECTIONS = ("runs", "per-class-f1", "disagreements")
"""The id of every section of a comparison, in page order."""


@dataclass
class ComparedRun:
    name: str
    folder: Path
    metrics: dict[str, Any]
    records: list[dict] | None


def write_comparison(folders: list[str | Path], out: str | Path) -> Path:
    runs = [load(Path(f)) for f in folders]
    names = Counter(r.name for r in runs)
    for run in runs:  # two runs named alike (runs/a/run, runs/b/run) are told apart by their full path
        if names[run.name] > 1:
            run.name = str(run.folder)
    out = Path(out)
    write_text_atomic(out, comparison_html(runs))
    return out


def load(folder: Path) -> ComparedRun:
    if not folder.is_dir():
        raise PeftkitError(f"{folder}: no such run folder")
    return ComparedRun(folder.resolve().name, folder, read_classification_metrics(folder), read_predictions(folder))


def comparison_html(runs: list[ComparedRun]) -> str:
    base = runs[0]
    subtitle = f"{len(runs)} runs; baseline (differences are against it): {base.name}"
    return page("peftkit comparison: " + " vs ".join(r.name for r in runs), subtitle,
                [runs_section(runs), per_class_section(runs), disagreements_section(runs)])


def runs_section(runs: list[ComparedRun]) -> str:
    base = runs[0].metrics
    rows = []
    for run in runs:
        m = run.metrics
        rows.append([text_cell(run.name), number_cell(m["accuracy"]),
                     number_cell(m["accuracy"] - base["accuracy"], signed=True), number_cell(m["macro_f1"]),
                     number_cell(m["macro_f1"] - base["macro_f1"], signed=True), number_cell(m["num_examples"]),
                     number_cell(len(m["labels"])), text_cell(m.get("data_file", "?")), text_cell(str(run.folder))])
    return section("runs", "Runs", table(["run", "accuracy", "Δ accuracy", "macro F1", "Δ macro F1", "examples",
                                          "classes", "eval file", "folder"], rows, sortable=True))


def per_class_section(runs: list[ComparedRun]) -> str:
    """Classes by name, as the union of the runs' label sets (a class a run lacks shows –)."""
    labels = list(dict.fromkeys(name for run in runs for name in run.metrics["labels"]))
    headers = ["class", f"support ({runs[0].name})", f"F1 {runs[0].name}"]
    for run in runs[1:]:
        headers += [f"F1 {run.name}", f"Δ {run.name}"]
    rows = []
    for name in labels:
        base = f1_of(runs[0], name)
        support = runs[0].metrics["per_class"].get(name, {}).get("support")
        cells = [text_cell(name), number_cell(support), number_cell(base)]
        for run in runs[1:]:
            f1 = f1_of(run, name)
            cells += [number_cell(f1), number_cell(None if f1 is None or base is None else f1 - base, signed=True)]
        rows.append(cells)
    return section("per-class-f1", "Per-class F1 side by side",
                   note("Click a column heading to sort: by a Δ column to see the classes a run helped or hurt most."),
                   '<div class="scroll">' + table(headers, rows, sortable=True) + "</div>")


def f1_of(run: ComparedRun, name: str) -> float | None:
    scores = run.metrics["per_class"].get(name)
    return None if scores is None else scores["f1"]


def disagreements_section(runs: list[ComparedRun]) -> str:
    base = runs[0]
    if base.records is None:
        return section("disagreements", "Examples one run gets right and another wrong",
                       note(f"{base.name} has no eval_predictions.jsonl (`peftkit evaluate {base.folder}` writes it)."))
    blocks = [pair_of_runs(base, other) for other in runs[1:]]
    return section("disagreements", "Examples one run gets right and another wrong", *blocks)


def pair_of_runs(base: ComparedRun, other: ComparedRun) -> str:
    if other.records is None:
        return note(f"{other.name} has no eval_predictions.jsonl (`peftkit evaluate {other.folder}` writes it).")
    ours, theirs = keyed(base.records), keyed(other.records)
    common = [key for key in ours if key in theirs]
    if not common:
        return note(f"{base.name} and {other.name} share no eval text: they were evaluated on different data.")
    fixed = [(ours[k], theirs[k]) for k in common if not right(ours[k]) and right(theirs[k])]
    broken = [(ours[k], theirs[k]) for k in common if right(ours[k]) and not right(theirs[k])]
    both_wrong = sum(1 for k in common if not right(ours[k]) and not right(theirs[k]))
    head = (f"<h3>{esc(base.name)} vs {esc(other.name)}</h3>"
            + cards([("texts in both", str(len(common))), (f"right only in {other.name}", str(len(fixed))),
                     (f"right only in {base.name}", str(len(broken))), ("wrong in both", str(both_wrong))]))
    return "\n".join([head, example_table(f"wrong in {base.name}, right in {other.name}", fixed, base, other),
                      example_table(f"right in {base.name}, wrong in {other.name}", broken, base, other)])


def keyed(records: list[dict]) -> dict[tuple[str, int], dict]:
    seen: Counter = Counter()
    out = {}
    for r in records:
        out[(r["text"], seen[r["text"]])] = r
        seen[r["text"]] += 1
    return out


def right(record: dict) -> bool:
    return record["label"] == record["predicted"]


def example_table(title: str, pairs: list[tuple[dict, dict]], base: ComparedRun, other: ComparedRun) -> str:
    if not pairs:
        return f"<details><summary>{esc(title)}: none</summary></details>"
    rows = [[text_cell(a["text"]), text_cell(a["label"]), text_cell(top_two(a)), text_cell(top_two(b))]
            for a, b in pairs[:EXAMPLES_SHOWN]]
    showing = f" (showing {EXAMPLES_SHOWN})" if len(pairs) > EXAMPLES_SHOWN else ""
    return (f"<details open><summary>{esc(title)}: {len(pairs)}{showing}</summary>"
            + table(["text", "true", f"{base.name}: top-2", f"{other.name}: top-2"], rows) + "</details>")
