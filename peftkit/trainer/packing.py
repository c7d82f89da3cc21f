"""Packing for causal-LM training: a check that packed sequences stay apart on this very model, how the
training set is batched, and what the batches really hold (tokens, padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftkit.core.console import say
from peftkit.data.causal import CausalData
from peftkit.data.causal_encode import Encoder
from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe


def packing_gap(model, first: list[int], second: list[int], pad_token_id: int) -> float:
    """Largest difference in any log-probability between two sequences run apart and run packed into one
    padding-free row (the exact batch TRL's collator builds).

    Packed sequences are kept apart only through their position ids (sdpa/eager build a block-diagonal mask from
    them; flash attention uses the cumulative lengths). A model that ignores them lets the second sequence attend
    to the first, which moves its log-probabilities by whole units, not by rounding noise.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        alone = [torch.log_softmax(model(input_ids=torch.tensor([ids], device=device), use_cache=False
                                         ).logits.float(), -1)[0] for ids in (first, second)]
        batch = collate([{"input_ids": first}, {"input_ids": second}])
        batch.pop("labels")
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        packed = torch.log_softmax(model(**batch, use_cache=False).logits.float(), -1)[0]
    model.train(was_training)
    return float((packed - torch.cat(alone)).abs().max())


def packing_tolerance(model) -> float:
    """Rounding noise allowed between packed and separate runs: float32 matmuls of different shapes agree to
    ~1e-5 in log-probability; 16-bit weights or 4-bit compute to ~1e-2. Cross-sequence attention moves them
    by 0.1 to several units."""
    import torch

    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    return 1e-3 if dtype == torch.float32 and not quantized else 5e-2


def check_packing_exact(model, tokenizer, encoder: Encoder, causal: CausalData, recipe: Recipe) -> None:
    """Stop before training if packing would let sequences see each other on this model."""
    limit = recipe.data.max_length // 2
    first, second = (encoder.encode(e).input_ids[:limit] for e in (causal.examples("train") * 2)[:2])
    gap = packing_gap(model, first, second, tokenizer.pad_token_id)
    tolerance = packing_tolerance(model)
    if gap > tolerance:
        key = "train.packing" if recipe.train.get("packing") else "train.padding_free"
        raise PeftkitError(
            f"{key}: packed sequences are not kept apart by this model (attention "
            f"{recipe.model.attn_implementation!r}): log-probabilities moved by {gap:.3g} (allowed {tolerance:g}). "
            f"Set {key}=false, or model.attn_implementation to sdpa or eager")
    say(f"packing check: packed and separate log-probabilities agree to {gap:.1e} (allowed {tolerance:g})")


def batching_plan(trainer, recipe: Recipe) -> str:
    """How the prepared training set will be batched, from TRL's prepared dataset."""
    ds = trainer.train_dataset
    if trainer.args.packing:
        lengths = [len(ids) for ids in ds["input_ids"]]
        examples = sum(len(s) for s in ds["seq_lengths"]) if "seq_lengths" in ds.column_names else len(lengths)
        fill = sum(lengths) / (len(lengths) * recipe.data.max_length)
        return (f"packing ({trainer.args.packing_strategy}): {examples:,} examples -> {len(lengths):,} rows of "
                f"<= {recipe.data.max_length} tokens ({fill:.0%} full); padding-free batches of "
                f"{trainer.args.per_device_train_batch_size} rows")
    if trainer.args.padding_free:
        return (f"padding-free, no packing: {len(ds):,} examples in batches of "
                f"{trainer.args.per_device_train_batch_size} joined into one row each (the same examples per step "
                "as padded batches, no padding computed)")
    return f"no packing: {len(ds):,} examples in padded batches of {trainer.args.per_device_train_batch_size}"


@dataclass
class TokenCounter:
    """Wraps the trainer's collator to measure what each batch really holds: tokens and padding.

    Counts every batch this process collates: training batches, and evaluation batches when the recipe evaluates
    during training. With dataloader_num_workers > 0 the workers collate, and nothing is counted.
    """

    collator: Any
    batches: int = 0
    tokens: int = 0
    positions: int = 0

    def __call__(self, examples: list[dict[str, Any]]):
        batch = self.collator(examples)
        self.batches += 1
        self.tokens += sum(len(e["input_ids"]) for e in examples)
        self.positions += batch["input_ids"].numel()
        return batch

    def summary(self) -> dict[str, Any]:
        if not self.batches:
            return {}
        return {"padding_fraction": round(1 - self.tokens / self.positions, 4),
                "tokens_per_batch": round(self.tokens / self.batches, 1), "batches": self.batches}

    def describe(self, batches_per_step: int) -> str:
        if not self.batches:
            return "batches: not measured (collated in dataloader workers)"
        return (f"batches: {self.batches:,}, {self.tokens / self.batches:,.0f} tokens each, "
                f"{batches_per_step * self.tokens / self.batches:,.0f} tokens per optimizer step, "
                f"padding {1 - self.tokens / self.positions:.1%}")
