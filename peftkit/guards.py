"""Guards around a training run: complete-checkpoint markers, clean stops on signals, non-finite losses.

These are Trainer callbacks and one small Trainer mixin, so they work the same for transformers'
Trainer and TRL's SFTTrainer.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

from transformers import TrainerCallback

from peftkit.errors import PeftkitError

COMPLETE_MARKER = ".peftkit-complete"


class MarkCompleteCheckpoints(TrainerCallback):
    """Write a marker into each checkpoint after the Trainer has finished writing it.

    Trainer writes checkpoint-N in place; a kill mid-save leaves a folder that looks like a
    checkpoint but cannot be loaded. Resume only trusts checkpoints that carry the marker.
    """

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(str(state.global_step))
        return control


class StopOnSignal(TrainerCallback):
    """On SIGTERM/SIGINT: finish the current step, save a checkpoint, stop; the run can then be resumed.

    Under several processes every rank must stop at the same step (or the others wait forever in
    the next all-reduce): the flag is all-reduced each step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_signalled():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def _any_rank_signalled(self) -> bool:
        import torch
        import torch.distributed as dist

        flag = self.received is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            tensor = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(tensor)
            return bool(tensor.item() > 0)
        return flag


class NonFiniteLossGuard:
    """Trainer mixin: a NaN or infinite loss stops the run (naming the step) or skips the batch.

    Stopping raises before the optimizer step, so no NaN reaches the weights and the last
    checkpoint stays the last good state. Skipping zeroes the gradients of the pending
    accumulation window and counts the batch; past `max_skipped_batches` the run stops anyway.
    """

    nonfinite_policy: str = "stop"
    max_skipped_batches: int = 10
    skipped_batches: int = 0

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        value = float(loss.detach().float().mean())
        if math.isfinite(value):
            return loss
        step = self.state.global_step + 1
        if self.nonfinite_policy == "skip" and self.skipped_batches < self.max_skipped_batches:
            self.skipped_batches += 1
            model.zero_grad(set_to_none=True)
            print(f"peftkit: non-finite loss ({value}) at step {step}: batch skipped "
                  f"({self.skipped_batches}/{self.max_skipped_batches})", flush=True)
            return loss.detach().new_zeros(())
        raise PeftkitError(
            f"training loss became {value} at step {step}; stopped before the weights were updated. "
            "Lower train.learning_rate, set train.max_grad_norm, check the data, or set "
            "safety.on_nonfinite_loss: skip to drop such batches. The last saved checkpoint is intact; "
            "resume with --resume")


def guarded(trainer_class: type) -> type:
    """`trainer_class` with the non-finite loss guard (Trainer or trl.SFTTrainer)."""
    return type(f"Guarded{trainer_class.__name__}", (NonFiniteLossGuard, trainer_class), {})
