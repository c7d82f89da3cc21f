"""Causal-LM examples -> tokens, exactly as ``trl.SFTTrainer`` will make them, and the audit of what truncation
to max_length leaves to learn.

The audit tokenizes every example as TRL will (same calls, same EOS rule, same masks), so peftkit can say,
before the model is loaded, how many examples truncation cuts and how many it leaves without a single token to
learn from. TRL drops such examples silently (or, with packing, trains on them for nothing): peftkit drops them
itself, counts them, and stops when they are most of a split (trl#1191).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.progress import with_progress
from peftkit.data.causal import (
    IGNORE,
    LARGE_SPLIT,
    CausalData,
    CausalSplitReport,
    classification_prompt,
    pair,
)
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection, Recipe
from peftkit.recipe.task_traits import traits_of


def fit_classification_prompts(causal: CausalData, data: DataSection, tokenizer, max_length: int,
                               encoder: Encoder) -> None:
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
        causal.texts[name] = list(split["text"])  # the report shows the user's texts, not the prompts
        causal.splits[name] = {"prompt": [e["prompt"] for e in examples],
                               "completion": [e["completion"] for e in examples], "label": split["label"]}


def fit_text(text: str, data: DataSection, tokenizer, max_length: int, words: list[str],
             encoder: Encoder) -> tuple[str, bool]:
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
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
    )

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
    if traits_of(recipe.task).label_words:
        fit_classification_prompts(causal, recipe.data, tokenizer, recipe.data.max_length, encoder)
    audit(causal, encoder, truncation_length(recipe), recipe.data.max_dropped_fraction)
    return encoder
