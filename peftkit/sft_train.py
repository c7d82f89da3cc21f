"""`peftkit train` for causal-LM tasks (sft, generative_classification): the checklist, through trl.SFTTrainer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.adapters import attach_adapter, parameter_counts
from peftkit.distributed import adjust_training_args_for_launch, check_launch
from peftkit.speed import apply_speed_defaults, with_seeded_length_grouping
from peftkit.errors import PeftkitError
from peftkit.generative import evaluate_causal, write_causal_metrics
from peftkit.guards import MarkCompleteCheckpoints, StopOnSignal, guarded
from peftkit.io import write_json_atomic
from peftkit.model import load_causal_lm, load_tokenizer, local_path, resolve_model_source
from peftkit.progress import log_friendly_trainer_args
from peftkit.quantize import prepare_for_training
from peftkit.recipe import Recipe, checkpointing_enabled
from peftkit.runfolder import (ADAPTER_DIR, CHECKPOINT_DIR, DATA_REPORT_FILE, LOG_DIR, SUMMARY_FILE, prepare_run_dir,
                               resume_point, save_run_files)
from peftkit.runfolder import finish_run_folder
from peftkit.sft_data import (CausalData, Encoder, format_causal_report, load_causal_data, prepare_examples,
                              truncation_length)
from peftkit.train import quant_storage_for, save_adapter, say, summary, train_until_done_or_signalled


def run(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a causal LM with an adapter as the recipe says, save the run folder, evaluate."""
    from transformers import set_seed

    started = time.time()
    # ---- seed: first, so adapter init, dropout and shuffling are all reproducible -------------
    set_seed(recipe.seed)
    # ---- cheap checks first: model source, data, and the audit of what truncation leaves to learn
    resolve_model_source(recipe.model)
    causal = load_causal_data(recipe.data, recipe.task, recipe.seed)
    source = local_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    encoder = prepare_examples(recipe, tokenizer, causal)  # tokenizes as TRL will; stops if most is dropped
    say(format_causal_report(causal, truncation_length(recipe)))
    check_all_fit(causal, recipe)
    # ---- run folder: refuses to mix runs; finds the checkpoint to resume ---------------------
    run_dir = prepare_run_dir(recipe)
    checkpoint = resume_point(run_dir, resume, recipe.source)
    # ---- launch: SFTConfig, and a check that N processes really make one run -----------------
    args = sft_arguments(recipe, run_dir)
    check_launch(args)
    # ---- model -------------------------------------------------------------------------------
    model = load_causal_lm(recipe.model, recipe.quantization, tokenizer, source,
                           quant_storage=quant_storage_for(recipe))
    model = prepare_for_training(model, recipe.quantization, checkpointing_enabled(recipe.train))
    # ---- adapter -----------------------------------------------------------------------------
    set_seed(recipe.seed)
    model = attach_adapter(model, recipe.adapter, task_type="CAUSAL_LM")
    trainable, total = parameter_counts(model)
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    # ---- packing / padding-free: sequences sharing a row must stay apart on this very model ----
    if args.packing or args.padding_free:
        check_packing_exact(model, tokenizer, encoder, causal, recipe)
    # ---- trainer -----------------------------------------------------------------------------
    trainer = build_sft_trainer(recipe, args, model, tokenizer, causal)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    say(batching_plan(trainer, recipe))
    if trainer.is_world_process_zero():
        save_run_files(run_dir, recipe, causal.label_names)
        write_json_atomic(run_dir / DATA_REPORT_FILE, causal.report_dict())
    # ---- train (a signal saves a checkpoint and stops cleanly) --------------------------------
    result = train_until_done_or_signalled(trainer, checkpoint, recipe)
    say(counter.describe(args.gradient_accumulation_steps * args.world_size))
    # ---- save the adapter and tokenizer, atomically ------------------------------------------
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, run_dir / ADAPTER_DIR)
    # ---- evaluate: label scoring or held-out loss, on the main process -----------------------
    metrics: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        if recipe.evaluate.enabled:
            metrics = evaluate_causal(recipe, trainer.model, encoder, causal)
            say(write_causal_metrics(run_dir, metrics))
        facts = summary(recipe, result, trainable, total, started, causal)
        facts |= counter.summary() | {"packing": args.packing, "skipped_nonfinite_batches": trainer.skipped_batches}
        write_json_atomic(run_dir / SUMMARY_FILE, facts)
        say(finish_run_folder(run_dir, recipe.keep_checkpoints))  # prune checkpoints as asked, print the size
    return metrics


def sft_arguments(recipe: Recipe, run_dir: Path):
    """The recipe's train section as trl.SFTConfig (max_length from data), adjusted for how the run was launched."""
    import os

    import torch
    from trl import SFTConfig

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / LOG_DIR)
    train = apply_speed_defaults(recipe.train, quantized=recipe.quantization.enabled,
                                 packing=bool(recipe.train.get("packing") or recipe.train.get("padding_free")))
    kwargs = adjust_training_args_for_launch(train, torch.cuda.is_available())
    kwargs = log_friendly_trainer_args(kwargs)  # no tqdm redraws into log files (peftkit/progress.py)
    return SFTConfig(output_dir=str(run_dir / CHECKPOINT_DIR), max_length=trl_max_length(recipe), **kwargs)


def unpacked_padding_free(recipe: Recipe) -> bool:
    """Padding-free batches without packing: the batch's examples joined into one row, never truncated by TRL."""
    return bool(recipe.train.get("padding_free") and not recipe.train.get("packing"))


def trl_max_length(recipe: Recipe) -> int | None:
    """data.max_length, except for padding-free batches without packing: TRL cannot truncate those and refuses a
    max_length; the examples fit already (recipe validation allows this for generative_classification only, whose
    prompts peftkit fits to data.max_length, and run() re-checks the audit)."""
    return None if unpacked_padding_free(recipe) else recipe.data.max_length


def check_all_fit(causal: CausalData, recipe: Recipe) -> None:
    """Padding-free batches without packing are not truncated by TRL: stop if any training example is too long."""
    report = causal.reports.get("train")
    if unpacked_padding_free(recipe) and report is not None and report.truncated:
        raise PeftkitError(f"train.padding_free without packing: {report.truncated} training examples are longer "
                           f"than data.max_length ({recipe.data.max_length}) and would not be cut; raise "
                           "data.max_length or set train.packing: true")


def build_sft_trainer(recipe: Recipe, args, model, tokenizer, causal: CausalData):
    """SFTTrainer (with peftkit's run guards) on the audited examples."""
    import datasets
    from trl import SFTTrainer

    eval_during_training = args.eval_strategy != "no"
    trainer = guarded(with_seeded_length_grouping(SFTTrainer))(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(causal.examples("train")),
        eval_dataset=datasets.Dataset.from_list(causal.examples("eval")) if eval_during_training else None,
        processing_class=tokenizer,
        callbacks=[MarkCompleteCheckpoints(), StopOnSignal()],
    )
    trainer.nonfinite_policy = recipe.safety.on_nonfinite_loss
    trainer.max_skipped_batches = recipe.safety.max_skipped_batches
    return trainer


# ---------------------------------------------------------------------------------------------
# Packing: exactness and what it buys
# ---------------------------------------------------------------------------------------------


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
