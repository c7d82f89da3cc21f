"""Causal-LM data: rows -> TRL dataset examples, and an audit of what truncation to max_length leaves to learn.

Formats (``data.format``) become TRL's own dataset types:

- ``text`` -> ``{"text"}`` (language modeling, loss on every token);
- ``prompt_completion`` and ``alpaca`` -> ``{"prompt", "completion"}`` (loss on the completion by default);
- ``messages`` -> ``{"messages"}`` (rendered with the tokenizer's chat template);
- ``classification`` (task generative_classification) -> prompt from ``data.prompt_template``, completion
  the label word.

The audit tokenizes every example exactly as ``trl.SFTTrainer`` will (same calls, same EOS rule, same masks), so
peftkit can say, before the model is loaded, how many examples truncation cuts and how many it leaves without a
single token to learn from. TRL drops such examples silently (or, with packing, trains on them for nothing):
peftkit drops them itself, counts them, and stops when they are most of a split (trl#1191).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftkit.data import SplitReport, hold_out, load_classification_data, read_raw_splits, split_size, subsample
from peftkit.errors import PeftkitError
from peftkit.progress import with_progress
from peftkit.recipe import DataSection, Recipe

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
"""Splits of at least this many examples show progress while they are prepared (peftkit/progress.py)."""


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
    if task == "generative_classification":
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
    subsample(splits, reports, "train", data.max_train_samples, seed)
    subsample(splits, reports, "eval", data.max_eval_samples, seed)
    return CausalData(splits=splits, reports=reports)


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


def required_columns(data: DataSection) -> list[tuple[str, str]]:
    """(column, the recipe key that names it) pairs a format needs, templates' placeholders included."""
    import string

    def placeholders(template: str | None, key: str) -> list[tuple[str, str]]:
        if template is None:
            return []
        return [(name, key) for _, name, _, _ in string.Formatter().parse(template) if name]

    if data.format == "text":
        return [(data.text_column, "data.text_column")]
    if data.format == "messages":
        return [(data.messages_column, "data.messages_column")]
    if data.format == "alpaca":
        prompt = placeholders(data.prompt_template, "data.prompt_template") or [("instruction", "data.format: alpaca")]
        completion = placeholders(data.completion_template, "data.completion_template") or [
            ("output", "data.format: alpaca")]
        return prompt + completion
    prompt = placeholders(data.prompt_template, "data.prompt_template") or [(data.prompt_column, "data.prompt_column")]
    completion = placeholders(data.completion_template, "data.completion_template") or [
        (data.completion_column, "data.completion_column")]
    return prompt + completion


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
    return CausalData(splits=splits, reports=reports,
                      label_names=loaded.label_names, label_words=label_words)


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


def fit_classification_prompts(causal: CausalData, data: DataSection, tokenizer, max_length: int,
                               encoder: "Encoder") -> None:
    """Turn each split's texts into prompt/completion examples whose longest label still fits in max_length.

    Cutting the end of a long text keeps the example; letting max_length cut the label word would leave it with
    nothing to learn (or score). Shortened texts are counted.
    """
    words = causal.label_words
    for name, split in causal.splits.items():
        report = causal.reports[name]
        examples = []
        rows = with_progress(zip(split["text"], split["label"]), len(split["text"]), f"fitting {name} prompts",
                             min_total=LARGE_SPLIT)
        for text, label in rows:
            prompt, shortened = fit_text(text, data, tokenizer, max_length, words, encoder)
            examples.append(pair(prompt, words[label], data.use_chat_template))
            report.text_shortened += shortened
        causal.splits[name] = {"prompt": [e["prompt"] for e in examples],
                               "completion": [e["completion"] for e in examples], "label": split["label"]}


def fit_text(text: str, data: DataSection, tokenizer, max_length: int, words: list[str],
             encoder: "Encoder") -> tuple[str, bool]:
    """The prompt for `text`, with the text's end cut (by tokens) until prompt + every label fits max_length."""
    budget_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(budget_ids)
    for _ in range(8):  # re-tokenizing a cut text can shift a token or two: converge in a few rounds
        candidate = text if keep == len(budget_ids) else tokenizer.decode(budget_ids[:keep]).rstrip()
        prompt = classification_prompt(data, candidate)
        longest = max(len(encoder.encode(pair(prompt, w, data.use_chat_template)).input_ids) for w in words)
        if longest <= max_length:
            return prompt, keep < len(budget_ids)
        keep -= longest - max_length
        if keep <= 0:
            raise PeftkitError(f"data.max_length {max_length} leaves no room for the text: the prompt template and "
                               "the longest label word alone exceed it; raise data.max_length or shorten "
                               "data.prompt_template / data.label_words")
    raise PeftkitError(f"could not fit a text into data.max_length {max_length}; raise data.max_length")


# ---------------------------------------------------------------------------------------------
# Tokenization as TRL does it, and the audit
# ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_boundary_merged: bool = False


@dataclass
class Encoder:
    """Tokenizes one example the way ``trl.SFTTrainer._prepare_dataset`` does (TRL 1.16), labels included.

    Mirrors its ``tokenize_fn`` (EOS appended to non-chat text and completions, completion start at the common
    prefix of prompt and prompt+completion, assistant masks from the chat template) and ``build_labels``.
    A test checks this against TRL's own prepared dataset for every format, so a TRL change shows up there.
    """

    tokenizer: Any
    completion_only_loss: bool | None = None
    """None: on for prompt/completion examples, as in TRL."""
    assistant_only_loss: bool = False
    chat_template: str | None = None
    """The training template TRL swaps in for assistant_only_loss (None: the tokenizer's own)."""

    def encode(self, example: dict[str, Any]) -> Encoded:
        tok = self.tokenizer
        chat_kwargs = {"chat_template": self.chat_template, "tools": None}
        masks: list[list[int]] = []
        merged = False
        if "prompt" in example:
            conversational = isinstance(example["prompt"], list)
            if conversational:
                prompt_ids = self._chat(example["prompt"], add_generation_prompt=True, **chat_kwargs)["input_ids"]
                full = self._chat(example["prompt"] + example["completion"],
                                  return_assistant_tokens_mask=self.assistant_only_loss, **chat_kwargs)
            else:
                completion = with_eos(example["completion"], tok.eos_token)
                prompt_ids = tok(text=example["prompt"])["input_ids"]
                full = tok(text=example["prompt"] + completion)
            ids = list(full["input_ids"])
            start = common_prefix_length(prompt_ids, ids)
            merged = start < len(prompt_ids)
            completion_only = True if self.completion_only_loss is None else self.completion_only_loss
            if completion_only:
                masks.append([0] * start + [1] * (len(ids) - start))
        elif "messages" in example:
            full = self._chat(example["messages"], return_assistant_tokens_mask=self.assistant_only_loss,
                              **chat_kwargs)
            ids = list(full["input_ids"])
        else:
            ids = list(tok(text=with_eos(example["text"], tok.eos_token))["input_ids"])
            full = {}
        if self.assistant_only_loss and "assistant_masks" in full:
            masks.append(list(full["assistant_masks"]))
        labels = [t if all(bits) else IGNORE for t, *bits in zip(ids, *masks)]
        return Encoded(ids, labels, merged)

    def _chat(self, messages: list[dict], **kwargs) -> dict[str, list[int]]:
        return self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def with_eos(text: str, eos: str | None) -> str:
    """TRL appends the EOS token to non-chat texts and completions that do not already end with it."""
    return text if not eos or text.endswith(eos) else text + eos


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def learnable_positions(labels: list[int], length: int) -> int:
    """Loss targets among the first `length` tokens. Position 0 is never a target: nothing comes before it."""
    return sum(1 for t in labels[1:length] if t != IGNORE)


def encoder_for(recipe: Recipe, tokenizer) -> Encoder:
    """The Encoder that matches the recipe's loss options and the chat template TRL will render with."""
    t = recipe.train
    assistant_only = bool(t.get("assistant_only_loss"))
    needs_chat = recipe.data.format == "messages" or recipe.data.use_chat_template
    if needs_chat and not tokenizer.chat_template:
        asked = "data.use_chat_template" if recipe.data.use_chat_template else "data.format messages"
        raise PeftkitError(f"model {recipe.model.name_or_path!r} has no chat template, which {asked} needs; set "
                           "train.chat_template_path to a .jinja template, or use prompt_completion data without "
                           "data.use_chat_template")
    return Encoder(tokenizer, completion_only_loss=t.get("completion_only_loss"),
                   assistant_only_loss=assistant_only,
                   chat_template=training_chat_template(tokenizer, recipe) if assistant_only else None)


def training_chat_template(tokenizer, recipe: Recipe) -> str | None:
    """The template TRL renders with under assistant_only_loss: the tokenizer's when it marks assistant turns
    with {% generation %}, else TRL's patched copy for templates it knows. Anything else stops here, before the
    model is loaded, rather than inside the trainer."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise PeftkitError(
            f"train.assistant_only_loss: the chat template of {recipe.model.name_or_path!r} does not mark the "
            "assistant's tokens ({% generation %} ... {% endgeneration %}) and TRL has no training version of it. "
            "Set train.chat_template_path to a .jinja copy of the template with those markers around the "
            "assistant's content, or drop assistant_only_loss (train on every token)") from None


def apply_tokenizer_settings(tokenizer, train: dict[str, Any]) -> None:
    """The train-section settings TRL applies to the tokenizer (chat template file, EOS token), applied now so
    the audit tokenizes exactly as training will."""
    path = train.get("chat_template_path")
    if path:
        p = Path(path)
        if not p.is_file():
            raise PeftkitError(f"train.chat_template_path: file not found: {p}")
        tokenizer.chat_template = p.read_text(encoding="utf-8")
    eos = train.get("eos_token")
    if eos:
        if eos not in tokenizer.get_vocab():
            raise PeftkitError(f"train.eos_token {eos!r} is not a token of this tokenizer")
        tokenizer.eos_token = eos


def audit_split(examples: list[dict], encoder: Encoder, max_length: int | None, report: CausalSplitReport,
                ) -> list[int]:
    """Tokenize each example as TRL will, count what truncation to max_length does, and return the indices of
    the examples that keep at least one token to learn from. ``max_length`` None: no truncation."""
    keep = []
    for i, example in enumerate(with_progress(examples, len(examples), "tokenizing", min_total=LARGE_SPLIT)):
        enc = encoder.encode(example)
        length = len(enc.input_ids) if max_length is None else min(len(enc.input_ids), max_length)
        learnable = learnable_positions(enc.labels, length)
        report.truncated += length < len(enc.input_ids)
        report.prompt_boundary_merged += enc.prompt_boundary_merged
        if learnable == 0:
            report.no_loss_dropped += 1
            if len(report.examples_of_bad_rows) < 5:
                report.examples_of_bad_rows.append(
                    f"example {i + 1}: no token to learn from after truncation to {max_length} "
                    f"({len(enc.input_ids)} tokens)")
            continue
        report.loss_cut += learnable < learnable_positions(enc.labels, len(enc.input_ids))
        report.tokens += length
        report.loss_tokens += learnable
        keep.append(i)
    report.rows_used = len(keep)
    return keep


def audit(causal: CausalData, encoder: Encoder, max_length: int | None, max_dropped_fraction: float) -> None:
    """Audit every split, drop the examples with nothing to learn, and stop if that is most of a split."""
    for name, columns in causal.splits.items():
        report = causal.reports[name]
        examples = causal.examples(name)
        keep = audit_split(examples, encoder, max_length, report)
        dropped = len(examples) - len(keep)
        if dropped > len(examples) * max_dropped_fraction or not keep:
            raise PeftkitError(
                f"{report.source}: truncation to data.max_length={max_length} leaves {dropped} of {len(examples)} "
                f"{name} examples with no token to learn from (the completion or assistant turn is cut off "
                f"entirely). Raise data.max_length, shorten the prompts, or raise data.max_dropped_fraction "
                f"(now {max_dropped_fraction}) to accept it")
        causal.splits[name] = {k: [v[i] for i in keep] for k, v in columns.items()}


def truncation_length(recipe: Recipe) -> int | None:
    """Where TRL cuts each example: data.max_length, except that bfd_split and wrapped packing split long
    sequences across rows instead of cutting them."""
    t = recipe.train
    if t.get("packing") and t.get("packing_strategy", "bfd") != "bfd":
        return None
    return recipe.data.max_length


def prepare_examples(recipe: Recipe, tokenizer, causal: CausalData) -> Encoder:
    """Everything between reading the rows and loading the model: the tokenizer settings TRL will apply,
    classification prompts fitted to max_length, and the audit (which drops examples with nothing to learn).
    Returns the Encoder that tokenizes as training does."""
    apply_tokenizer_settings(tokenizer, recipe.train)
    encoder = encoder_for(recipe, tokenizer)
    if recipe.task == "generative_classification":
        fit_classification_prompts(causal, recipe.data, tokenizer, recipe.data.max_length, encoder)
    audit(causal, encoder, truncation_length(recipe), recipe.data.max_dropped_fraction)
    return encoder


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
