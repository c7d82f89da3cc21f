"""What the worker thread runs: classification forward passes and text generation, without gradients.

Everything here runs on the batcher's single worker thread, so nothing else touches a model meanwhile (which is
what makes `set_adapter` safe for the paths that need it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peftkit.data.causal import pair
from peftkit.data.causal_encode import fit_text
from peftkit.evaluation.causal import label_scoring, score_labels
from peftkit.inference.runs import BaseGroup, ServedRun


@dataclass
class Forward:
    """What one forward pass held, for the metrics."""

    rows: int
    adapters: int


def classify_head(group: BaseGroup, items: list[tuple[ServedRun, str]], max_batch_size: int,
                  on_forward: Callable[[Forward], None]) -> list[list[float]]:
    """Label probabilities for (run, text) pairs of one base, runs mixed freely within a forward pass, each
    row's logits divided by its run's temperature (calibration.json; 1.0 without one).

    Texts are tokenized by their own run's tokenizer, truncated to that run's data.max_length (as in training),
    sorted by length so each pass pads little, and sent with PEFT's `adapter_names` so every row goes through its
    own run's LoRA weights and classification head.
    """
    import torch

    encoded = [run.tokenizer(text, truncation=True, max_length=run.max_length)["input_ids"] for run, text in items]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
    probs: list[list[float]] = [[] for _ in items]
    with torch.inference_mode():
        for start in range(0, len(order), max_batch_size):
            chunk = order[start:start + max_batch_size]
            ids, mask = pad([encoded[i] for i in chunk], group.pad_token_id, group.padding_side)
            names = [items[i][0].adapter for i in chunk]
            logits = forward_with_adapters(group, names, input_ids=ids, attention_mask=mask).logits
            on_forward(Forward(rows=len(chunk), adapters=len(set(names))))
            temperatures = torch.tensor([[items[i][0].temperature] for i in chunk])  # each row its own run's
            for row, p in zip(chunk, torch.softmax(logits.float() / temperatures, -1).tolist()):
                probs[row] = p
    return probs


def forward_with_adapters(group: BaseGroup, names: list[str], **inputs):
    """One pass with row i through adapter names[i]. PEFT's mixed-batch path splits every adapted layer's input
    per adapter (measured ~30% slower on MiniLM at batch 32), so a pass with one adapter selects it instead."""
    if len(set(names)) > 1:
        return group.model(**inputs, adapter_names=names)
    if group.model.active_adapter != names[0]:
        group.model.set_adapter(names[0])
    return group.model(**inputs)


def pad(rows: list[list[int]], pad_id: int, side: str):
    """(input_ids, attention_mask) tensors, padded on the tokenizer's side to the longest row."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def classify_generative(run: ServedRun, texts: list[str], max_batch_size: int,
                        on_forward: Callable[[Forward], None]) -> list[list[float]]:
    """Label probabilities of a generative_classification run: each label's completion scored exactly as
    `peftkit evaluate` does (peftkit.evaluation.causal.score_labels), normalised over the labels.

    One adapter per call: score_labels reorders rows and reuses key/value caches internally, so rows of
    different adapters are not mixed here (the batcher groups these jobs per run).
    """
    import torch

    data = run.recipe.data
    chat = data.use_chat_template
    prompts = []
    for text in texts:
        prompt, _ = fit_text(text, data, run.tokenizer, run.max_length, run.label_words, run.encoder)
        prompts.append(pair(prompt, run.label_words[0], chat)["prompt"])
    model = run.group.model
    if model.active_adapter != run.adapter:
        model.set_adapter(run.adapter)
    with torch.inference_mode():
        scores = score_labels(model, run.encoder, prompts, run.label_words, chat, batch_size=max_batch_size,
                              scoring=label_scoring(run.recipe))
    on_forward(Forward(rows=len(texts), adapters=1))
    return torch.softmax(torch.tensor(scores, dtype=torch.float64) / run.temperature, -1).tolist()


@dataclass
class GenerationJob:
    """One completion request: token ids in, text out through `emit` (streaming) or the returned result."""

    run: ServedRun
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    emit: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] = lambda: False


@dataclass
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def generate(job: GenerationJob) -> GenerationResult:
    """Greedy (temperature 0) or sampled continuation of one prompt through the run's adapter.

    Not batched across requests: one generation at a time on the worker thread (continuous batching is what
    vLLM is for; see the README). Stop strings end the text before them, as OpenAI's API does.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    run = job.run
    tok = run.tokenizer
    text_out = StopText(job.stop, job.emit)
    streamer = TokenText(tok, text_out.feed)

    class Stop(StoppingCriteria):  # a stop string seen, or the client gone: end the generation early
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), text_out.stopped or job.cancelled(), dtype=torch.bool)

    ids = torch.tensor([job.prompt_ids], dtype=torch.long)
    sampling = {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p} \
        if job.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if job.seed is not None:
        torch.manual_seed(job.seed)
    model = run.group.model
    if model.active_adapter != run.adapter:
        model.set_adapter(run.adapter)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=job.max_new_tokens, pad_token_id=tok.pad_token_id,
                                       streamer=streamer,
                                       stopping_criteria=StoppingCriteriaList([Stop()]), **sampling)
    new = out[0, ids.shape[1]:].tolist()
    streamer.end()
    text_out.finish()
    ended_by_eos = bool(new) and new[-1] in eos_ids(run)
    finish = "stop" if text_out.stopped or ended_by_eos else "length"
    return GenerationResult(text_out.text, finish, len(job.prompt_ids), len(new))


def eos_ids(run: ServedRun) -> set[int]:
    config = run.group.model.generation_config
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if run.tokenizer.eos_token_id is not None:
        ids.add(run.tokenizer.eos_token_id)
    return ids


class TokenText:
    """A `generate` streamer: new token ids -> new text. Decodes everything so far and hands on what is new,
    holding back a trailing partial UTF-8 character until its other bytes arrive; special tokens are skipped."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


class StopText:
    """Collects generated text and stops at the first stop string (left out of the answer). While streaming, it
    holds back the few characters that could be the start of a stop string."""

    def __init__(self, stops: list[str], emit: Callable[[str], None] | None):
        self.stops, self.emit = [s for s in stops if s], emit
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> None:
        if self.stopped:
            return
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            self._send(len(self.text))
        else:
            self._send(len(self.text) - self.hold)

    def finish(self) -> None:
        self._send(len(self.text))

    def _send(self, upto: int) -> None:
        if self.emit is not None and upto > self.sent:
            self.emit(self.text[self.sent:upto])
            self.sent = upto
