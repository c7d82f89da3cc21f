"""`peftkit augment RECIPE [--out FILE]`: an augmented copy of the recipe's training rows, in the same file format.

The output holds the training rows the recipe would use (after data.max_train_samples) marked ``source:
original``, then the new rows: ``edit:<op>`` (random deletion, swap or insertion of words of the same sentence,
seeded) and ``paraphrase:<model>`` (an instruction-tuned causal LM rewrites each row, told its label). A new row
is dropped when, after normalising case, whitespace and punctuation, it equals a training row or another new row
(duplicate) or ANY eval sentence (leakage: training on a copy of an eval sentence inflates the eval score), and,
with ``augment.teacher``, when that trained run gives its label less than ``augment.min_confidence`` (the
consistency filter). Counts per method go to the console and to FILE.report.json.
"""

from __future__ import annotations

import random
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_text_atomic
from peftkit.core.console import say, warn
from peftkit.data.classification import load_classification_data
from peftkit.data.files import resolve_data_path
from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe, load_recipe

SOURCE_COLUMN = "source"
EDIT_OPS = ("delete", "swap", "insert")


def normalise(text: str) -> str:
    """Case, whitespace and punctuation removed: what makes two sentences "the same" for dedup and leakage."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def edit(text: str, op: str, rng: random.Random, fraction: float) -> str:
    """A label-preserving edit using only the sentence's own words: delete, swap or repeat-insert ~fraction of them."""
    words = text.split()
    if len(words) < 2:
        return text
    n = max(1, round(fraction * len(words)))
    if op == "delete":
        drop = set(rng.sample(range(len(words)), min(n, len(words) - 1)))
        words = [w for i, w in enumerate(words) if i not in drop]
    elif op == "swap":
        for _ in range(n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif op == "insert":
        for _ in range(n):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    else:
        raise ValueError(op)
    return " ".join(words)


def edited_rows(texts: list[str], labels: list[int], copies: int, seed: int, fraction: float) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for text, label in zip(texts, labels):
        for _ in range(copies):
            op = rng.choice(EDIT_OPS)
            rows.append({"text": edit(text, op, rng, fraction), "label": label, "source": f"edit:{op}"})
    return rows


def augment_command(recipe_path: str, overrides: list[str], out: str | None) -> dict[str, Any]:
    recipe = load_recipe(recipe_path, overrides)
    if recipe.data.train_file is None:
        raise PeftkitError("augment needs data.train_file (a local file): the augmented copy is written beside it")
    target = output_path(recipe, out)
    data = load_classification_data(recipe.data, recipe.seed)  # the rows training uses, every check of the files
    teacher = open_filter_teacher(recipe, data.label_names)
    train = data.splits["train"]
    limit = recipe.augment.max_rows or len(train["text"])
    texts, labels = train["text"][:limit], train["label"][:limit]
    if recipe.selection.enabled and recipe.selection.validation_from == "training_rows":
        warn("selection.validation_fraction carves validation rows from the training file: train on the augmented "
             "file with it and the validation split may hold edited copies of training rows (optimistic selection)")
    generated, timing = generate_rows(recipe, texts, [data.label_names[y] for y in labels], labels)
    kept, counts = filter_rows(generated, train["text"], data.splits["eval"]["text"], teacher, recipe)
    originals = [{"text": t, "label": y, "source": "original"} for t, y in zip(train["text"], train["label"])]
    write_rows(target, recipe, originals + kept, data.label_names)
    report = {"out": str(target), "original_rows": len(originals), "augmented_rows_kept": len(kept),
              "per_method": counts, "seconds_per_row": timing, "seed": recipe.augment.seed,
              "eval_file": data.reports["eval"].source,
              "original_rows_equal_to_eval": count_equal(train["text"], data.splits["eval"]["text"])}
    write_json_atomic(Path(f"{target}.report.json"), report)
    say(describe(report))
    if not recipe.data.has_header:
        say(f"{target} starts with a header row ({recipe.data.text_column}, {recipe.data.label_column}, "
            f"{SOURCE_COLUMN}): train on it with data.has_header: true and data.column_names: null")
    return report


def output_path(recipe: Recipe, out: str | None) -> Path:
    source = resolve_data_path(recipe.data.train_file)
    target = Path(out) if out else source.with_name(f"{source.stem}.augmented{source.suffix}")
    if target.suffix.lower() not in (".tsv", ".csv", ".jsonl"):
        raise PeftkitError(f"--out {target}: augment writes .tsv, .csv or .jsonl files; give one of those")
    if target.resolve() == source.resolve():
        raise PeftkitError(f"--out {target} is the training file itself; augment never overwrites it")
    return target


def open_filter_teacher(recipe: Recipe, label_names: list[str]):
    if recipe.augment.teacher is None:
        return None
    from peftkit.inference.teacher import open_teacher

    return open_teacher(recipe.augment.teacher, label_names, "augment.teacher")


def generate_rows(recipe: Recipe, texts: list[str], label_words: list[str], labels: list[int]):
    """New rows of every method in augment.methods, and the seconds each method spent per original row."""
    a = recipe.augment
    rows: list[dict] = []
    timing: dict[str, float] = {}
    for method in a.methods:
        started = time.perf_counter()
        if method == "edit":
            rows += edited_rows(texts, labels, a.copies, a.seed, a.edit_fraction)
        else:
            from peftkit.augment.paraphrase import paraphrase_rows

            rows += paraphrase_rows(recipe, texts, label_words, labels)
        timing[method] = (time.perf_counter() - started) / max(1, len(texts))
    return rows, timing


def filter_rows(rows: list[dict], train_texts: list[str], eval_texts: list[str], teacher, recipe: Recipe):
    """(kept rows, counts per method): duplicates and eval leakage dropped, then the consistency filter."""
    seen = {normalise(t) for t in train_texts}
    eval_set = {normalise(t) for t in eval_texts}
    counts: dict[str, Counter] = {}
    survivors = []
    for row in rows:
        method = row["source"].split(":")[0]
        c = counts.setdefault(method, Counter(generated=0, kept=0))
        c["generated"] += 1
        key = normalise(row["text"])
        if not key:
            c["dropped_empty"] += 1
        elif key in eval_set:
            c["dropped_eval_leak"] += 1
        elif key in seen:
            c["dropped_duplicate"] += 1
        else:
            seen.add(key)
            survivors.append(row)
    kept = consistency_filter(survivors, teacher, recipe, counts)
    for row in kept:
        counts[row["source"].split(":")[0]]["kept"] += 1
    return kept, {method: dict(c) for method, c in counts.items()}


def consistency_filter(rows: list[dict], teacher, recipe: Recipe, counts: dict[str, Counter]) -> list[dict]:
    """Rows the teacher run gives their label at least min_confidence (all rows without a teacher)."""
    if teacher is None or not rows:
        return rows
    from peftkit.inference.teacher import teacher_probabilities

    run_dir, teacher_recipe, _ = teacher
    probs = teacher_probabilities(run_dir, teacher_recipe, [r["text"] for r in rows])
    kept = []
    for row, p in zip(rows, probs.tolist()):
        if p[row["label"]] >= recipe.augment.min_confidence:
            kept.append(row)
        else:
            counts[row["source"].split(":")[0]]["dropped_low_confidence"] += 1
    return kept


def count_equal(train_texts: list[str], eval_texts: list[str]) -> int:
    eval_set = {normalise(t) for t in eval_texts}
    return sum(normalise(t) in eval_set for t in train_texts)


def write_rows(path: Path, recipe: Recipe, rows: list[dict], label_names: list[str]) -> None:
    """The rows in the training file's own columns (text, label name) plus `source`, in the format of `path`."""
    import csv
    import io
    import json

    d = recipe.data
    records = [{d.text_column: r["text"], d.label_column: label_names[r["label"]], SOURCE_COLUMN: r["source"]}
               for r in rows]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif path.suffix.lower() == ".tsv":  # peftkit reads TSV without quote processing (SST-2 has bare quotes)
        lines = ["\t".join(records[0])]
        lines += ["\t".join(" ".join(str(v).split()) for v in r.values()) for r in records]
        text = "\n".join(lines) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), delimiter=d.delimiter or ",", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def describe(report: dict[str, Any]) -> str:
    lines = [f"augment: {report['original_rows']} original rows + {report['augmented_rows_kept']} new rows -> "
             f"{report['out']}"]
    for method, c in report["per_method"].items():
        dropped = ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in c.items() if k.startswith("dropped_"))
        lines.append(f"  {method}: generated {c.get('generated', 0)}, kept {c.get('kept', 0)}"
                     + (f"; dropped: {dropped}" if dropped else "")
                     + f" ({report['seconds_per_row'][method] * 1000:.1f} ms per original row)")
    if report["original_rows_equal_to_eval"]:
        lines.append(f"  note: {report['original_rows_equal_to_eval']} ORIGINAL training rows already equal an eval "
                     "sentence (normalised); augment leaves the original rows as they are")
    return "\n".join(lines)
