"""`peftkit train`: the whole run as one checklist, one module per stage."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import time
from pathlib import Path
from typing import Any

from peftkit import __version__
from peftkit.adapters import attach_adapter, parameter_counts
from peftkit.data import format_report, load_classification_data, split_size, tokenize_split
from peftkit.distributed import (adjust_training_args_for_launch, check_launch, disable_token_count_loss_scaling,
                                 quant_storage_dtype_for_launch)
from peftkit.errors import RunStopped
from peftkit.evaluate import format_metrics, write_metrics, classification_metrics
from peftkit.guards import MarkCompleteCheckpoints, StopOnSignal, guarded, skipped_in_log
from peftkit.io import replace_dir_atomic, staging_dir, write_json_atomic
from peftkit.model import load_classifier, load_tokenizer, local_path, resolve_model_source
from peftkit.progress import log_friendly_trainer_args
from peftkit.quantize import prepare_for_training
from peftkit.recipe import CAUSAL_TASKS, Recipe
from peftkit.runfolder import (ADAPTER_DIR, CHECKPOINT_DIR, DATA_REPORT_FILE, LOG_DIR, SUMMARY_FILE,
                               finish_run_folder, prepare_run_dir, remove_incomplete_checkpoints, resume_point, save_run_files)
from peftkit.speed import apply_speed_defaults, collator_pad_multiple, with_seeded_length_grouping


def run(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train an adapter as the recipe says, save the run folder, evaluate. Returns the metrics."""
    from transformers import set_seed

    if recipe.task in CAUSAL_TASKS:  # causal LMs train through TRL's SFTTrainer: their own checklist
        from peftkit.sft_train import run as run_causal

        return run_causal(recipe, resume)
    started = time.time()
    # ---- seed: first, so adapter init, dropout and shuffling are all reproducible -------------
    set_seed(recipe.seed)
    # ---- cheap checks first: model source and data, before anything is written or loaded -----
    resolve_model_source(recipe.model)
    data = load_classification_data(recipe.data, recipe.seed)
    # ---- run folder: refuses to mix runs; finds the checkpoint to resume ---------------------
    run_dir = prepare_run_dir(recipe)
    checkpoint = resume_point(run_dir, resume, recipe.source)
    before = losses_before(checkpoint)  # read now: checkpoint rotation may delete that checkpoint
    # ---- launch: training arguments, and a check that N processes really make one run --------
    args = training_arguments(recipe, run_dir)
    check_launch(args)
    # ---- tokenizer and model -----------------------------------------------------------------
    source = local_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    model = load_classifier(recipe.model, recipe.quantization, data.label_names, tokenizer, source,
                            quant_storage=quant_storage_for(recipe))
    disable_token_count_loss_scaling(model)
    model = prepare_for_training(model, recipe.quantization, bool(recipe.train.get("gradient_checkpointing")))
    # ---- adapter -----------------------------------------------------------------------------
    set_seed(recipe.seed)
    model = attach_adapter(model, recipe.adapter, task_type="SEQ_CLS")
    trainable, total = parameter_counts(model)
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    # ---- tokenized splits --------------------------------------------------------------------
    train_ds = tokenize_split(data.splits["train"], tokenizer, recipe.data.max_length, data.reports["train"])
    eval_ds = tokenize_split(data.splits["eval"], tokenizer, recipe.data.max_length, data.reports["eval"])
    say(format_report(data))
    # ---- trainer -----------------------------------------------------------------------------
    trainer = build_trainer(recipe, args, model, tokenizer, train_ds, eval_ds)
    if trainer.is_world_process_zero():
        save_run_files(run_dir, recipe, data.label_names)
        write_json_atomic(run_dir / DATA_REPORT_FILE, data.report_dict())
    # ---- train (a signal saves a checkpoint and stops cleanly) --------------------------------
    result = train_until_done_or_signalled(trainer, checkpoint, recipe)
    # ---- save the adapter (with the head) and tokenizer, atomically --------------------------
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, run_dir / ADAPTER_DIR)
    # ---- evaluate ----------------------------------------------------------------------------
    metrics = evaluate_with_trainer(trainer, eval_ds, data.label_names) if recipe.evaluate.enabled else {}
    if trainer.is_world_process_zero():
        if metrics:
            metrics["data_file"] = data.reports["eval"].source
            write_metrics(run_dir, metrics)
            say(format_metrics(metrics))
        write_json_atomic(run_dir / SUMMARY_FILE, summary(recipe, result, trainable, total, started, data, before)
                          | {"skipped_nonfinite_batches": skipped_batches(trainer)})
        say(finish_run_folder(run_dir, recipe.keep_checkpoints))  # prune checkpoints as asked, print the size
    return metrics


def training_arguments(recipe: Recipe, run_dir: Path):
    """The recipe's train section as TrainingArguments, adjusted for how the run was launched."""
    import torch
    from transformers import TrainingArguments

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / LOG_DIR)
    train = apply_speed_defaults(recipe.train, quantized=recipe.quantization.enabled)
    kwargs = adjust_training_args_for_launch(train, torch.cuda.is_available())
    kwargs = log_friendly_trainer_args(kwargs)  # no tqdm redraws into log files (peftkit/progress.py)
    # peftkit rotates checkpoints itself, after marking the new one complete (guards.MarkCompleteCheckpoints)
    kwargs["save_total_limit"] = None
    return TrainingArguments(output_dir=str(run_dir / CHECKPOINT_DIR), **kwargs)


def quant_storage_for(recipe: Recipe):
    """FSDP and ZeRO-3 shard 4-bit weights only when they are stored in the compute dtype."""
    from peftkit.quantize import resolve_dtype

    if not recipe.quantization.load_in_4bit:
        return None
    return quant_storage_dtype_for_launch(resolve_dtype(recipe.quantization.bnb_4bit_compute_dtype))


def build_trainer(recipe: Recipe, args, model, tokenizer, train_ds, eval_ds):
    from transformers import DataCollatorWithPadding, Trainer

    eval_during_training = args.eval_strategy != "no"
    trainer = guarded(with_seeded_length_grouping(Trainer))(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if eval_during_training else None,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=collator_pad_multiple(args)),
        processing_class=tokenizer,
        callbacks=[MarkCompleteCheckpoints(keep=recipe.train.get("save_total_limit")), StopOnSignal()],
    )
    trainer.nonfinite_policy = recipe.safety.on_nonfinite_loss
    trainer.max_skipped_batches = recipe.safety.max_skipped_batches
    return trainer


def train_until_done_or_signalled(trainer, checkpoint: str | None, recipe: Recipe):
    """trainer.train(), stopping at the end of a step with a saved checkpoint on SIGTERM/SIGINT."""
    if checkpoint is not None and training_finished_at(checkpoint):
        return load_finished_checkpoint(trainer, checkpoint)
    stopper = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
    stopper.install()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        # a failure (disk full, a second Ctrl-C) while a checkpoint was being written leaves it half written
        remove_incomplete_checkpoints(Path(recipe.output_dir), "the run failed while saving it")
        raise
    finally:
        stopper.uninstall()
    if stopper.stopped_at is not None:
        name = signal.Signals(stopper.received).name if stopper.received else "a signal on another rank"
        raise RunStopped(f"stopped by {name} at step {stopper.stopped_at}; checkpoint saved in "
                         f"{trainer.args.output_dir}. Resume with: peftkit train {recipe.source or 'RECIPE'} --resume",
                         exit_code=128 + (stopper.received or signal.SIGTERM))
    if skipped_batches(trainer):
        say(f"peftkit: skipped {skipped_batches(trainer)} batches with a non-finite loss")
    return result


def training_finished_at(checkpoint: str) -> bool:
    """Whether the checkpoint is the last step of the run (a stop or crash after training, before the end)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return state.get("max_steps", 0) > 0 and state["global_step"] >= state["max_steps"]


def load_finished_checkpoint(trainer, checkpoint: str):
    """The trained adapter and state of a checkpoint that ends the run, without calling trainer.train().

    transformers 5.23 resumed from the final checkpoint trains one step MORE than max_steps (its loop checks
    for the end only after a step): global_step 3 of 2, the optimizer and, unless the learning rate has decayed
    to 0, the weights move past the finished run. So `--resume` on a finished run loads the adapter and goes
    straight to saving and evaluating.
    """
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer.model.load_adapter(checkpoint, trainer.model.active_adapter, is_trainable=True)
    say(f"peftkit: {checkpoint} ends the run (step {trainer.state.global_step} of {trainer.state.max_steps}); "
        "nothing left to train")
    return TrainOutput(trainer.state.global_step, 0.0, {"train_runtime": 0.0, "train_loss": 0.0})


def skipped_batches(trainer) -> int:
    """Batches skipped for a non-finite loss in the whole run, including before a resume."""
    return max(trainer.skipped_batches, skipped_in_log(trainer.state.log_history))


def save_adapter(model, tokenizer, final_dir: Path) -> None:
    """Write the adapter and tokenizer beside the old ones, then swap: a failure leaves the previous adapter."""
    import shutil

    tmp = staging_dir(final_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir_atomic(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def evaluate_with_trainer(trainer, eval_ds, label_names: list[str]) -> dict[str, Any]:
    """Predict on the whole eval set; under several processes the Trainer gathers every rank's share once.

    Examples are sorted by length first so each batch pads little; labels travel with them.
    """
    lengths = [len(ids) for ids in eval_ds["input_ids"]]
    by_length = eval_ds.select(sorted(range(len(eval_ds)), key=lengths.__getitem__))
    output = trainer.predict(by_length, metric_key_prefix="eval")
    predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return classification_metrics(output.label_ids.tolist(), predictions.argmax(-1).tolist(), label_names)


def summary(recipe: Recipe, result, trainable: int, total: int, started: float, data,
            before: tuple[int, float, int] = (0, 0.0, 0)) -> dict[str, Any]:
    from peftkit.packaged import hub_id_for

    import torch

    return {
        "peftkit_version": __version__,
        "wall_time_s": round(time.time() - started, 1),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
        "train_loss": whole_run_train_loss(result, before),
        "global_step": result.global_step,
        "resumed_from_step": before[0] or None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": trainable,
        "total_params": total,
        "train_examples": split_size(data.splits["train"]),
        "eval_examples": split_size(data.splits["eval"]),
        "base_model": recipe.model.name_or_path,
        "base_model_hub_id": hub_id_for(recipe.model.name_or_path),
        "hardware": hardware(),
        "torch_version": torch.__version__,
    }


def losses_before(checkpoint: str | None) -> tuple[int, float, int]:
    """(step of the checkpoint, sum of the logged per-step losses up to it, number of steps they cover).

    Read before training: checkpoint rotation may delete the checkpoint a run resumed from.
    """
    if checkpoint is None:
        return 0, 0.0, 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    start = int(state["global_step"])
    total, covered, last = 0.0, 0, 0
    for entry in state.get("log_history", []):
        if "loss" in entry and last < entry.get("step", 0) <= start:
            total += entry["loss"] * (entry["step"] - last)  # each logged loss is the mean since the previous log
            covered += entry["step"] - last
            last = entry["step"]
    return start, total, covered


def whole_run_train_loss(result, before: tuple[int, float, int]) -> float | None:
    """The mean training loss over the whole run, also after a resume.

    Trainer's ``train_loss`` is the mean over the steps of this ``train()`` call only: after a resume from step
    4 of 12 it is the mean of steps 5-12 (measured: 0.69446 instead of the uninterrupted run's 0.69557). The
    steps before the checkpoint are added back from the checkpoint's log history. Steps between the last log
    and the checkpoint were never logged (save_steps not a multiple of logging_steps): the mean then covers the
    steps whose loss is known.
    """
    loss = result.metrics.get("train_loss")
    start, earlier_sum, earlier_steps = before
    if not start or loss is None:
        return loss
    this_steps = result.global_step - start
    steps = earlier_steps + this_steps
    return (earlier_sum + loss * this_steps) / steps if steps else loss


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def say(message: str) -> None:
    """Progress for the person at the terminal, from the main process only."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, flush=True)
