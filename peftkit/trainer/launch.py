"""Launch-time checks and settings for multi-process training (DDP, DeepSpeed, FSDP).

Why this module exists: several launch mistakes do not fail, they silently train N independent copies of
the model, each on all the data (measured with accelerate 1.15, transformers 5.23, deepspeed 0.19.8):

* ``accelerate launch --cpu --num_processes 2`` (and ``distributed_type: MULTI_CPU`` without an mpirun
  hostfile) starts ONE process.
* Under a real 2-process launch on a machine without CUDA (``MULTI_GPU`` or ``DEEPSPEED`` launcher, or
  ``torchrun``), ``TrainingArguments`` without ``use_cpu=True`` give every rank world size 1.
* An FSDP launch on CPU trains as plain DDP: nothing is sharded.
* A sequence-classification loss is multiplied by the number of ranks and of accumulation steps
  (see :func:`disable_token_count_loss_scaling`).

:func:`adjust_training_args_for_launch` sets what avoids them; :func:`check_launch` refuses to train when the
process world the Trainer sees does not match what the launcher started.

What the launchers put in each rank's environment (measured):

* ``torchrun`` and ``accelerate launch`` with ``MULTI_GPU``/``DEEPSPEED``/``FSDP`` configs (accelerate runs
  torch.distributed.run): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``, ``GROUP_RANK``, ``TORCHELASTIC_*``. accelerate adds ``ACCELERATE_MIXED_PRECISION``,
  ``ACCELERATE_DYNAMO_*``; DeepSpeed configs add ``ACCELERATE_USE_DEEPSPEED=true``,
  ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, ``ACCELERATE_CONFIG_DS_FIELDS`` (and
  ``ACCELERATE_DEEPSPEED_CONFIG_FILE`` when a JSON file is used); FSDP configs add ``ACCELERATE_USE_FSDP=true``,
  ``FSDP_VERSION`` and the other ``FSDP_*`` settings.
* ``deepspeed`` launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_SIZE`` (not ``LOCAL_WORLD_SIZE``),
  ``CROSS_RANK``, ``CROSS_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, and ``CUDA_VISIBLE_DEVICES=0,1`` even on CPU;
  it also appends ``--local_rank=N`` to the script's arguments (``--no_local_rank`` turns that off).
* ``accelerate launch --cpu`` (simple launcher, one process): ``ACCELERATE_USE_CPU=True``, no ``RANK`` and no
  ``WORLD_SIZE``; it sets ``MASTER_ADDR``/``MASTER_PORT`` only when asked for more than one process or machine,
  which is how the one process that does start can tell it is alone.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from peftkit.core.launch import (
    WORLD_SIZE_VARS,
    env_flag,
    first_env_int,
    launched_world_size,
)
from peftkit.errors import PeftkitError

_CPU_CONFIG_HINT = (
    "On a CPU-only machine start N ranks with "
    "`accelerate launch --config_file accelerate_configs/cpu_2proc.yaml ...` "
    "(or `torchrun --nproc_per_node N ...`); peftkit then sets use_cpu=True in the training arguments."
)


def _accelerate_cpu_trap() -> bool:
    """Whether this is the single process that ``accelerate launch --cpu --num_processes N`` starts.

    accelerate's simple launcher (used for ``--cpu`` and ``MULTI_CPU`` without mpirun) starts exactly one
    process; it marks it ``ACCELERATE_USE_CPU=True`` and sets ``MASTER_ADDR`` only when it was asked for more
    than one process or machine. No launcher that really starts several ranks leaves ``WORLD_SIZE`` unset.
    """
    return env_flag("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ and first_env_int(WORLD_SIZE_VARS) is None


def _mismatch_message(launched: int, seen: int, use_cpu: bool) -> str:
    """Explain a launcher/Trainer world-size mismatch and name the fix that fits this machine."""
    message = (
        f"The launcher started {launched} processes (WORLD_SIZE={launched}) but this process trains with world "
        f"size {seen}: every rank would train its own model on all the data."
    )
    if not torch.cuda.is_available() and not use_cpu:
        return (
            f"{message} There is no CUDA here and the training arguments have use_cpu=False; under DDP and "
            "DeepSpeed alike the Trainer then gives each rank a world of its own. Set use_cpu=True "
            f"(peftkit.trainer.launch.adjust_training_args_for_launch does this). {_CPU_CONFIG_HINT}"
        )
    return f"{message} Check the accelerate config and that the training arguments match the launch."


def check_launch(training_args: Any) -> None:
    """Refuse to train when the processes the Trainer sees differ from the processes that were launched.

    Call it right after building ``TrainingArguments`` (before the model, so a mistake costs seconds). It
    reads ``training_args.device`` first: that builds the process group exactly as the Trainer will, and
    ``training_args.world_size`` is only meaningful afterwards.

    Raises:
        PeftkitError: for the ``--cpu --num_processes N`` trap; for an FSDP launch without CUDA (the Trainer
            then silently runs plain DDP: measured, nothing sharded); when the launcher's ``WORLD_SIZE``
            differs from the Trainer's world size.
    """
    if _accelerate_cpu_trap():
        raise PeftkitError(
            "`accelerate launch --cpu --num_processes N` (or `distributed_type: MULTI_CPU` without an mpirun "
            "hostfile) starts only ONE process, which would train alone. " + _CPU_CONFIG_HINT + " If you meant a "
            "single process and exported MASTER_ADDR yourself, unset it."
        )
    use_cpu = bool(getattr(training_args, "use_cpu", False))
    if env_flag("ACCELERATE_USE_FSDP") and (use_cpu or not torch.cuda.is_available()):
        raise PeftkitError(
            "FSDP needs CUDA GPUs: on CPU the Trainer falls back to plain DDP without telling (nothing is "
            "sharded). On CPU use accelerate_configs/cpu_2proc.yaml (DDP), or deepspeed_zero3.yaml to shard."
        )
    training_args.device  # noqa: B018 -- builds the process group, after which world_size is meaningful
    launched = launched_world_size()
    seen = training_args.world_size
    if launched > 1 and seen != launched:
        raise PeftkitError(_mismatch_message(launched, seen, use_cpu))


def adjust_training_args_for_launch(train_kwargs: dict[str, Any], has_cuda: bool) -> dict[str, Any]:
    """Return a copy of ``TrainingArguments`` keyword arguments with the settings this launch needs.

    Rules (each fixes a failure measured with transformers 5.23 / accelerate 1.15):

    * Several processes launched and no CUDA -> ``use_cpu=True``. Without it DDP (``MULTI_GPU`` launcher,
      torchrun) and DeepSpeed ZeRO-2/3 give every rank world size 1, so each trains alone on all the data and
      nothing fails. With it, accelerate builds a gloo process group (DeepSpeed included). A user's
      ``use_cpu=False`` is overridden: there is no device it could mean.
    * One process -> ``ddp_backend`` removed. With a backend set, accelerate asks torch.distributed for a world
      size it never initialised and ``TrainingArguments.device`` raises ("Default process group has not been
      initialized"); a recipe written for a multi-process run must still run alone.

    Args:
        train_kwargs: keyword arguments for ``TrainingArguments``; not modified.
        has_cuda: whether CUDA is usable (``torch.cuda.is_available()``); a parameter so the rules are testable.
    """
    adjusted = dict(train_kwargs)
    if launched_world_size() > 1:
        if not has_cuda:
            adjusted["use_cpu"] = True
    else:
        adjusted.pop("ddp_backend", None)
    return adjusted


def disable_token_count_loss_scaling(model: torch.nn.Module) -> None:
    """Make the Trainer treat a classification loss as the per-batch mean it is.

    Call it on sequence-classification models (plain or PEFT-wrapped) before building the ``Trainer``; not on
    causal LMs. Why: transformers 5.23's ``Trainer`` assumes that a model whose ``forward`` takes ``**kwargs``
    divides its loss by ``num_items_in_batch`` (true for causal LMs). The ``*ForSequenceClassification`` models
    (Llama, BERT, ...) take ``**kwargs`` but return a plain mean, so the Trainer then skips the division by
    ``gradient_accumulation_steps`` and multiplies by the number of processes: measured on a tiny Llama
    classifier, gradients and logged loss were exactly 2x too large with 2 ranks, and again 2x with
    ``gradient_accumulation_steps=2`` in one process (the logged loss doubles; Adam hides most of it, SGD,
    gradient clipping and the loss curves do not). With this flag the Trainer averages as for any mean loss;
    across ranks, DDP/DeepSpeed average gradients, which is exact for equal per-rank batch sizes.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.accepts_loss_kwargs = False
