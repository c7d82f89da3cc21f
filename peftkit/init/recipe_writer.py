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
- **model selection** (validation split, early stopping, training length): see :func:`training_plan`. A
  seeded, stratified validation split carved from the training rows (never the eval file) ranks checkpoints
  on macro F1; training ends when the validation curve stops rising (early stopping), and the best checkpoint
  is the model. The number of epochs is an upper bound set from the data: enough passes for a freshly
  initialised head of K classes to see each class a few hundred times, and more for small files. The learning
  rates and batch sizes are those of the shipped SST-2 recipes for the same model family. Nothing is chosen by
  looking at the eval file's results.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from peftkit.errors import PeftkitError
from peftkit.init.detect import DELIMITER_NAMES, Profile, check_eval_file, detect_layout, profile, value
from peftkit.recipe.task_traits import classifier_task, traits_of

DEFAULT_MODEL = "packaged:all-minilm-l6-v2"
ENCODER_TYPES = ("bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "albert",
                 "mpnet", "modernbert", "camembert", "xlnet")


# ---------------------------------------------------------------------------------------------
# Model: task, label words, lengths
# ---------------------------------------------------------------------------------------------


def is_causal_lm(model_name: str) -> bool:
    """True for decoder-only language models (``*ForCausalLM``), False for encoders (BERT family)."""
    from transformers import AutoConfig

    from peftkit.model.base import local_path
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
    from peftkit.model.base import load_tokenizer
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


@dataclass(frozen=True)
class TrainingPlan:
    """How long to train and how to choose the checkpoint, from the data's size and classes."""

    train_rows: int        # rows training sees (the file's usable rows less any held-out eval share)
    validation_rows: int   # carved from train_rows for model selection
    epochs: int            # an upper bound: early stopping on the validation split usually ends sooner
    evaluations: int       # validation passes over the whole run (every 1/N of the steps)
    patience: int          # evaluations without improvement before stopping


# Why these numbers (measured before this rule existed, on data none of the reported test sets come from):
# a 77-intent banking file (10k rows, ~117 per class) reached 0.614 test accuracy after one epoch with the
# MiniLM head and 0.906 with a validation split, up to 6 epochs (~700 passes over each class) and early stopping.
# A freshly initialised K-way head needs each class seen a few hundred times, whatever K is, so the upper
# bound on epochs grows with K / rows and early stopping decides where, inside it, the run ends.
SEEN_PER_CLASS = 700      # examples of each class the longest run shows the model (upper bound)
MIN_EXAMPLES_SEEN = 3000  # small files: at least this many examples over the whole run
MAX_EPOCHS = 20
MIN_EPOCHS = 2            # one pass is never enough to see the validation curve turn
VALIDATION_SHARE = 0.1    # of the training rows ...
VALIDATION_PER_CLASS = 10  # ... but at least this many rows per class (macro F1 on 2 rows a class is noise) ...
VALIDATION_CAP = 2000     # ... and at most this many beyond that (each evaluation pass costs time)
EVALUATIONS_PER_EPOCH = 2
MIN_EVALUATIONS = 6
PATIENCE = 3              # 1.5 epochs without a better validation macro F1


def training_plan(train_rows: int, classes: int) -> TrainingPlan:
    """Validation size, epochs (an upper bound) and evaluation schedule for `train_rows` rows of `classes` classes."""
    wanted = max(round(VALIDATION_SHARE * train_rows), min(VALIDATION_PER_CLASS * classes, round(0.25 * train_rows)))
    validation = max(1, min(wanted, max(VALIDATION_CAP, VALIDATION_PER_CLASS * classes)))
    fit_rows = max(1, train_rows - validation)
    examples = max(SEEN_PER_CLASS * classes, MIN_EXAMPLES_SEEN)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(examples / fit_rows)))
    evaluations = max(MIN_EVALUATIONS, EVALUATIONS_PER_EPOCH * epochs)
    return TrainingPlan(train_rows, validation, epochs, evaluations, PATIENCE)


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
    from peftkit.core.atomic import write_text_atomic
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
        task = classifier_task(causal)
    # a head on a causal LM works (AutoModelForSequenceClassification), as in recipes/sst2/smollm2_lora_cls; label
    # words on an encoder do not
    if traits_of(task).label_words and not causal:
        raise PeftkitError(f"--task {task} needs a causal LM (e.g. packaged:smollm2-135m-instruct); "
                           f"{model} is an encoder: use --task {classifier_task(causal=False)}")
    tokenizer = load_init_tokenizer(model)
    texts = [value(r.get(prof.text_column)) for r in prof.rows if value(r.get(prof.text_column))]
    words, word_tokens = ({}, {})
    extra = 0
    if traits_of(task).label_words:
        words, word_tokens = choose_label_words(prof.label_names, tokenizer)
        extra = len(tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]) + max(word_tokens.values()) + 1
    max_length, longest = token_length(texts, tokenizer, extra, seed)

    n_train = prof.usable - (round(prof.usable * eval_fraction) if eval_fraction else 0)
    plan = training_plan(n_train, len(prof.label_names))
    run_name = output_dir or f"runs/{re.sub(r'[^A-Za-z0-9_.-]+', '-', train_path.stem)}-{short_model_name(model)}"
    command = f"peftkit train {out_path}"
    flags = prof.flags(eval_fraction)
    text = render(prof, eval_info, eval_file, eval_fraction, model, task, words, word_tokens, max_length, longest,
                  plan, run_name, command, flags, data_file)
    try:
        recipe = recipe_from_dict(yaml.safe_load(text), where=str(out_path))
        recipe.source = str(out_path)
        validate(recipe)
    except PeftkitError as e:  # a bug here, not the user's: say what would have been written
        raise PeftkitError(f"internal: the recipe peftkit init built does not validate ({e}); "
                           "please report it") from None
    write_text_atomic(out_path, text)
    return out_path, summary(prof, eval_info, eval_fraction, task, model, words, word_tokens, flags, out_path,
                             max_length)


SHOWN_CLASSES = 20  # beyond this many classes, the counts are summarised (a 150-class line helps nobody)


def class_counts_line(prof: Profile) -> str:
    """Each class with its rows, or for many classes the range and the smallest ones."""
    if len(prof.label_names) <= SHOWN_CLASSES:
        return ", ".join(f"{n} {prof.counts[n]}" for n in prof.label_names)
    sizes = sorted(prof.counts[n] for n in prof.label_names)
    smallest = sorted(prof.label_names, key=lambda n: prof.counts[n])[:5]
    if sizes[0] == sizes[-1]:
        return f"{len(sizes)} classes, {sizes[0]} rows each"
    return (f"{len(sizes)} classes, {sizes[0]}-{sizes[-1]} rows each (median {sizes[len(sizes) // 2]}); smallest: "
            + ", ".join(f"{n} {prof.counts[n]}" for n in smallest))


def wrapped_list(key: str, values: list[str], width: int = 116) -> list[str]:
    """`  key: [a, b, ...]` as YAML flow lines of at most `width` characters (continuations indented)."""
    lines, line = [], f"  {key}: ["
    for i, item in enumerate(y(v) for v in values):
        piece = item + ("]" if i == len(values) - 1 else ",")
        if len(line) + len(piece) + 1 > width and not line.endswith("["):
            lines.append(line)
            line = "    " + piece
        else:
            line += ("" if line.endswith("[") else " ") + piece
    return lines + [line]


def render(prof: Profile, eval_info, eval_file, eval_fraction, model, task, words, word_tokens, max_length, longest,
           plan: TrainingPlan, run_name, command, flags, data_file) -> str:
    layout = prof.layout
    generative = traits_of(task).label_words
    counts = class_counts_line(prof)
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
                     f"(seeded; {plan.train_rows:,} rows left to train on)")
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
    ]
    # the note trails a one-line list, and stands above a wrapped one (so no line grows past the wrap width)
    names = wrapped_list("label_names", prof.label_names)
    note = "id order; the file's labels may be these names or their ids"
    lines += [f"{names[0]}   # {note}"] if len(names) == 1 else [f"  # label_names: {note}", *names]
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
            f"  num_train_epochs: {plan.epochs}              # an upper bound: early stopping ends sooner (selection)",
            "  per_device_train_batch_size: 8   # packed rows of up to max_length tokens",
            "  packing: true",
        ]
    else:
        lines += [
            "  learning_rate: 1.0e-3            # as the built-in quickstart (MiniLM + LoRA)",
            f"  num_train_epochs: {plan.epochs}              # an upper bound: early stopping ends sooner (selection)",
            "  per_device_train_batch_size: 32",
        ]
    lines += ["  logging_steps: 25", *selection_lines(plan, len(prof.label_names)),
              "keep_checkpoints: last             # none: only adapter/ stays (then --resume says the run is finished)"]
    return "\n".join(lines) + "\n"


def selection_lines(plan: TrainingPlan, classes: int) -> list[str]:
    """The selection section, each rule said where it applies."""
    fit = plan.train_rows - plan.validation_rows
    return [
        f"# Model selection: {plan.validation_rows:,} of the {plan.train_rows:,} training rows (stratified, seeded) "
        "rank the checkpoints; the eval file is read once, at the end, by the best one.",
        f"# Length: up to {plan.epochs} epochs = each of the {classes} classes seen "
        f"~{plan.epochs * fit / classes:,.0f} "
        f"times (rule: >= {SEEN_PER_CLASS} per class and >= {MIN_EXAMPLES_SEEN:,} examples, {MIN_EPOCHS}-{MAX_EPOCHS} "
        f"epochs); early stopping ends the run when validation macro F1 has not improved for {plan.patience} "
        f"evaluations ({plan.evaluations} over the whole run).",
        "selection:",
        f"  validation_rows: {plan.validation_rows}            # 10% of the training rows, >= 10 per class, "
        "<= 2,000 beyond that",
        "  metric: macro_f1                 # every class counts the same: a class never predicted shows",
        f"  evaluations: {plan.evaluations}                  # validation passes (and checkpoints) over the run",
        f"  early_stopping_patience: {plan.patience}",
    ]


def summary(prof: Profile, eval_info, eval_fraction, task, model, words, word_tokens, flags, out_path: Path,
            max_length: int) -> str:
    layout = prof.layout
    lines = [f"{layout.path}: {layout.describe()}, {len(prof.rows):,} rows; text column {prof.text_column!r}, "
             f"label column {prof.label_column!r}"]
    width = max(len(n) for n in prof.label_names)
    total = max(1, prof.usable)
    if len(prof.label_names) > SHOWN_CLASSES:
        lines.append("  " + class_counts_line(prof))
    else:
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
        lines.append("label words: " + ", ".join(f"{n} -> {w!r} ({word_tokens[n]} "
                                                 f"token{'s' if word_tokens[n] > 1 else ''})"
                                                 for n, w in words.items()))
    lines += [f"wrote {out_path}", f"next: peftkit validate {out_path} && peftkit train {out_path}"]
    return "\n".join(lines)
