"""Causal-LM data: rows -> TRL dataset examples.

Formats (``data.format``) become TRL's own dataset types:

- ``text`` -> ``{"text"}`` (language modeling, loss on every token);
- ``prompt_completion`` and ``alpaca`` -> ``{"prompt", "completion"}`` (loss on the completion by default);
- ``messages`` -> ``{"messages"}`` (rendered with the tokenizer's chat template);
- ``classification`` (task generative_classification) -> prompt from ``data.prompt_template``, completion
  the label word.

Tokenizing them as TRL will, and the audit of what truncation leaves to learn, live in ``sft_encode.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from peftkit.data.classification import (
    SplitReport,
    hold_out,
    load_classification_data,
    read_raw_splits,
    split_size,
    subsample,
)
from peftkit.data.files import required_columns
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection
from peftkit.recipe.task_traits import traits_of

DEFAULT_CLASSIFICATION_PROMPT = "{text}\nLabel:"
# Stanford Alpaca's two prompts (github.com/tatsu-lab/stanford_alpaca), chosen by whether `input` is empty.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# With data.use_chat_template the chat template frames the turns: the user's message is the instruction itself.
ALPACA_CHAT_PROMPT = "{instruction}\n\n{input}"
ALPACA_CHAT_PROMPT_NO_INPUT = "{instruction}"
IGNORE = -100
LARGE_SPLIT = 5000
"""Splits of at least this many examples show progress while they are prepared (peftkit/core/progress.py)."""


@dataclass
class CausalSplitReport(SplitReport):
    """SplitReport plus what tokenization and truncation to max_length did to the split."""

    tokens: int = 0
    """Tokens after truncation, over the examples kept."""
    loss_tokens: int = 0
    """Tokens the loss is computed on, after truncation, over the examples kept."""
    no_loss_dropped: int = 0
    """Examples left with no token to learn from (e.g. the completion entirely cut by max_length): dropped."""
    loss_cut: int = 0
    """Kept examples whose learnable part (completion, assistant turn) was partly cut by max_length."""
    text_shortened: int = 0
    """generative_classification: texts shortened so the prompt and every label word fit in max_length."""
    prompt_boundary_merged: int = 0
    """Examples whose prompt tokens merge with the completion's first token (the completion should start with a
    space or the prompt end on a token boundary); TRL starts the completion where the two tokenizations diverge."""


@dataclass
class CausalData:
    """Examples per split as columns of TRL's dataset format, with what loading and the audit did to them.

    For generative_classification each split also has a "label" column (gold ids, not given to the trainer), and
    ``label_names`` / ``label_words`` give the classes and their completions.
    """

    splits: dict[str, dict[str, list]]
    reports: dict[str, CausalSplitReport]
    label_names: list[str] | None = None
    label_words: list[str] | None = None
    unused_train: dict[str, list] | None = None
    """Training-file examples outside data.max_train_samples' sample (selection.validation_from: unused_rows)."""
    texts: dict[str, list[str]] = field(default_factory=dict)
    """generative_classification: each split's texts as read, before they became prompts (the report shows them)."""

    def examples(self, split: str) -> list[dict[str, Any]]:
        columns = self.splits[split]
        keys = [k for k in columns if k != "label"]
        return [{k: columns[k][i] for k in keys} for i in range(len(columns[keys[0]]))]

    def report_dict(self) -> dict[str, Any]:
        return {split: asdict(r) | {"skipped": r.skipped} for split, r in self.reports.items()}


# ---------------------------------------------------------------------------------------------
# Rows -> examples
# ---------------------------------------------------------------------------------------------


def load_causal_data(data: DataSection, task: str, seed: int, eval_file: str | None = None) -> CausalData:
    """Read train and eval rows and turn them into TRL examples. Bad rows are skipped (or rejected) with a report.

    ``eval_file`` replaces the recipe's eval split (``peftkit evaluate --data FILE``).
    """
    if traits_of(task).label_words:
        return load_generative_classification(data, seed, eval_file)
    raw = read_raw_splits(data, eval_file)
    splits: dict[str, dict[str, list]] = {}
    reports: dict[str, CausalSplitReport] = {}
    for name, (rows, source) in raw.items():
        splits[name], reports[name] = convert_rows(rows, source, data)
    if "eval" not in splits:
        splits["train"], splits["eval"] = hold_out(splits["train"], data.eval_fraction, seed)
        n_eval = split_size(splits["eval"])
        reports["eval"] = CausalSplitReport(source=f"{reports['train'].source} (held out {data.eval_fraction:.0%})",
                                            rows_read=n_eval, rows_used=n_eval)
        reports["train"].rows_used -= n_eval
    unused_train = subsample(splits, reports, "train", data.max_train_samples, seed)
    subsample(splits, reports, "eval", data.max_eval_samples, seed)
    return CausalData(splits=splits, reports=reports, unused_train=unused_train)


def convert_rows(rows: list[dict], source: str, data: DataSection) -> tuple[dict[str, list], CausalSplitReport]:
    """One format's rows -> columns of TRL examples; rows with nothing to learn from are skipped and counted."""
    report = CausalSplitReport(source=source, rows_read=len(rows))
    check_causal_columns(rows, data, source)
    convert = {"text": _text_example, "prompt_completion": _pair_example, "alpaca": _pair_example,
               "messages": _messages_example}[data.format]
    columns: dict[str, list] = {}
    for i, row in enumerate(rows, start=1):
        example, problem = convert(row, data)
        if problem:
            report.empty_text += 1
            report.note_bad(i, problem, row)
            continue
        for key, value in example.items():
            columns.setdefault(key, []).append(value)
    if report.skipped and data.invalid_rows == "error":
        raise PeftkitError(f"{source}: {report.skipped} bad rows; first: {report.examples_of_bad_rows[0]}. "
                           "Fix the file or set data.invalid_rows: skip")
    if not columns:
        raise PeftkitError(f"{source}: no usable rows left ({report.skipped} skipped); "
                           + "; ".join(report.examples_of_bad_rows[:2]))
    report.rows_used = split_size(columns)
    return columns, report


def check_causal_columns(rows: list[dict], data: DataSection, source: str) -> None:
    present = list(rows[0].keys())
    for column, key in required_columns(data):
        if column not in present:
            raise PeftkitError(f"{source}: column {column!r} ({key}) not found; the data has columns "
                               f"{', '.join(map(str, present))}")


def _text_example(row: dict, data: DataSection) -> tuple[dict, str | None]:
    text = row.get(data.text_column)
    if text is None or not str(text).strip():
        return {}, "empty text"
    return {"text": str(text)}, None


def _pair_example(row: dict, data: DataSection) -> tuple[dict, str | None]:
    values = {k: "" if v is None else str(v) for k, v in row.items()}
    try:
        prompt, completion = _render_pair(values, data)
    except KeyError as e:  # a row without a column the first row had (jsonl rows can differ)
        return {}, f"no column {e.args[0]!r}"
    if not completion.strip():
        return {}, "empty completion"
    return pair(prompt, completion, data.use_chat_template), None


def _render_pair(values: dict[str, str], data: DataSection) -> tuple[str, str]:
    if data.format == "alpaca":
        has_input = bool(values.get("input", "").strip())
        defaults = ((ALPACA_CHAT_PROMPT, ALPACA_CHAT_PROMPT_NO_INPUT) if data.use_chat_template
                    else (ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT))
        prompt_template = data.prompt_template or defaults[0 if has_input else 1]
        prompt = prompt_template.format_map(values)
        completion = (data.completion_template or "{output}").format_map(values)
    else:
        prompt = data.prompt_template.format_map(values) if data.prompt_template else values[data.prompt_column]
        completion = (data.completion_template.format_map(values) if data.completion_template
                      else values[data.completion_column])
    return prompt, completion


def pair(prompt: str, completion: str, chat: bool) -> dict[str, Any]:
    """A TRL prompt/completion example; with the chat template, the prompt is a user turn and the completion
    the assistant's."""
    return {"prompt": [{"role": "user", "content": prompt}] if chat else prompt,
            "completion": completion_part(completion, chat)}


def completion_part(completion: str, chat: bool) -> Any:
    """The completion as TRL takes it: text, or the assistant's turn (stripped: the chat template puts its own
    separator before the assistant's content)."""
    return [{"role": "assistant", "content": completion.strip()}] if chat else completion


def _messages_example(row: dict, data: DataSection) -> tuple[dict, str | None]:
    messages = row.get(data.messages_column)
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return {}, "messages is not a JSON list of {role, content} turns"
    if not isinstance(messages, list) or not messages:
        return {}, "messages is empty or not a list"
    for turn in messages:
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            return {}, "each turn needs a 'role' and a string 'content'"
    return {"messages": [{"role": t["role"], "content": t["content"]} for t in messages]}, None


# ---------------------------------------------------------------------------------------------
# Classification by generation
# ---------------------------------------------------------------------------------------------


def load_generative_classification(data: DataSection, seed: int, eval_file: str | None = None) -> CausalData:
    """Classification rows (read and checked by data.py) as prompt -> label-word examples.

    Texts are not yet fitted to max_length here; `fit_classification_prompts` does that with the tokenizer.
    """
    loaded = load_classification_data(data, seed, eval_file)
    label_words = resolve_label_words(data, loaded.label_names)
    splits, reports = {}, {}
    for name, split in loaded.splits.items():
        splits[name] = {"text": list(split["text"]), "label": list(split["label"])}
        reports[name] = CausalSplitReport(**asdict(loaded.reports[name]))
    unused = loaded.unused_train
    return CausalData(splits=splits, reports=reports, label_names=loaded.label_names, label_words=label_words,
                      unused_train=None if unused is None else {"text": list(unused["text"]),
                                                                "label": list(unused["label"])})


def resolve_label_words(data: DataSection, label_names: list[str]) -> list[str]:
    """The completion for each class, in label-id order: data.label_words, or ' ' + the label name."""
    if data.label_words is None:
        return [" " + name for name in label_names]
    missing = [name for name in label_names if name not in data.label_words]
    extra = [name for name in data.label_words if name not in label_names]
    if missing or extra:
        raise PeftkitError(f"data.label_words must name every class exactly: labels are {label_names}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    return [data.label_words[name] for name in label_names]


def classification_prompt(data: DataSection, text: str) -> str:
    return (data.prompt_template or DEFAULT_CLASSIFICATION_PROMPT).format_map({"text": text})


def format_causal_report(causal: CausalData, max_length: int | None) -> str:
    lines = []
    if causal.label_names:
        lines.append("labels: " + ", ".join(f"{i}={n} -> {w!r}" for i, (n, w) in
                                            enumerate(zip(causal.label_names, causal.label_words))))
    for name, r in causal.reports.items():
        line = f"{name}: {r.rows_used} examples used of {r.rows_read} read from {r.source}"
        if r.skipped:
            line += f"; skipped {r.skipped} bad rows"
        if r.tokens:
            line += f"; {r.tokens:,} tokens, {r.loss_tokens:,} with loss ({100 * r.loss_tokens / r.tokens:.0f}%)"
        lines.append(line)
        counts = [(r.truncated, f"truncated to {max_length} tokens"),
                  (r.loss_cut, "with the learnable part partly cut"),
                  (r.no_loss_dropped, "dropped: nothing left to learn after truncation"),
                  (r.text_shortened, "texts shortened to fit the prompt and label words"),
                  (r.prompt_boundary_merged, "with the prompt's last token merged into the completion "
                                             "(start completions with a space)")]
        lines.extend(f"  {n} {what}" for n, what in counts if n)
        lines.extend(f"  {e}" for e in r.examples_of_bad_rows)
    return "\n".join(lines)
