"""What ``peftkit init`` reads from a data file: its format, delimiter and header, the text and label columns,
the label counts and what they flag. The rules are listed in ``init_recipe``'s docstring."""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

DELIMITERS = ("\t", ",", ";", "|")
DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
DELIMITED_SUFFIXES = (".tsv", ".csv")
SNIFF_RECORDS = 50
SNIFF_BYTES = 256 * 1024
LABEL_NAME_HINTS = ("label", "labels", "class", "category", "target", "sentiment", "y", "intent", "topic")
TEXT_NAME_HINTS = ("text", "sentence", "review", "content", "body", "comment", "message", "tweet", "document",
                   "utterance", "question", "title", "description")
IMBALANCE_RATIO = 3.0
TINY_CLASS = 10


@dataclass
class Layout:
    """How a file is read: what peftkit's reader needs (data.delimiter, has_header, column_names)."""

    path: Path
    kind: str  # tsv | csv | json | parquet
    delimiter: str | None = None  # the detected delimiter (delimited files)
    has_header: bool = True
    columns: list[str] = field(default_factory=list)

    @property
    def recipe_delimiter(self) -> str | None:
        """data.delimiter to write: only when it differs from what the extension implies."""
        if self.kind not in ("tsv", "csv"):
            return None
        default = "\t" if self.path.suffix.lower() == ".tsv" else ","
        return None if self.delimiter == default else self.delimiter

    def describe(self) -> str:
        if self.kind in ("tsv", "csv"):
            return (f"{DELIMITER_NAMES[self.delimiter]}-separated, "
                    f"{'with a header' if self.has_header else 'no header'}")
        return {"json": "JSON lines", "parquet": "parquet"}[self.kind]


@dataclass
class Profile:
    """What the training file holds: the roles of its columns and its labels."""

    layout: Layout
    rows: list[dict[str, Any]]
    text_column: str
    label_column: str
    label_names: list[str]
    counts: Counter
    empty_text: int = 0
    empty_label: int = 0
    column_names: list[str] | None = None  # header-less files: the names written to data.column_names

    @property
    def usable(self) -> int:
        return sum(self.counts.values())

    def flags(self, eval_fraction: float | None) -> list[str]:
        """Imbalance, tiny classes, and classes the held-out split will likely miss."""
        out = []
        (big, n_big), (small, n_small) = self.counts.most_common()[0], self.counts.most_common()[-1]
        if n_small and n_big / n_small > IMBALANCE_RATIO:
            out.append(f"imbalanced: {big!r} has {n_big} rows, {small!r} {n_small} ({n_big / n_small:.1f}x); "
                       "accuracy flatters the large class: read macro F1 and per-class recall in eval_report.txt")
        tiny = [name for name in self.label_names if self.counts[name] < TINY_CLASS]
        if tiny:
            out.append(f"tiny classes (< {TINY_CLASS} rows): " + ", ".join(f"{n!r} ({self.counts[n]})" for n in tiny)
                       + "; too few to learn or to measure: collect more rows or merge them into another class")
        if eval_fraction is not None:
            missing = [n for n in self.label_names if self.counts[n] * eval_fraction < 1]
            if missing:
                out.append(f"the held-out {eval_fraction:.0%} will likely hold no row of "
                           + ", ".join(repr(n) for n in missing) + " (the split is random, not stratified): "
                           "give an eval file with --eval")
        if all(re.fullmatch(r"-?\d+", n) for n in self.label_names):
            out.append("labels are numbers: name the classes in data.label_names (in id order) for readable "
                       "reports" + ("; generative classification predicts the label as a word, so names matter"))
        return out


# ---------------------------------------------------------------------------------------------
# Reading: format, delimiter, header
# ---------------------------------------------------------------------------------------------


def detect_layout(path: Path, header: str = "auto") -> Layout:
    """The file's format and, for delimited files, delimiter and header."""
    from peftkit.data.files import describe_decode_error

    suffix = path.suffix.lower()
    if not path.is_file():
        raise PeftkitError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise PeftkitError(f"{path}: the file is empty")
    if suffix == ".parquet":
        return Layout(path, "parquet")
    if suffix in (".jsonl", ".json"):
        return Layout(path, "json")
    if suffix not in DELIMITED_SUFFIXES:
        raise PeftkitError(f"{path}: unsupported file type {suffix!r}; peftkit reads .csv (any delimiter), .tsv, "
                           ".jsonl, .json and .parquet: rename a delimited text file to .csv")
    raw = path.open("rb").read(SNIFF_BYTES)
    cut = len(raw) == SNIFF_BYTES
    try:
        sample = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if not (cut and e.start >= len(raw) - 4):  # not just a character split at the end of the sample
            raise PeftkitError(f"{path}: {describe_decode_error(path, e)}; re-save it as UTF-8") from None
        sample = raw[:e.start].decode("utf-8-sig")
    if cut:
        sample = sample[:sample.rfind("\n") + 1] or sample
    delimiter, records = sniff_delimiter(sample, path)
    has_header = {"yes": True, "no": False}.get(header)
    if has_header is None:
        has_header = looks_like_header(records)
    width = len(records[0])
    columns = [c.strip() for c in records[0]] if has_header else [f"column_{i + 1}" for i in range(width)]
    return Layout(path, "tsv" if delimiter == "\t" else "csv", delimiter, has_header, columns)


def sniff_delimiter(sample: str, path: Path) -> tuple[str, list[list[str]]]:
    """The delimiter that splits the first records into the same number (>= 2) of fields most consistently."""
    best: tuple[float, int, str, list[list[str]]] | None = None
    for rank, delimiter in enumerate(DELIMITERS):
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        try:
            records = [r for r in itertools.islice(csv.reader(io.StringIO(sample), delimiter=delimiter,
                                                              quoting=quoting), SNIFF_RECORDS) if r and r != [""]]
        except csv.Error:
            continue
        if not records:
            continue
        widths = Counter(len(r) for r in records)
        width, seen = widths.most_common(1)[0]
        if width < 2:
            continue
        consistency = seen / len(records)
        if best is None or (consistency, -rank) > (best[0], -best[1]):
            best = (consistency, rank, delimiter, records)
    if best is None or best[0] < 0.8:
        raise PeftkitError(f"{path}: cannot tell the columns apart: no tab, comma, semicolon or pipe splits the first "
                           f"{SNIFF_RECORDS} lines into the same number of fields; give a file with a text and a "
                           "label column (or use .jsonl)")
    return best[2], best[3]


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def looks_like_header(records: list[list[str]]) -> bool:
    first, rest = records[0], records[1:]
    cells = [c.strip() for c in first]
    if not all(cells) or len(set(cells)) != len(cells):
        return False
    if any(len(c) > 40 or is_number(c) for c in cells):
        return False
    for j, cell in enumerate(cells):
        if any(len(r) > j and r[j].strip() == cell for r in rest):
            return False
    return True


def read_rows(layout: Layout) -> list[dict[str, Any]]:
    """All rows, read by peftkit's own reader with the settings the recipe will carry."""
    from peftkit.data.files import read_table
    from peftkit.recipe import DataSection

    section = DataSection(delimiter=layout.delimiter, has_header=layout.has_header,
                          column_names=None if layout.has_header else layout.columns)
    return read_table(layout.path, section)


# ---------------------------------------------------------------------------------------------
# Columns and labels
# ---------------------------------------------------------------------------------------------


def scalar_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(rows[0].keys())
    return [c for c in columns if all(v is None or isinstance(v, (str, int, float, bool)) for v in
                                      (r.get(c) for r in rows[:1000]))]


def value(v: Any) -> str:
    return "" if v is None else str(v).strip()


def choose_label_column(rows: list[dict[str, Any]], columns: list[str], path: Path) -> str:
    distinct = {c: len({value(r.get(c)) for r in rows} - {""}) for c in columns}
    limit = max(2, min(100, len(rows) // 5))
    named = [c for c in columns if str(c).strip().lower() in LABEL_NAME_HINTS and distinct[c] >= 2]
    if named:
        return named[0]
    candidates = [c for c in columns if 2 <= distinct[c] <= limit]
    if not candidates:
        raise PeftkitError(f"{path}: no column looks like a label (2 to {limit} distinct values); distinct values "
                           f"per column: {', '.join(f'{c}={n}' for c, n in distinct.items())}. Name it with "
                           "--label-column")
    return min(reversed(candidates), key=lambda c: distinct[c])  # fewest values; ties: the later column


def choose_text_column(rows: list[dict[str, Any]], columns: list[str], label_column: str, path: Path) -> str:
    others = [c for c in columns if c != label_column]
    named = [c for c in others if str(c).strip().lower() in TEXT_NAME_HINTS]
    if named:
        return named[0]
    texts = {c: [value(r.get(c)) for r in rows[:5000]] for c in others}
    stringy = [c for c in others if sum(not is_number(t) for t in texts[c] if t) > 0.5 * max(1, len(texts[c]))]
    if not stringy:
        raise PeftkitError(f"{path}: no text column besides {label_column!r} "
                           f"(columns: {', '.join(map(str, columns))}); "
                           "name it with --text-column")
    return max(stringy, key=lambda c: sum(map(len, texts[c])) / max(1, len(texts[c])))


def profile(layout: Layout, text_column: str | None, label_column: str | None) -> Profile:
    from peftkit.data.classification import infer_label_names
    from peftkit.recipe import DataSection

    rows = read_rows(layout)
    columns = scalar_columns(rows)
    if len(columns) < 2:
        raise PeftkitError(f"{layout.path}: needs a text column and a label column; found "
                           f"{', '.join(map(str, rows[0].keys()))}")
    for given, role in ((text_column, "--text-column"), (label_column, "--label-column")):
        if given is not None and given not in rows[0]:
            raise PeftkitError(f"{layout.path}: {role} {given!r} is not a column; the columns are "
                               f"{', '.join(map(str, rows[0].keys()))}")
    label = label_column or choose_label_column(rows, [c for c in columns if c != text_column], layout.path)
    text = text_column or choose_text_column(rows, columns, label, layout.path)
    if text == label:
        raise PeftkitError(f"{layout.path}: the text and label column are both {text!r}; name them with "
                           "--text-column and --label-column")
    empty_text = sum(not value(r.get(text)) for r in rows)
    empty_label = sum(bool(value(r.get(text))) and not value(r.get(label)) for r in rows)
    usable = [r for r in rows if value(r.get(text)) and value(r.get(label))]
    names = infer_label_names(usable, DataSection(label_column=label))
    counts = Counter({n: 0 for n in names})
    counts.update(value(r[label]) for r in usable)
    result = Profile(layout, rows, text, label, names, counts, empty_text, empty_label)
    if not layout.has_header:  # name the role columns text / label in data.column_names
        rename = {text: "text", label: "label"}
        result.column_names = [rename.get(c, c) for c in layout.columns]
    return result


def check_eval_file(path: Path, train: Profile, header: str) -> tuple[Layout, int, Counter]:
    """The eval file must be read with the same settings (one data section) and hold the same columns."""
    layout = detect_layout(path, header)
    tl = train.layout
    delimited = {"tsv", "csv"}
    if layout.kind != tl.kind and not {layout.kind, tl.kind} <= delimited:
        raise PeftkitError(f"{path}: is {layout.describe()}, the training file {tl.path} is {tl.describe()}; "
                           "save both the same way (one data section reads both)")
    if layout.kind in delimited:
        default = "\t" if path.suffix.lower() == ".tsv" else ","
        if (tl.recipe_delimiter or default) != layout.delimiter:
            raise PeftkitError(f"{path}: is {layout.describe()}, the training file is {tl.describe()}; save both "
                               "with the same delimiter (one data.delimiter reads both)")
        if layout.has_header != tl.has_header:
            raise PeftkitError(f"{path}: is {layout.describe()}, the training file is {tl.describe()}; give both "
                               "a header or neither (--header yes|no sets it for both)")
        if not tl.has_header and len(layout.columns) != len(tl.columns):
            raise PeftkitError(f"{path}: has {len(layout.columns)} columns, the training file {len(tl.columns)}")
    if not tl.has_header:
        layout.columns = tl.columns
    rows = read_rows(layout)
    missing = [c for c in (train.text_column, train.label_column) if c not in rows[0]]
    if missing:
        raise PeftkitError(f"{path}: has no column {', '.join(map(repr, missing))} (the training file's text and "
                           f"label columns); its columns are {', '.join(map(str, rows[0].keys()))}")
    counts = Counter(value(r.get(train.label_column)) for r in rows if value(r.get(train.text_column)))
    return layout, len(rows), counts


