"""What every task's training shares: the Trainer's arguments from the recipe, the run guards, and a train()
that a signal stops cleanly and a finished checkpoint does not repeat."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from peftkit.core.console import say, warn
from peftkit.core.launch import world_size
from peftkit.core.progress import log_friendly_trainer_args
from peftkit.errors import RunStopped
from peftkit.recipe import Recipe
from peftkit.runs.folder import remove_incomplete_checkpoints
from peftkit.runs.layout import LOG_DIR, TRAINER_STATE_FILE
from peftkit.trainer.guards import MarkCompleteCheckpoints, StopOnSignal, skipped_in_log
from peftkit.trainer.launch import adjust_training_args_for_launch
from peftkit.trainer.speed import apply_speed_defaults


def trainer_kwargs(recipe: Recipe, run_dir: Path, *, packing: bool = False) -> dict[str, Any]:
    """The recipe's train section with the speed defaults filled in, adjusted for how the run was launched:
    the keyword arguments for TrainingArguments or trl.SFTConfig."""
    import torch

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / LOG_DIR)
    train = apply_speed_defaults(recipe.train, quantized=recipe.quantization.enabled, packing=packing,
                                 attention_choice=recipe.model.cpu_attention_kernel)
    kwargs = adjust_training_args_for_launch(train, torch.cuda.is_available())
    kwargs = log_friendly_trainer_args(kwargs)  # no tqdm redraws into log files (peftkit/core/progress.py)
    # peftkit rotates checkpoints itself, after marking the new one complete (guards.MarkCompleteCheckpoints)
    kwargs["save_total_limit"] = None
    return kwargs


def run_callbacks(recipe: Recipe) -> list:
    """The callbacks every run has: complete-checkpoint markers (with rotation) and clean stops on signals."""
    return [MarkCompleteCheckpoints(keep=recipe.train.get("save_total_limit")), StopOnSignal()]


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
    state = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
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

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_FILE))
    best = trainer.state.best_model_checkpoint  # load_best_model_at_end: the run ends with the best checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        checkpoint = best
    trainer.model.load_adapter(checkpoint, trainer.model.active_adapter, is_trainable=True)
    say(f"peftkit: {checkpoint} ends the run (step {trainer.state.global_step} of {trainer.state.max_steps}); "
        "nothing left to train")
    return TrainOutput(trainer.state.global_step, 0.0, {"train_runtime": 0.0, "train_loss": 0.0})


def skipped_batches(trainer) -> int:
    """Batches skipped for a non-finite loss in the whole run, including before a resume."""
    return max(trainer.skipped_batches, skipped_in_log(trainer.state.log_history))


def warn_if_almost_nothing(recipe: Recipe, train_examples: int) -> None:
    """A legal train section that trains on a sliver of the data (num_train_epochs: 0.01) is almost surely a slip:
    say so in one line. (Zero or negative epochs and max_steps: 0 are recipe errors.)"""
    t = recipe.train
    if (t.get("max_steps") or -1) > 0 or not train_examples:
        return
    epochs = float(t.get("num_train_epochs", 1.0))
    if epochs >= 0.1:
        return
    world = world_size()
    batch = int(t.get("per_device_train_batch_size", 8)) * int(t.get("gradient_accumulation_steps", 1)) * world
    steps = max(1, int(-(-train_examples // batch) * epochs + 0.999999))
    warn(f"train.num_train_epochs: {epochs:g} trains on about {min(100.0, 100 * steps * batch / train_examples):.1f}% "
         f"of the training data ({steps} optimizer step{'s' if steps != 1 else ''}); is that intended? "
         "(train.max_steps sets a number of steps)")
