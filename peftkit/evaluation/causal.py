"""Evaluating causal-LM runs: classification by label scoring, and held-out loss for SFT.

Classification by generation does not generate: for each example it scores every label's completion under the
model and predicts the most likely one, so there is never an unparseable answer. How the scores are computed
(summed, per-token mean or calibrated; batched and key/value-cached) is peftkit/evaluation/label_scoring.py.
"""

from __future__ import annotations

import math
import time
from typing import Any

from peftkit.core.progress import map_in_chunks
from peftkit.data.causal import CausalData, classification_prompt, pair
from peftkit.data.causal_encode import Encoded, Encoder
from peftkit.evaluation.calibration import recheck, temperature_report
from peftkit.evaluation.label_scoring import (  # noqa: F401
    CONTENT_FREE_TEXT,
    LabelScoring,
    score_labels,
    sequence_logprobs,
    shared_prompt_logprobs,
)
from peftkit.evaluation.metrics import classification_metrics
from peftkit.evaluation.predictions import PREDICTIONS_KEY, prediction_records


def label_scoring(recipe) -> LabelScoring:
    """The recipe's evaluate.label_score and evaluate.bf16, with the content-free prompt rendered as the run's
    prompts are (its template, and the chat template when the run uses it)."""
    chat = recipe.data.use_chat_template
    content_free = pair(classification_prompt(recipe.data, CONTENT_FREE_TEXT), "", chat)["prompt"]
    return LabelScoring(recipe.evaluate.label_score, content_free, recipe.evaluate.bf16)


def evaluate_generative(model, encoder: Encoder, causal: CausalData, chat: bool, batch_size: int,
                        split: str = "eval", scoring: LabelScoring | None = None,
                        calibrate_on: str | None = None, saved_calibration: dict | None = None) -> dict[str, Any]:
    """Label-scoring predictions on a split -> the same metrics as the classification-head path, with the per-row
    predictions (a softmax over the label scores) for eval_predictions.jsonl. With `calibrate_on` (a split name),
    that split is scored too and a temperature fitted on it (metrics' ``calibration``); with `saved_calibration`
    (a run's calibration.json) its temperature is measured again on this split."""
    scoring = scoring or LabelScoring()
    started = time.time()
    scores = split_scores(model, encoder, causal, chat, batch_size, split, scoring)
    predictions = [max(range(len(row)), key=row.__getitem__) for row in scores]
    labels = causal.splits[split]["label"]
    metrics = classification_metrics(labels, predictions, causal.label_names)
    if scores:
        texts = causal.texts.get(split) or [str(p) for p in causal.splits[split]["prompt"]]
        metrics[PREDICTIONS_KEY] = prediction_records(texts, labels, scores, causal.label_names)
    if scores and calibrate_on and causal.splits.get(calibrate_on, {}).get("label"):
        fitted = split_scores(model, encoder, causal, chat, batch_size, calibrate_on, scoring)
        metrics["calibration"] = temperature_report(fitted, causal.splits[calibrate_on]["label"], scores, labels)
    elif scores and saved_calibration and "temperature" in saved_calibration:
        metrics["calibration"] = recheck(saved_calibration, scores, labels, causal.reports[split].source)
    metrics["method"] = "label scoring: " + scoring.describe()
    metrics["label_score"] = scoring.method
    metrics["label_words"] = dict(zip(causal.label_names, causal.label_words))
    metrics["eval_seconds"] = round(time.time() - started, 1)
    return metrics


def split_scores(model, encoder: Encoder, causal: CausalData, chat: bool, batch_size: int, split: str,
                 scoring: LabelScoring) -> list[list[float]]:
    """Every label's score after every prompt of a split (rows in the split's order)."""
    was_training = model.training
    model.eval()
    try:
        return map_in_chunks(lambda prompts: score_labels(model, encoder, prompts, causal.label_words, chat,
                                                          batch_size, scoring),
                             causal.splits[split]["prompt"], 4 * batch_size, f"label scoring ({split})",
                             key=lambda p: len(str(p)))
    finally:
        model.train(was_training)


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
