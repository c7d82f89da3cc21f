"""Data: read train/eval splits, map labels to ids, count and report bad rows, tokenize.

Everything here runs before a model is loaded, so a wrong column or label stops the run in seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftkit.data.files import check_columns, read_hub_split, read_table
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection

SHOWN_BAD_ROWS = 5
LARGE_SPLIT = 20000
"""Splits of at least this many rows show progress while they are tokenized (peftkit/core/progress.py)."""
TOKENIZE_CHUNK = 2000
"""Data files shipped inside the peftkit package (peftkit/defaults/data/): ``builtin:sst2/train_4k.tsv``. They
resolve to the installed package from any folder, so the built-in quickstart runs on a bare clone."""


@dataclass
class SplitReport:
    """What happened to one split on its way to the model: nothing is dropped silently."""

    source: str
    rows_read: int = 0
    rows_used: int = 0
    empty_text: int = 0
    unknown_label: int = 0
    truncated: int = 0
    examples_of_bad_rows: list[str] = field(default_factory=list)

    def note_bad(self, row_number: int, reason: str, row: dict[str, Any]) -> None:
        if len(self.examples_of_bad_rows) < SHOWN_BAD_ROWS:
            self.examples_of_bad_rows.append(f"row {row_number}: {reason}: {json.dumps(row, ensure_ascii=False)[:200]}")

    @property
    def skipped(self) -> int:
        return self.empty_text + self.unknown_label


@dataclass
class ClassificationData:
    """Texts and label ids per split, the label names, and what the loading did."""

    label_names: list[str]
    splits: dict[str, dict[str, list]]  # split -> {"text": [...], "label": [...]}
    reports: dict[str, SplitReport]
    unused_train: dict[str, list] | None = None
    """Training-file rows outside data.max_train_samples' sample (selection.validation_from: unused_rows)."""

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def report_dict(self) -> dict[str, Any]:
        return {split: asdict(r) | {"skipped": r.skipped} for split, r in self.reports.items()}


# ---------------------------------------------------------------------------------------------
# Classification splits
# ---------------------------------------------------------------------------------------------


def load_classification_data(data: DataSection, seed: int, eval_file: str | None = None) -> ClassificationData:
    """Read train and eval rows, resolve the label set, and drop (or reject) bad rows with a report.

    ``eval_file`` replaces the recipe's eval split (``peftkit evaluate --data FILE``).
    """
    raw = read_raw_splits(data, eval_file)
    for rows, source in raw.values():
        check_columns(rows, data, source)
    label_names = data.label_names or infer_label_names(raw["train"][0] if "train" in raw else raw["eval"][0], data)
    splits, reports = {}, {}
    for name, (rows, source) in raw.items():
        splits[name], reports[name] = clean_split(rows, source, data, label_names)
        if not splits[name]["text"]:
            raise PeftkitError(f"{source}: no usable rows left ({reports[name].skipped} skipped); "
                               + "; ".join(reports[name].examples_of_bad_rows[:2]))
    if "train" in splits:
        check_label_coverage(splits["train"]["label"], label_names, reports["train"])
    if "eval" not in splits:
        splits["train"], splits["eval"] = hold_out(splits["train"], data.eval_fraction, seed)
        reports["eval"] = SplitReport(source=f"{reports['train'].source} (held out {data.eval_fraction:.0%})",
                                      rows_read=len(splits["eval"]["text"]), rows_used=len(splits["eval"]["text"]))
        reports["train"].rows_used = len(splits["train"]["text"])
    unused_train = subsample(splits, reports, "train", data.max_train_samples, seed)
    subsample(splits, reports, "eval", data.max_eval_samples, seed)
    return ClassificationData(label_names=list(label_names), splits=splits, reports=reports,
                              unused_train=unused_train)


def evaluation_file(data: DataSection, data_file: str | None) -> str | None:
    """The file `peftkit evaluate` reads: --data, else the recipe's eval file, so the training file is not read
    (or needed) at all. None: the run's eval split was held out from its training data, which is then read."""
    return data_file if data_file is not None else (data.eval_file if data.dataset is None else None)


def read_raw_splits(data: DataSection, eval_file: str | None) -> dict[str, tuple[list[dict], str]]:
    raw: dict[str, tuple[list[dict], str]] = {}
    if eval_file is not None:
        return {"eval": (read_table(eval_file, data), str(eval_file))}
    if data.dataset:
        raw["train"] = (read_hub_split(data, data.train_split), f"{data.dataset}[{data.train_split}]")
        try:
            raw["eval"] = (read_hub_split(data, data.eval_split), f"{data.dataset}[{data.eval_split}]")
        except PeftkitError:
            pass  # no eval split on the hub: hold out a fraction of train instead
        return raw
    raw["train"] = (read_table(data.train_file, data), data.train_file)
    if data.eval_file:
        raw["eval"] = (read_table(data.eval_file, data), data.eval_file)
    return raw


def infer_label_names(rows: list[dict], data: DataSection) -> list[str]:
    values = {str(r[data.label_column]).strip() for r in rows if str(r[data.label_column]).strip()}
    if len(values) < 2:
        raise PeftkitError(f"column {data.label_column!r} has fewer than two distinct labels ({sorted(values)}); "
                           "classification needs at least two")
    as_ints = sorted(values, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))
    return as_ints


def label_index(value: Any, label_names: list[str]) -> int | None:
    """Labels may be written as names or as ids: 'positive' and 1 both mean label_names[1]."""
    text = str(value).strip()
    if text in label_names:
        return label_names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(label_names):
        return int(text)
    return None


def clean_split(rows: list[dict], source: str, data: DataSection, label_names: list[str]):
    report = SplitReport(source=source, rows_read=len(rows))
    texts, labels = [], []
    for i, row in enumerate(rows, start=1):
        text = row.get(data.text_column)
        label = label_index(row.get(data.label_column), label_names)
        if text is None or not str(text).strip():
            report.empty_text += 1
            report.note_bad(i, "empty text", row)
        elif label is None:
            report.unknown_label += 1
            report.note_bad(i, f"label {row.get(data.label_column)!r} not in {label_names}", row)
        else:
            texts.append(str(text))
            labels.append(label)
    if report.skipped and data.invalid_rows == "error":
        raise PeftkitError(f"{source}: {report.skipped} bad rows ({report.empty_text} empty text, "
                           f"{report.unknown_label} unknown label); first: {report.examples_of_bad_rows[0]}. "
                           "Fix the file or set data.invalid_rows: skip")
    report.rows_used = len(texts)
    return {"text": texts, "label": labels}, report


def check_label_coverage(labels: list[int], label_names: list[str], report: SplitReport) -> None:
    """Every class must have training rows: a run whose data holds one class learns a constant, and a label name
    with no row (often a typo in data.label_names, whose rows were then skipped as unknown) drops a whole class."""
    counts = [0] * len(label_names)
    for label in labels:
        counts[label] += 1
    present = [name for name, n in zip(label_names, counts) if n]
    absent = [name for name, n in zip(label_names, counts) if not n]
    skipped = f" ({report.unknown_label} rows with other labels were skipped)" if report.unknown_label else ""
    if len(present) < 2 and not (absent and report.unknown_label):
        raise PeftkitError(f"{report.source}: the training rows hold one class only ({', '.join(present)}) of "
                           f"{', '.join(label_names)}{skipped}; a classifier needs rows of at least two classes")
    if absent:
        names = ", ".join(repr(n) for n in absent)
        raise PeftkitError(f"{report.source}: label {names} (data.label_names) has no row in the training data; "
                           f"labels found: {', '.join(present)}{skipped}. Fix the name in data.label_names or "
                           "remove it")


def split_size(split: dict[str, list]) -> int:
    """Rows in a split held as columns (any format: text/label, prompt/completion, messages)."""
    return len(next(iter(split.values())))


def hold_out(split: dict[str, list], fraction: float, seed: int):
    import random

    order = list(range(split_size(split)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(order) * fraction))
    pick = lambda idx: {k: [v[i] for i in idx] for k, v in split.items()}  # noqa: E731
    return pick(sorted(order[n_eval:])), pick(sorted(order[:n_eval]))


def subsample(splits, reports, name: str, limit: int | None, seed: int) -> dict[str, list] | None:
    """A seeded random subset, so `max_train_samples` gives a representative, reproducible sample. Returns the
    rows left out (file order), or None when nothing was."""
    import random

    split = splits.get(name)
    if limit is None or split is None or split_size(split) <= limit:
        return None
    chosen = set(random.Random(seed).sample(range(split_size(split)), limit))
    splits[name] = {k: [v[i] for i in sorted(chosen)] for k, v in split.items()}
    reports[name].rows_used = limit
    left = [i for i in range(split_size(split)) if i not in chosen]
    return {k: [v[i] for i in left] for k, v in split.items()}


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


def tokenize_split(split: dict[str, list], tokenizer, max_length: int, report: SplitReport):
    """A datasets.Dataset of input_ids/attention_mask/labels (no padding: the collator pads per batch)."""
    import datasets

    from peftkit.core.progress import map_in_chunks

    def encode(texts: list[str]) -> list[dict[str, list[int]]]:
        full = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
        cut = tokenizer(texts, truncation=True, max_length=max_length)
        return [{"full": len(ids), **{k: cut[k][i] for k in cut}} for i, ids in enumerate(full)]

    rows = map_in_chunks(encode, split["text"], TOKENIZE_CHUNK, f"tokenizing {Path(report.source).name}",
                         min_total=LARGE_SPLIT)
    report.truncated = sum(row.pop("full") > max_length for row in rows)
    columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else {"input_ids": []})}
    return datasets.Dataset.from_dict({**columns, "labels": split["label"]})


def format_report(data: ClassificationData) -> str:
    lines = [f"labels: {', '.join(f'{i}={n}' for i, n in data.id2label.items())}"]
    for name, r in data.reports.items():
        line = f"{name}: {r.rows_used} rows used of {r.rows_read} read from {r.source}"
        if r.skipped:
            line += f"; skipped {r.empty_text} empty text, {r.unknown_label} unknown label"
        if r.truncated:
            line += f"; {r.truncated} truncated"
        lines.append(line)
        lines.extend(f"  {e}" for e in r.examples_of_bad_rows)
    return "\n".join(lines)
