"""train_summary.json: what a run cost (time, memory, parameters, hardware) and its whole-run loss."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

from peftkit import __version__
from peftkit.recipe import Recipe
from peftkit.runs.layout import TRAINER_STATE_FILE


def summary(recipe: Recipe, result, trainable: int, total: int, started: float, examples: tuple[int, int],
            before: tuple[int, float, int] = (0, 0.0, 0)) -> dict[str, Any]:
    """The run's facts; `examples` is (training, evaluation) examples used."""
    import torch

    from peftkit.model.packaged import hub_id_for

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
        "train_examples": examples[0],
        "eval_examples": examples[1],
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
    state = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
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
