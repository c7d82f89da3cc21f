"""Packing (padding-free rows built by TRL's collator) must compute exactly what separate sequences compute.

Tolerance: everything runs in float32; packed and padded batches do the same arithmetic in different matmul
shapes and reduction orders, which moves a mean loss of ~10.8 by ~1e-6 (measured 2e-7 to 2e-6). 1e-5 is ten times
that noise, and a thousand times smaller than what one sequence attending to another does (~1e-2 on the loss,
~0.6 on single log-probabilities, shown below with the cache left on).
"""

from __future__ import annotations

import pytest
import torch

from peftkit.trainer.packing import packing_gap
from tests.helpers.sft_fixtures import smollm2_tokenizer, tiny_causal_dir  # noqa: F401

TEXTS = ["Review: a charming and often affecting journey.\nSentiment: positive<|im_end|>",
         "Review: unflinchingly bleak and desperate\nSentiment: negative<|im_end|>",
         "Review: the acting , costumes , music , cinematography and sound are all astounding\nSentiment: positive"]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_dir, attn_implementation=request.param).eval()


def batches(tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [{"input_ids": tokenizer(t)["input_ids"]} for t in TEXTS]
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    return padded, packed


def test_packed_and_padded_batches_give_the_same_loss(model, smollm2_tokenizer):
    padded, packed = batches(smollm2_tokenizer)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert int((padded["labels"][:, 1:] != -100).sum()) == int((packed["labels"] != -100).sum())
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed, use_cache=False).loss  # TRL's compute_loss passes use_cache=False too
    assert abs(float(loss_padded - loss_packed)) < 1e-5


def test_packing_is_only_exact_without_the_cache(model, smollm2_tokenizer):
    """STACK-NOTES' trap: with use_cache=True the packed sequences bleed into each other."""
    padded, packed = batches(smollm2_tokenizer)
    with torch.no_grad():
        bled = model(**packed, use_cache=True).loss
        clean = model(**padded, use_cache=False).loss
    assert abs(float(bled - clean)) > 1e-3


def test_packing_gap_is_noise_on_a_model_that_keeps_sequences_apart(model, smollm2_tokenizer):
    first, second = (smollm2_tokenizer(t)["input_ids"] for t in TEXTS[:2])
    assert packing_gap(model, first, second, smollm2_tokenizer.pad_token_id) < 1e-4


def test_packing_gap_catches_a_model_that_ignores_position_ids(model, smollm2_tokenizer):
    class IgnoresPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, position_ids=None, **kwargs):
            return self.inner(**kwargs)

    first, second = (smollm2_tokenizer(t)["input_ids"] for t in TEXTS[:2])
    assert packing_gap(IgnoresPositions(model), first, second, smollm2_tokenizer.pad_token_id) > 0.1
