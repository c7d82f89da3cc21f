r"""`python tests/helpers/hooked_peftkit.py ARGS` is `python -m peftkit ARGS` with test-only faults switched on by the
environment.

Tests use it where a fault must happen at an exact point of a real run (a real process, real signals, real files),
which no recipe can arrange. Nothing here is imported by peftkit itself.

* ``PEFTKIT_TEST_HANG_IN_SAVE=FILE``: the first checkpoint this process saves writes half of its
  ``adapter_model.safetensors``, then creates FILE and sleeps until killed: the test then SIGKILLs the process
  in the middle of a real checkpoint write (deterministically, without racing a timer).
* ``PEFTKIT_TEST_NAN_STEPS=3,5``: the training loss of those (1-based) optimizer steps is made NaN, through the
  graph, so backward produces NaN gradients exactly as a real overflow does. ``PEFTKIT_TEST_NAN_RANK=R`` limits it
  to global rank R (under a multi-process launch); otherwise every rank.
* ``PEFTKIT_TEST_SLOW_LOAD=FILE``: loading the base model first creates FILE, then sleeps (up to 120 s): a test
  sends its signal while the model loads.

Under ``accelerate launch`` it is the script: ``accelerate launch --config_file ... tests/helpers/hooked_peftkit.py
train ...``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's peftkit, installed or not


def install_hang_in_save(signal_file: str) -> None:
    import peft.peft_model
    from safetensors.torch import save as serialize

    real_save = peft.peft_model.safe_save_file

    def half_save_then_hang(tensors, filename, metadata=None):
        if "checkpoint-" not in str(filename):
            return real_save(tensors, filename, metadata=metadata)
        data = serialize(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        Path(signal_file).write_text(str(filename))
        while True:  # the test kills us here, mid-checkpoint
            time.sleep(1)

    peft.peft_model.safe_save_file = half_save_then_hang


def nan_build_trainer(real_build, steps: set[int], rank: int | None):
    """A task's build_trainer (peftkit.tasks.classification), plus a forward hook that makes the loss of `steps`
    NaN (on `rank`, or all)."""

    def build_trainer_with_nan(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        this_rank = int(os.environ.get("RANK", 0))

        def poison(module, inputs, kwargs, output):
            step = trainer.state.global_step + 1
            if module.training and step in steps and (rank is None or rank == this_rank):
                output["loss"] = output["loss"] * float("nan")
            return output

        trainer.model.register_forward_hook(poison, with_kwargs=True)
        return trainer

    return build_trainer_with_nan


def install_nan_steps(steps: set[int], rank: int | None) -> None:
    import peftkit.tasks.classification as task

    task.build_trainer = nan_build_trainer(task.build_trainer, steps, rank)


def install_slow_load(signal_file: str) -> None:
    import peftkit.model.base

    real_load = peftkit.model.base._load_model

    def slow_load(*args, **kwargs):
        Path(signal_file).write_text("loading")
        time.sleep(120)
        return real_load(*args, **kwargs)

    peftkit.model.base._load_model = slow_load


def main() -> int:
    if os.environ.get("PEFTKIT_TEST_SLOW_LOAD"):
        install_slow_load(os.environ["PEFTKIT_TEST_SLOW_LOAD"])
    if os.environ.get("PEFTKIT_TEST_HANG_IN_SAVE"):
        install_hang_in_save(os.environ["PEFTKIT_TEST_HANG_IN_SAVE"])
    if os.environ.get("PEFTKIT_TEST_NAN_STEPS"):
        steps = {int(s) for s in os.environ["PEFTKIT_TEST_NAN_STEPS"].split(",")}
        rank = os.environ.get("PEFTKIT_TEST_NAN_RANK")
        install_nan_steps(steps, int(rank) if rank else None)
    from peftkit.cli import main as peftkit_main

    return peftkit_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
