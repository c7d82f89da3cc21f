"""Data: read train/eval splits, map labels to ids, count and report bad rows, tokenize.

Everything here runs before a model is loaded, so a wrong column or label stops the run in seconds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection

LOCAL_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SHOWN_BAD_ROWS = 5
LARGE_SPLIT = 20000
"""Splits of at least this many rows show progress while they are tokenized (peftkit/progress.py)."""
TOKENIZE_CHUNK = 2000
BUILTIN_PREFIX = "builtin:"
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
# Reading rows
# ---------------------------------------------------------------------------------------------


def builtin_data_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("peftkit") / "defaults" / "data"))


def resolve_data_path(path: str | Path) -> Path:
    """A data file path as written in a recipe: ``builtin:NAME`` (shipped with peftkit) or a path relative to the
    folder peftkit runs from."""
    text = str(path)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(text)
    name = text[len(BUILTIN_PREFIX):].lstrip("/")
    root = builtin_data_dir()
    resolved = root / name
    if not name or ".." in Path(name).parts or not resolved.is_file():
        shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*.tsv"))
        raise PeftkitError(f"{text}: no such data file shipped with peftkit; built-in files are "
                           f"{', '.join(BUILTIN_PREFIX + n for n in shipped)}")
    return resolved


def read_table(path: str | Path, data: DataSection) -> list[dict[str, Any]]:
    """Rows of a local csv/tsv/jsonl/parquet file as dicts. Raises PeftkitError naming the file."""
    path = resolve_data_path(path)
    kind = LOCAL_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PeftkitError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_FORMATS)}")
    if path.is_dir():
        raise PeftkitError(f"{path} is a folder, not a data file; give the {kind} file inside it")
    if not path.is_file():
        raise PeftkitError(f"data file not found: {path} (check the path in the recipe's data section; "
                           "relative paths are relative to the folder you run peftkit from)")
    if path.stat().st_size == 0:
        raise PeftkitError(f"{path}: the file is empty")
    try:
        rows = _READERS[kind](path, data)
    except UnicodeDecodeError as e:
        raise PeftkitError(f"{path}: {describe_decode_error(path, e)}; re-save it as UTF-8 "
                           "(e.g. iconv -f latin1 -t utf-8 IN > OUT, or 'CSV UTF-8' in a spreadsheet)") from None
    except (ValueError, csv.Error, OSError) as e:
        raise PeftkitError(f"{path}: cannot be read as {kind}: {str(e).splitlines()[0]}") from None
    if not rows:
        raise PeftkitError(f"{path}: no data rows (only a header?)")
    return rows


def describe_decode_error(path: Path, error: UnicodeDecodeError) -> str:
    """Where the first non-UTF-8 bytes are, as a line (and column) of the file, not only a byte offset: the
    decoder's offset counts from the start of the chunk it was given, so the file is scanned line by line."""
    offset = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                (line[3:] if number == 1 and line.startswith(b"\xef\xbb\xbf") else line).decode("utf-8")
            except UnicodeDecodeError as e:
                start = e.start + (3 if number == 1 and line.startswith(b"\xef\xbb\xbf") else 0)
                return (f"line {number} is not UTF-8 text (column {start + 1}, byte {offset + start} of the file: "
                        f"{line[start:start + 4]!r}, {e.reason})")
            offset += len(line)
    return f"not UTF-8 text ({error.reason})"


def delimiter_of(path: Path, data: DataSection) -> str:
    """data.delimiter, or by extension: tab for .tsv, comma otherwise."""
    if data.delimiter is not None:
        return data.delimiter
    return "\t" if path.suffix.lower() == ".tsv" else ","


def check_header_unique(header: list[str], path: Path) -> None:
    """A csv/tsv header that names a column twice: building rows as dicts would keep the last one silently."""
    seen = set()
    for name in header:
        if name in seen:
            raise PeftkitError(f"{path}: column {name!r} appears twice in the header ({', '.join(header)}); only "
                               "the last would be read. Rename or remove one of them")
        seen.add(name)


def _read_delimited(path: Path, data: DataSection) -> list[dict[str, Any]]:
    delimiter = delimiter_of(path, data)
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a BOM (Excel, Notepad) is not part of the header
        # SST-2 and AG News contain bare quotes inside fields: TSV is read without quote processing.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = data.column_names if not data.has_header else next(reader, None)
        if not header:
            return []
        rows = []
        for line_number, values in enumerate(reader, start=2 if data.has_header else 1):
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                raise ValueError(f"line {line_number} has {len(values)} fields, the header has {len(header)} "
                                 f"({', '.join(header)})")
            rows.append(dict(zip(header, values)))
        if rows and data.has_header:
            check_header_unique(header, path)
        return rows


def _read_jsonl(path: Path, data: DataSection) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"line {line_number} is not JSON ({e.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("every line must be a JSON object")
    return rows


def _read_parquet(path: Path, data: DataSection) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise ValueError(str(e)) from None


_READERS = {"tsv": _read_delimited, "csv": _read_delimited, "json": _read_jsonl, "parquet": _read_parquet}


def read_hub_split(data: DataSection, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(data.dataset, data.dataset_config, split=split)
    except Exception as e:  # datasets raises many types (offline, missing split, missing config)
        raise PeftkitError(f"data.dataset {data.dataset!r} split {split!r} could not be loaded: "
                           f"{str(e).splitlines()[0]}") from None
    return ds.to_list()


# ---------------------------------------------------------------------------------------------
# Classification splits
# ---------------------------------------------------------------------------------------------


def load_classification_data(data: DataSection, seed: int, eval_file: str | None = None) -> ClassificationData:
    """Read train and eval rows, resolve the label set, and drop (or reject) bad rows with a report.

    ``eval_file`` replaces the recipe's eval split (``peftkit evaluate --data FILE``).
    """
    raw = read_raw_splits(data, eval_file)
    for name, (rows, source) in raw.items():
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


def check_columns(rows: list[dict], data: DataSection, source: str) -> None:
    present = list(rows[0].keys())
    for role, column in (("text_column", data.text_column), ("label_column", data.label_column)):
        if column not in present and len(present) == 1:
            raise PeftkitError(wrong_delimiter_message(str(present[0]), source))
        if column not in present:
            raise PeftkitError(f"{source}: column {column!r} (data.{role}) not found; the file has columns "
                               f"{', '.join(map(str, present))}. Set data.{role} to one of them")


def wrong_delimiter_message(only_column: str, source: str) -> str:
    """A delimited file read with the wrong delimiter has one column whose name holds the real delimiter."""
    names = {";": "semicolon", ",": "comma", "\t": "tab", "|": "pipe"}
    found = [d for d in names if d in only_column]
    if not found:
        return (f"{source}: the file reads as one column {only_column!r}; a classification file needs a text and a "
                "label column (set data.delimiter if the fields are separated by another character)")
    d = max(found, key=only_column.count)
    shown = '"\\t"' if d == "\t" else f'"{d}"'
    return (f"{source}: the header reads as one column {only_column!r}: the delimiter looks wrong (the fields seem "
            f"separated by {names[d]}s); set data.delimiter: {shown}")


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

    from peftkit.progress import map_in_chunks

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
