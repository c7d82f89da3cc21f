"""Guards around a training run: complete-checkpoint markers, clean stops on signals, non-finite losses.

These are Trainer callbacks and one small Trainer mixin, so they work the same for transformers'
Trainer and TRL's SFTTrainer.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from peftkit.core.atomic import write_text_atomic
from peftkit.errors import PeftkitError
from peftkit.runs.checkpoints import COMPLETE_MARKER, complete_checkpoints_in


class MarkCompleteCheckpoints(TrainerCallback):
    """Mark each checkpoint complete after the Trainer has written it, then rotate old checkpoints.

    Trainer writes checkpoint-N in place; a kill mid-save leaves a folder that looks like a
    checkpoint but cannot be loaded. Resume only trusts checkpoints that carry the marker.

    The checkpoint's files are fsynced before the marker is written, so after a power loss a marker never
    vouches for data still in the page cache.

    Rotation (``save_total_limit``) is done here, not by the Trainer: the Trainer deletes old checkpoints at
    the end of ``_save_checkpoint``, before ``on_save`` runs, so with ``save_total_limit: 1`` a kill between
    its rotation and the marker left no complete checkpoint at all (and ``--resume`` started over from step
    0). Here the new checkpoint is marked first, and only complete checkpoints are counted and deleted,
    oldest step first (not by mtime). The best checkpoint (``load_best_model_at_end``) is kept too.
    """

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep if keep and keep > 0 else None

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                sync_folder(folder)
                write_text_atomic(folder / COMPLETE_MARKER, str(state.global_step))
                self.rotate(Path(args.output_dir), state.best_model_checkpoint)
        return control

    def rotate(self, output_dir: Path, best: str | None) -> list[Path]:
        """Delete the oldest complete checkpoints beyond `keep` (never the newest, never the best)."""
        if self.keep is None:
            return []
        complete = complete_checkpoints_in(output_dir)
        protected = {complete[-1].resolve()} if complete else set()
        if best:
            protected.add(Path(best).resolve())
        removable = [p for p in complete if p.resolve() not in protected]
        excess = len(complete) - max(self.keep, len(protected & {p.resolve() for p in complete}))
        removed = removable[:max(excess, 0)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed


def sync_folder(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself (so their names are durable too)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        return any_rank_true(self.received is not None)


class NonFiniteLossGuard:
    """Trainer mixin: a NaN or infinite loss stops the run (naming the step) or skips the batch.

    Stopping raises before the optimizer step, so no NaN reaches the weights and the last
    checkpoint stays the last good state. Skipping zeroes the gradients of the pending
    accumulation window and counts the batch; past `max_skipped_batches` the run stops anyway.

    Under several processes the decision is all-reduced: DDP averages gradients during backward, so one
    rank's NaN loss puts NaN into every rank's gradients. If only that rank skipped (or stopped), the others
    would step on NaN gradients (their weights become NaN while the skipping rank's do not, and rank 0 saves
    its copy) or wait forever in the next all-reduce. Every rank therefore skips, or stops, together.
    """

    nonfinite_policy: str = "stop"
    max_skipped_batches: int = 10
    skipped_batches: int = 0
    SKIPPED_KEY = "skipped_nonfinite_batches"

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        value = float(loss.detach().float().mean())
        if not any_rank_true(not math.isfinite(value)):
            return loss
        step = self.state.global_step + 1
        where = "" if math.isfinite(value) else f" ({value})"
        what = f"non-finite loss{where or ' on another rank'} at step {step}"
        # a resumed run continues the count of the run it resumes (kept in the checkpoint's log history)
        self.skipped_batches = max(self.skipped_batches, skipped_in_log(self.state.log_history))
        if self.nonfinite_policy == "skip" and self.skipped_batches < self.max_skipped_batches:
            self.skipped_batches += 1
            self.state.log_history.append({self.SKIPPED_KEY: self.skipped_batches, "step": step})
            model.zero_grad(set_to_none=True)
            if self.is_world_process_zero():
                print(f"peftkit: {what}: batch skipped ({self.skipped_batches}/{self.max_skipped_batches})",
                      flush=True)
            return loss.detach().new_zeros(())
        too_many = (f" after skipping {self.skipped_batches} batches (safety.max_skipped_batches)"
                    if self.nonfinite_policy == "skip" else "")
        raise PeftkitError(
            f"training loss became {value if not math.isfinite(value) else 'non-finite on another rank'} at step "
            f"{step}{too_many}; stopped before the weights were updated. "
            "Lower train.learning_rate, set train.max_grad_norm, check the data, or set "
            "safety.on_nonfinite_loss: skip to drop such batches. The last saved checkpoint is intact; "
            "resume with --resume")


def skipped_in_log(log_history: list[dict]) -> int:
    return max((entry.get(NonFiniteLossGuard.SKIPPED_KEY, 0) for entry in log_history), default=0)


def any_rank_true(flag: bool) -> bool:
    """`flag` or-ed over all ranks (one tiny all-reduce under a multi-process launch; `flag` alone otherwise)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(tensor)
        return bool(tensor.item() > 0)
    return flag
