"""Evaluating causal-LM runs: classification by label scoring, and held-out loss for SFT.

Classification by generation does not generate: for each example it scores every label's completion under the
model and predicts the most likely one, so there is never an unparseable answer.

A label's score is the SUM of the log-probabilities of its completion tokens, the EOS the model was trained to
emit after the label word included: that is log P(completion | prompt), exactly the quantity training maximises.
Length normalisation (the mean per token) is a zero-shot heuristic that breaks this: after fine-tuning, the tokens
after a label's first token are near-certain (log-prob ~ 0), so a mean divides one real decision by the label's
token count and favours multi-token labels (" Sci/Tech" is three tokens, " World" one). With the EOS included, a
label that is a prefix of another (" pos" / " positive") is still told apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from peftkit.core.progress import map_in_chunks
from peftkit.data.causal import IGNORE, CausalData, completion_part
from peftkit.data.causal_encode import Encoded, Encoder
from peftkit.evaluation.metrics import classification_metrics

SCORING = "sum of the label completion's token log-probabilities (EOS included)"


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


def score_labels(model, encoder: Encoder, prompts: Sequence[Any], label_words: Sequence[str], chat: bool,
                 batch_size: int = 32) -> list[list[float]]:
    """scores[i][j]: log P(label j's completion | prompt i), summed over its tokens (see the module docstring).

    Each prompt is run once and every label continues from its cached keys and values: for SST-2 that halves the
    tokens the model reads, for four AG News labels it cuts them by about 3x. An example whose tokens differ from
    that shape (a prompt whose last token merges into a label, a label tokenized differently in its context) is
    scored the plain way instead, one full sequence per label.
    """
    from collections import Counter

    scorer = Encoder(encoder.tokenizer, completion_only_loss=True, chat_template=encoder.chat_template)
    completions = [completion_part(w, chat) for w in label_words]
    encoded = [[scorer.encode({"prompt": p, "completion": c}) for c in completions] for p in prompts]
    split = [split_prompt(row) for row in encoded]
    seen = [tuple(map(tuple, parts[1])) for parts in split if parts is not None]
    usual = [list(c) for c in Counter(seen).most_common(1)[0][0]] if seen else None
    shared = [i for i, parts in enumerate(split) if parts is not None and parts[1] == usual]
    rest = [i for i in range(len(prompts)) if i not in set(shared)]
    scores: list[list[float]] = [[] for _ in prompts]
    pad = encoder.tokenizer.pad_token_id
    for i, row in zip(shared, shared_prompt_logprobs(model, [split[i][0] for i in shared], usual, pad, batch_size)):
        scores[i] = row
    flat = sequence_logprobs(model, [enc for i in rest for enc in encoded[i]], pad, batch_size)
    n = len(label_words)
    for k, i in enumerate(rest):
        scores[i] = [flat[k * n + j][0] for j in range(n)]
    return scores


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
    """results[i][j]: summed log-probability of completions[j] after prompts[i]. The LEFT-padded prompts run once;
    their last logits score each completion's first token, and its other tokens are read on a copy of the
    prompts' key/value cache (a forward pass appends to the cache it is given)."""
    import copy

    import torch

    results: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = next(model.parameters()).device
    with torch.no_grad():
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
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), -1)
            for completion in completions:
                totals = first[:, completion[0]]
                if len(completion) > 1:
                    steps = len(completion) - 1
                    tokens = torch.tensor(completion, device=device).expand(len(chunk), -1)
                    extended = torch.cat([mask, torch.ones_like(mask[:, :steps])], 1)
                    logits = model(input_ids=tokens[:, :-1], attention_mask=extended,
                                   position_ids=positions[:, -1:] + 1 + torch.arange(steps, device=device),
                                   past_key_values=copy.deepcopy(out.past_key_values), use_cache=True).logits.float()
                    picked = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
                    totals = totals + picked.sum(-1)
                for row, i in enumerate(chunk):
                    results[i].append(float(totals[row]))
    return results


def evaluate_generative(model, encoder: Encoder, causal: CausalData, chat: bool, batch_size: int,
                        split: str = "eval") -> dict[str, Any]:
    """Label-scoring predictions on a split -> the same metrics as the classification-head path."""
    was_training = model.training
    model.eval()
    started = time.time()
    scores = map_in_chunks(lambda prompts: score_labels(model, encoder, prompts, causal.label_words, chat, batch_size),
                           causal.splits[split]["prompt"], 4 * batch_size, "label scoring", key=lambda p: len(str(p)))
    model.train(was_training)
    predictions = [max(range(len(row)), key=row.__getitem__) for row in scores]
    metrics = classification_metrics(causal.splits[split]["label"], predictions, causal.label_names)
    metrics["method"] = "label scoring: " + SCORING
    metrics["label_words"] = dict(zip(causal.label_names, causal.label_words))
    metrics["eval_seconds"] = round(time.time() - started, 1)
    return metrics


def evaluate_lm_loss(model, encoder: Encoder, causal: CausalData, max_length: int, batch_size: int,
                     split: str = "eval") -> dict[str, Any]:
    """Held-out loss and perplexity of an SFT run: mean negative log-likelihood per loss token, the tokens and
    truncation exactly as in training."""
    was_training = model.training
    model.eval()
    encoded = []
    for example in causal.examples(split):
        enc = encoder.encode(example)
        encoded.append(Encoded(enc.input_ids[:max_length], enc.labels[:max_length]))
    results = sequence_logprobs(model, encoded, encoder.tokenizer.pad_token_id, batch_size)
    model.train(was_training)
    total = sum(s for s, _ in results)
    tokens = sum(n for _, n in results)
    loss = -total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": tokens,
            "num_examples": len(encoded)}


def format_lm_metrics(metrics: dict[str, Any]) -> str:
    return (f"eval loss {metrics['eval_loss']:.4f}   perplexity {metrics['perplexity']:.2f}   "
            f"({metrics['num_examples']} examples, {metrics['loss_tokens']:,} loss tokens)")
