"""`peftkit init DATA_FILE`: a commented recipe for your own labelled file.

What it decides, and by which rule (each decision is written into the recipe as a comment, so it can be changed):

- **format and delimiter**: by extension for .jsonl/.json/.parquet; for .csv/.tsv/.txt-like delimited files the
  first 50 records are parsed with tab, comma, semicolon and pipe, and the delimiter that splits them into the
  same number (>= 2) of fields most consistently wins (ties: tab, comma, semicolon, pipe). A delimiter other
  than the extension's default is written as ``data.delimiter``.
- **header**: the first record is a header when each of its cells is short (<= 40 characters), not a number,
  unique, and not one of the values found in the rest of its column (a header-less file repeats its first
  label further down). ``--header yes|no`` overrides.
- **label column**: a column named like a label (label, labels, class, category, target, sentiment, y) with at
  least two distinct values, else the column with the fewest distinct values (at least 2, at most
  max(2, min(100, rows / 5))). **Text column**: a column named like text (text, sentence, review, ...), else the
  string column with the longest average length. ``--text-column`` / ``--label-column`` override.
- **labels**: the distinct values of the label column in the training file only (never the eval file), sorted
  as peftkit sorts them (numbers numerically, then names); counts per class; flags when the largest class has
  more than 3x the rows of the smallest, and for classes with fewer than 10 rows.
- **task**: generative classification (the label as the next word, scored by likelihood) for causal LMs
  (``*ForCausalLM`` architectures, e.g. packaged:smollm2-135m-instruct), a classification head for encoders
  (BERT family, e.g. the default packaged:all-minilm-l6-v2). ``--task`` forces it (an encoder cannot generate).
- **label words** (generative): " " + the label name when that is one token for the model's tokenizer, else its
  lowercase form when that is one token; otherwise the multi-token word is kept (peftkit scores the sum over
  the label's tokens, so it still works) and the recipe says so.
- **validation split**: with ``--eval FILE`` that file; otherwise ``data.eval_fraction`` of the training rows
  (0.1; 0.2 under 1,000 rows), held out with the recipe's seed.
- **max_length**: the 99th percentile of the training texts' token counts (a seeded sample of up to 2,000
  texts, plus the prompt and label for generative runs), rounded up to a multiple of 16, between 32 and 512.
- **epochs**: enough to show the model at least ~2,000 examples (1 epoch from 2,000 rows, at most 10); the
  learning rates and batch sizes are those of the shipped SST-2 recipes for the same model family. Nothing is
  chosen by looking at the eval file's results.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from peftkit.errors import PeftkitError

DEFAULT_MODEL = "packaged:all-minilm-l6-v2"
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
ENCODER_TYPES = ("bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "albert",
                 "mpnet", "modernbert", "camembert", "xlnet")


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
    from peftkit.data import describe_decode_error

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
    from peftkit.data import read_table
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
        raise PeftkitError(f"{path}: no text column besides {label_column!r} (columns: {', '.join(map(str, columns))}); "
                           "name it with --text-column")
    return max(stringy, key=lambda c: sum(map(len, texts[c])) / max(1, len(texts[c])))


def profile(layout: Layout, text_column: str | None, label_column: str | None) -> Profile:
    from peftkit.data import infer_label_names
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


# ---------------------------------------------------------------------------------------------
# Model: task, label words, lengths
# ---------------------------------------------------------------------------------------------


def is_causal_lm(model_name: str) -> bool:
    """True for decoder-only language models (``*ForCausalLM``), False for encoders (BERT family)."""
    from transformers import AutoConfig

    from peftkit.model import local_path
    from peftkit.recipe import ModelSection

    try:
        config = AutoConfig.from_pretrained(local_path(ModelSection(name_or_path=model_name)))
    except PeftkitError:
        raise
    except Exception as e:  # offline hub id, broken folder
        raise PeftkitError(f"--model {model_name}: cannot read its config ({str(e).splitlines()[0][:200]}); "
                           "give a local folder, packaged:all-minilm-l6-v2 or packaged:smollm2-135m-instruct") from None
    architectures = config.architectures or []
    if any(a.endswith("ForCausalLM") for a in architectures):
        return True
    if architectures or config.model_type in ENCODER_TYPES:
        return False
    return True


def load_init_tokenizer(model_name: str):
    from peftkit.model import load_tokenizer
    from peftkit.recipe import ModelSection

    return load_tokenizer(ModelSection(name_or_path=model_name))


def choose_label_words(label_names: list[str], tokenizer) -> tuple[dict[str, str], dict[str, int]]:
    """(label -> completion word, label -> its token count): one token where a leading-space form is one."""
    words, tokens = {}, {}
    for name in label_names:
        candidates = list(dict.fromkeys([" " + name, " " + name.lower()]))
        counted = [(w, len(tokenizer(w, add_special_tokens=False)["input_ids"])) for w in candidates]
        word, n = next(((w, n) for w, n in counted if n == 1), counted[0])
        words[name], tokens[name] = word, n
    if len(set(words.values())) < len(words):  # lowercasing made two labels the same word
        words = {name: " " + name for name in label_names}
        tokens = {name: len(tokenizer(w, add_special_tokens=False)["input_ids"]) for name, w in words.items()}
    return words, tokens


def token_length(texts: list[str], tokenizer, extra: int, seed: int) -> tuple[int, int]:
    """(max_length to use, longest text seen): p99 of the token counts + `extra`, rounded up to 16, in [32, 512]."""
    sample = texts if len(texts) <= 2000 else random.Random(seed).sample(texts, 2000)
    lengths = sorted(len(ids) for ids in tokenizer(sample, add_special_tokens=True)["input_ids"])
    p99 = lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)] + extra
    limit = 512
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < limit:
        limit = model_max
    return max(32, min(limit, 16 * math.ceil(p99 / 16))), lengths[-1] + extra


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def y(v: Any) -> str:
    """A YAML value on one line."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def short_model_name(model: str) -> str:
    name = model.split(":", 1)[-1].rstrip("/").split("/")[-1].lower()
    for family in ("minilm", "smollm2", "bert", "llama", "qwen", "mistral", "gemma", "phi"):
        if family in name:
            return family
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:20] or "model"


def init_recipe(data_file: str, eval_file: str | None = None, model: str = DEFAULT_MODEL, task: str = "auto",
                out: str | None = None, text_column: str | None = None, label_column: str | None = None,
                header: str = "auto", output_dir: str | None = None, force: bool = False,
                seed: int = 42) -> tuple[Path, str]:
    """Inspect the data, write the recipe; returns (recipe path, the summary to print)."""
    from peftkit.io import write_text_atomic
    from peftkit.recipe import recipe_from_dict, validate

    train_path = Path(data_file)
    out_path = Path(out) if out else Path(f"{train_path.stem}.yaml")
    if out_path.exists() and not force:
        raise PeftkitError(f"{out_path} exists; choose another --out or pass --force to replace it")
    if out_path.resolve() == train_path.resolve():
        raise PeftkitError(f"--out {out_path} is the data file itself; choose another name")
    layout = detect_layout(train_path, header)
    prof = profile(layout, text_column, label_column)
    if len(prof.label_names) < 2:
        raise PeftkitError(f"{train_path}: column {prof.label_column!r} has one label only; classification needs two")
    eval_info = check_eval_file(Path(eval_file), prof, header) if eval_file else None
    eval_fraction = None if eval_file else (0.2 if prof.usable < 1000 else 0.1)

    causal = is_causal_lm(model)
    if task == "auto":
        task = "generative_classification" if causal else "classification"
    if task == "generative_classification" and not causal:
        raise PeftkitError(f"--task generative_classification needs a causal LM (e.g. packaged:smollm2-135m-instruct); "
                           f"{model} is an encoder: use --task classification")
    if task == "classification" and causal:
        pass  # a head on a causal LM works (AutoModelForSequenceClassification), as in recipes/sst2/smollm2_lora_cls
    tokenizer = load_init_tokenizer(model)
    texts = [value(r.get(prof.text_column)) for r in prof.rows if value(r.get(prof.text_column))]
    words, word_tokens = ({}, {})
    extra = 0
    if task == "generative_classification":
        words, word_tokens = choose_label_words(prof.label_names, tokenizer)
        extra = len(tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]) + max(word_tokens.values()) + 1
    max_length, longest = token_length(texts, tokenizer, extra, seed)

    n_train = prof.usable - (round(prof.usable * eval_fraction) if eval_fraction else 0)
    epochs = min(10, max(1, math.ceil(2000 / max(1, n_train))))
    run_name = output_dir or f"runs/{re.sub(r'[^A-Za-z0-9_.-]+', '-', train_path.stem)}-{short_model_name(model)}"
    command = f"peftkit train {out_path}"
    flags = prof.flags(eval_fraction)
    text = render(prof, eval_info, eval_file, eval_fraction, model, task, words, word_tokens, max_length, longest,
                  epochs, run_name, command, flags, data_file, n_train)
    try:
        recipe = recipe_from_dict(yaml.safe_load(text), where=str(out_path))
        recipe.source = str(out_path)
        validate(recipe)
    except PeftkitError as e:  # a bug here, not the user's: say what would have been written
        raise PeftkitError(f"internal: the recipe peftkit init built does not validate ({e}); please report it") from None
    write_text_atomic(out_path, text)
    return out_path, summary(prof, eval_info, eval_fraction, task, model, words, word_tokens, flags, out_path,
                             max_length)


def render(prof: Profile, eval_info, eval_file, eval_fraction, model, task, words, word_tokens, max_length, longest,
           epochs, run_name, command, flags, data_file, n_train) -> str:
    layout = prof.layout
    generative = task == "generative_classification"
    counts = ", ".join(f"{n} {prof.counts[n]}" for n in prof.label_names)
    lines = [
        f"# {command}",
        f"# Written by `peftkit init` on {date.today().isoformat()} from {data_file}: {layout.describe()}, "
        f"{len(prof.rows):,} rows, text column {prof.text_column!r}, label column {prof.label_column!r}.",
        f"# Labels (training file): {counts}"
        + (f"; skipped: {prof.empty_text} empty text, {prof.empty_label} empty label"
           if prof.empty_text or prof.empty_label else "") + ".",
    ]
    lines += [f"# CHECK: {f}." for f in flags]
    if generative:
        lines.append(f"# Task: generative classification ({model} is a causal LM): the label is predicted as the next "
                     "word and evaluated by scoring every label word (no free generation).")
    else:
        lines.append(f"# Task: classification head on {model} (an encoder); --model packaged:smollm2-135m-instruct "
                     "gives generative classification.")
    lines.append("# Paths are relative to the folder you run peftkit from. Check it: peftkit validate "
                 + command.split(" ", 2)[2])
    lines += [
        f"task: {task}",
        f"output_dir: {y(run_name)}",
        "model:",
        f"  name_or_path: {y(model)}",
    ]
    if generative:
        lines.append("  attn_implementation: sdpa        # keeps packed sequences apart (re-checked at the start)")
    lines += [
        "adapter:",
        "  r: 16                            # higher: more capacity, more memory",
        "  lora_alpha: 32",
        "  target_modules: all-linear",
        "data:",
        f"  train_file: {y(str(data_file))}",
    ]
    if eval_file:
        lines.append(f"  eval_file: {y(str(eval_file))}")
    else:
        lines.append(f"  eval_fraction: {eval_fraction}               # no eval file: held out from train "
                     f"(seeded; {n_train:,} rows left to train on)")
    if layout.recipe_delimiter is not None:
        lines.append(f"  delimiter: {y(layout.recipe_delimiter)}                 # "
                     f"{DELIMITER_NAMES[layout.delimiter]}-separated")
    if not layout.has_header:
        lines.append("  has_header: false")
        lines.append(f"  column_names: {y(prof.column_names)}")
    text_col = "text" if prof.column_names else prof.text_column
    label_col = "label" if prof.column_names else prof.label_column
    lines += [
        f"  text_column: {y(text_col)}",
        f"  label_column: {y(label_col)}",
        f"  label_names: {y(prof.label_names)}   # id order; the file's labels may be these names or their ids",
    ]
    if generative:
        multi = [n for n in prof.label_names if word_tokens[n] > 1]
        note = ("every word is one token" if not multi else
                f"{', '.join(repr(n) for n in multi)} {'is' if len(multi) == 1 else 'are'} several tokens: kept "
                "(scoring sums a label's tokens); one-token words learn a little faster")
        lines += [
            "  prompt_template: \"{text}\\nLabel:\"",
            f"  label_words: {y(words)}   # {note}",
        ]
    lines.append(f"  max_length: {max_length}                  # 99% of the training texts fit"
                 f" (longest: {longest} tokens; longer ones are cut and counted)")
    lines.append("  # max_train_samples: 4000         # a seeded subset, for a quick first run")
    lines.append("train:")
    if generative:
        lines += [
            "  learning_rate: 3.0e-4            # as recipes/sst2/smollm2_lora_gen.yaml",
            f"  num_train_epochs: {epochs}              # at least ~2,000 examples seen (from the training set size)",
            "  per_device_train_batch_size: 8   # packed rows of up to max_length tokens",
            "  packing: true",
        ]
    else:
        lines += [
            "  learning_rate: 1.0e-3            # as the built-in quickstart (MiniLM + LoRA)",
            f"  num_train_epochs: {epochs}              # at least ~2,000 examples seen (from the training set size)",
            "  per_device_train_batch_size: 32",
        ]
    lines += [
        "  logging_steps: 25",
        "keep_checkpoints: last             # none: only adapter/ stays (then --resume says the run is finished)",
    ]
    return "\n".join(lines) + "\n"


def summary(prof: Profile, eval_info, eval_fraction, task, model, words, word_tokens, flags, out_path: Path,
            max_length: int) -> str:
    layout = prof.layout
    lines = [f"{layout.path}: {layout.describe()}, {len(prof.rows):,} rows; text column {prof.text_column!r}, "
             f"label column {prof.label_column!r}"]
    width = max(len(n) for n in prof.label_names)
    total = max(1, prof.usable)
    for name in prof.label_names:
        lines.append(f"  {name:<{width}}  {prof.counts[name]:>7,}  {prof.counts[name] / total:>5.1%}")
    if prof.empty_text or prof.empty_label:
        lines.append(f"  skipped: {prof.empty_text} rows with empty text, {prof.empty_label} with an empty label")
    if eval_info is not None:
        ev_layout, ev_rows, ev_counts = eval_info
        unknown = sorted(set(ev_counts) - set(prof.label_names) - {""})
        lines.append(f"eval: {ev_layout.path}: {ev_rows:,} rows"
                     + (f"; labels not in the training file (skipped): {', '.join(unknown[:5])}" if unknown else ""))
    else:
        lines.append(f"eval: none given; {eval_fraction:.0%} of the training rows are held out (data.eval_fraction)")
    for f in flags:
        lines.append(f"check: {f}")
    lines.append(f"task: {task} ({model}); max_length {max_length}")
    if words:
        lines.append("label words: " + ", ".join(f"{n} -> {w!r} ({word_tokens[n]} token{'s' if word_tokens[n] > 1 else ''})"
                                                 for n, w in words.items()))
    lines += [f"wrote {out_path}", f"next: peftkit validate {out_path} && peftkit train {out_path}"]
    return "\n".join(lines)
