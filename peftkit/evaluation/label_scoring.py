"""Label scoring: log-likelihoods of label completions after prompts, batched, key/value-cached, sorted by length.

How a label word's tokens make its score is ``evaluate.label_score`` (:class:`LabelScoring`):

- ``sum`` (default): the SUM of the log-probabilities of its completion tokens, the EOS the model was trained to
  emit after the label word included: log P(completion | prompt), exactly the quantity training maximises. After
  fine-tuning the tokens after a label's first are near-certain, so the sum is one decision per label.
- ``mean``: the sum divided by the label's token count (EOS included), the usual zero-shot length normalisation.
  After fine-tuning it favours multi-token labels (their near-certain later tokens dilute the one real decision).
- ``calibrated``: the sum minus the same label's sum after a content-free prompt (the prompt template with the
  text "N/A"): Zhao et al. 2021, "Calibrate before use". It removes the model's prior for each label word,
  including the cost of a long word's extra tokens, so labels of different lengths compete on what the text adds.

Which one is best is measured on a validation split, never on the eval file (recipes/README.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from peftkit.data.causal import IGNORE, completion_part
from peftkit.data.causal_encode import Encoded, Encoder

LABEL_SCORES = ("sum", "mean", "calibrated")
CONTENT_FREE_TEXT = "N/A"


@dataclass(frozen=True)
class LabelScoring:
    """How label words are scored: evaluate.label_score and evaluate.bf16 of the recipe."""

    method: str = "sum"
    content_free_prompt: Any = None  # the prompt with CONTENT_FREE_TEXT as the text; needed by "calibrated"
    bf16: bool = False

    def describe(self) -> str:
        how = {"sum": "sum of the label completion's token log-probabilities (EOS included)",
               "mean": "mean log-probability per token of the label completion (EOS included)",
               "calibrated": "summed log-probability minus the label's under a content-free prompt "
                             f"({CONTENT_FREE_TEXT!r} as the text)"}[self.method]
        return how + (" (bf16 autocast)" if self.bf16 else "")


def score_labels(model, encoder: Encoder, prompts: Sequence[Any], label_words: Sequence[str], chat: bool,
                 batch_size: int = 32, scoring: LabelScoring = LabelScoring()) -> list[list[float]]:
    """scores[i][j]: label j's score after prompt i, as ``scoring.method`` says (see the module docstring)."""
    if scoring.method == "calibrated" and scoring.content_free_prompt is None:
        raise ValueError("calibrated label scores need LabelScoring.content_free_prompt")
    sums, counts = summed_label_scores(model, encoder, prompts, label_words, chat, batch_size, scoring.bf16)
    offsets = None
    if scoring.method == "calibrated":
        offsets = summed_label_scores(model, encoder, [scoring.content_free_prompt], label_words, chat, 1,
                                      scoring.bf16)[0][0]
    return apply_label_score(sums, counts, scoring.method, offsets)


def apply_label_score(sums: list[list[float]], counts: list[list[int]], method: str,
                      offsets: Sequence[float] | None = None) -> list[list[float]]:
    """Summed log-probabilities -> the scores ``method`` asks for (counts: each label's scored tokens)."""
    if method == "sum":
        return sums
    if method == "mean":
        return [[s / max(n, 1) for s, n in zip(row, ns)] for row, ns in zip(sums, counts)]
    if method == "calibrated":
        return [[s - o for s, o in zip(row, offsets)] for row in sums]
    raise ValueError(f"unknown label score {method!r}; choose from {', '.join(LABEL_SCORES)}")


def summed_label_scores(model, encoder: Encoder, prompts: Sequence[Any], label_words: Sequence[str], chat: bool,
                        batch_size: int = 32, bf16: bool = False) -> tuple[list[list[float]], list[list[int]]]:
    """(sums[i][j], counts[i][j]): log P(label j's completion | prompt i) summed over its tokens, and how many
    tokens that is.

    Each prompt is run once and every label continues from its cached keys and values: for SST-2 that halves the
    tokens the model reads, for four AG News labels it cuts them by about 3x. An example whose tokens differ from
    that shape (a prompt whose last token merges into a label, a label tokenized differently in its context) is
    scored the plain way instead, one full sequence per label.
    """
    from collections import Counter

    scorer = Encoder(encoder.tokenizer, completion_only_loss=True, chat_template=encoder.chat_template)
    completions = [completion_part(w, chat) for w in label_words]
    encoded = [[scorer.encode({"prompt": p, "completion": c}) for c in completions] for p in prompts]
    counts = [[sum(t != IGNORE for t in enc.labels[1:]) for enc in row] for row in encoded]
    split = [split_prompt(row) for row in encoded]
    seen = [tuple(map(tuple, parts[1])) for parts in split if parts is not None]
    usual = [list(c) for c in Counter(seen).most_common(1)[0][0]] if seen else None
    shared = [i for i, parts in enumerate(split) if parts is not None and parts[1] == usual]
    shared_set = set(shared)
    rest = [i for i in range(len(prompts)) if i not in shared_set]
    scores: list[list[float]] = [[] for _ in prompts]
    pad = encoder.tokenizer.pad_token_id
    with bf16_autocast(model, bf16):
        if shared:
            for i, row in zip(shared, shared_prompt_logprobs(model, [split[i][0] for i in shared], usual, pad,
                                                             batch_size)):
                scores[i] = row
        flat = sequence_logprobs(model, [enc for i in rest for enc in encoded[i]], pad, batch_size)
    n = len(label_words)
    for k, i in enumerate(rest):
        scores[i] = [flat[k * n + j][0] for j in range(n)]
    return scores, counts


def sequence_logprobs(model, encoded: Sequence[Encoded], pad_token_id: int, batch_size: int = 32,
                      ) -> list[tuple[float, int]]:
    """(sum of log P(token | tokens before it), number of tokens) over each sequence's labelled positions.

    Sequences are batched by length and LEFT-padded, so the labelled tokens (a completion) sit at the end of every
    row and the model computes logits for the last positions only (``logits_to_keep``): a 49k-token vocabulary
    times every position would be most of the memory. Position ids follow the attention mask, so padding changes
    nothing.
    """
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[i].input_ids) for i in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(encoded[i].input_ids)
                ids[row, width - n:] = torch.tensor(encoded[i].input_ids)
                labels[row, width - n:] = torch.tensor(encoded[i].labels)
                mask[row, width - n:] = 1
            labels[:, 0] = IGNORE  # nothing predicts the first token
            labelled_columns = (labels != IGNORE).any(0).nonzero()
            first = int(labelled_columns[0]) if len(labelled_columns) else width - 1
            keep = width - first + 1  # logits at positions first-1 .. width-1 predict tokens first .. width-1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                           use_cache=False, logits_to_keep=keep).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = labels[:, width - keep + 1:].to(device)
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            valid = targets != IGNORE
            sums = (picked * valid).sum(-1).tolist()
            counts = valid.sum(-1).tolist()
            for row, i in enumerate(chunk):
                results[i] = (sums[row], counts[row])
    return results


@contextmanager
def bf16_autocast(model, enabled: bool):
    """bf16 autocast for the model's body, its LM head kept in float32. The head makes the logits the scores
    come from: in bf16 they would be rounded to ~3 significant digits (0.06 at a logit of 16); in float32 it
    costs little, since only the few positions that score a label reach it (logits_to_keep)."""
    if not enabled:
        yield
        return
    import torch

    device_type = next(model.parameters()).device.type
    head = model.get_output_embeddings()
    original = head.forward

    dtype = getattr(head, "weight", torch.empty(0)).dtype  # float32 unless the recipe loaded the model in 16 bits

    def float32_head(hidden, *args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return original(hidden.to(dtype), *args, **kwargs)

    head.forward = float32_head
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        del head.forward  # back to the class's forward


def split_prompt(row: Sequence[Encoded]) -> tuple[list[int], list[list[int]]] | None:
    """(prompt ids, each label's completion ids) when every label's sequence starts with the same prompt tokens
    and the labelled tokens are exactly what follows them; else None."""
    parts = []
    for enc in row:
        start = next((t for t, label in enumerate(enc.labels) if label != IGNORE), len(enc.labels))
        if start == 0 or enc.prompt_boundary_merged or enc.labels[start:] != enc.input_ids[start:]:
            return None
        parts.append((enc.input_ids[:start], enc.input_ids[start:]))
    prompt = parts[0][0]
    return (prompt, [c for _, c in parts]) if all(p == prompt for p, _ in parts) else None


def shared_prompt_logprobs(model, prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_token_id: int,
                           batch_size: int) -> list[list[float]]:
    """results[i][j]: summed log-probability of completions[j] after prompts[i].

    The LEFT-padded prompts run once; their last logits score every completion's first token. The completions'
    other tokens are read in one more forward pass per distinct completion length (one pass in all when every
    label word is one token, as for SST-2): the prompts' key/value cache is repeated along the batch, once per
    label of that length (row b * k + j continues prompt b with the group's label j), so no label waits for
    another and nothing is padded.
    """
    import torch

    results: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = next(model.parameters()).device
    groups: dict[int, list[int]] = {}  # tokens after the first -> the labels with that many
    for j, completion in enumerate(completions):
        if len(completion) > 1:
            groups.setdefault(len(completion) - 1, []).append(j)
    first_ids = torch.tensor([c[0] for c in completions], device=device)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=bool(groups),
                        logits_to_keep=1)
            totals = torch.log_softmax(out.logits[:, -1].float(), -1)[:, first_ids]  # (rows, labels)
            for g, (steps, labels) in enumerate(groups.items()):
                # a forward pass appends to the cache it is given: every group but the last reads a copy
                cache = out.past_key_values if g == len(groups) - 1 else copy.deepcopy(out.past_key_values)
                totals[:, labels] += continuation_logprobs(model, cache, mask, positions,
                                                           [completions[j] for j in labels], steps)
            for row, i in enumerate(chunk):
                results[i] = totals[row].tolist()
    return results


def continuation_logprobs(model, cache, mask, positions, completions: Sequence[list[int]], steps: int):
    """(rows, labels): summed log-probability of each completion's tokens after its first (all ``steps`` + 1
    tokens long), every label in one forward pass over the prompts' cache repeated once per label."""
    import torch

    rows, n = mask.shape[0], len(completions)
    tokens = torch.tensor(completions, device=mask.device).repeat(rows, 1)  # row b * n + j: label j
    if cache is not None:  # a model without a cache (tests' hand-written ones) reads only the given tokens
        cache.batch_repeat_interleave(n)
    extended = torch.cat([mask.repeat_interleave(n, 0), torch.ones_like(tokens[:, :steps])], 1)
    logits = model(input_ids=tokens[:, :steps], attention_mask=extended,
                   position_ids=positions[:, -1:].repeat_interleave(n, 0) + 1 + torch.arange(steps, device=mask.device),
                   past_key_values=cache, use_cache=True).logits.float()
    picked = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked.sum(-1).view(rows, n)
