"""Rank and world size of this process, read from the process group or the launcher's environment.

The one place that decides "am I the main process". torch is not imported here: the process group is
consulted only when torch.distributed is already loaded (before that, no group can exist).
"""

from __future__ import annotations

import json
import os
import sys

# Where launchers publish the number of processes / this process's rank: torchrun, accelerate and the deepspeed
# launcher set WORLD_SIZE / RANK; mpirun (Intel MPI, Open MPI, MVAPICH) sets the others. Same order as accelerate.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def env_flag(name: str) -> bool:
    """Whether an environment flag is set to a true value ("true", "True", "1", "yes")."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def first_env_int(names: tuple[str, ...]) -> int | None:
    """The value of the first of ``names`` that is set, as an int; None when none is set."""
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip():
            return int(value)
    return None


def launched_world_size() -> int:
    """Number of processes the launcher says it started (1 when launched by plain ``python``)."""
    return first_env_int(WORLD_SIZE_VARS) or 1


def world_size() -> int:
    """Number of training processes: the process group's size once it exists, else what the launcher says.

    Before the Trainer builds its process group (at ``TrainingArguments.device``) only the environment
    knows; afterwards the process group is the truth.
    """
    dist = _process_group()
    if dist is not None:
        return dist.get_world_size()
    return launched_world_size()


def is_main_process() -> bool:
    """Whether this is global rank 0: the one process that should print, download and write shared files.

    Uses the process group when it exists, else the launcher's rank variables, so it also works before the
    Trainer exists (e.g. to download a model once).
    """
    dist = _process_group()
    if dist is not None:
        return dist.get_rank() == 0
    return (first_env_int(RANK_VARS) or 0) == 0


def local_rank() -> int:
    """This process's index on its machine (which GPU is its own); 0 when not launched by a launcher."""
    return first_env_int(("LOCAL_RANK",)) or 0


def deepspeed_zero_stage() -> int | None:
    """ZeRO stage of an accelerate DeepSpeed launch: from the accelerate config, else its DeepSpeed JSON file."""
    stage = first_env_int(("ACCELERATE_DEEPSPEED_ZERO_STAGE",))
    if stage is not None:
        return stage
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not config_file:
        return None
    with open(config_file, encoding="utf-8") as handle:
        stage_value = json.load(handle).get("zero_optimization", {}).get("stage")
    return int(stage_value) if str(stage_value).isdigit() else None


def quant_storage_dtype_for_launch(compute_dtype):
    """The ``bnb_4bit_quant_storage`` dtype QLoRA needs under this launch: ``compute_dtype`` or None.

    FSDP and DeepSpeed ZeRO-3 shard parameters and can only flatten/shard floating tensors of one dtype;
    4-bit weights stored as uint8 (the bitsandbytes default) cannot be sharded together with the bf16/fp16
    ones. Storing the packed 4-bit data in the compute dtype makes every parameter the same float dtype.
    DDP and ZeRO-1/2 keep whole parameters on each rank, so the default storage is right there (None).
    The mode is read from the variables ``accelerate launch`` sets (``ACCELERATE_USE_FSDP``,
    ``ACCELERATE_USE_DEEPSPEED`` with ``ACCELERATE_DEEPSPEED_ZERO_STAGE`` or the DeepSpeed JSON file).
    """
    if env_flag("ACCELERATE_USE_FSDP"):
        return compute_dtype
    if env_flag("ACCELERATE_USE_DEEPSPEED") and deepspeed_zero_stage() == 3:
        return compute_dtype
    return None


def _process_group():
    """torch.distributed when a process group exists, else None (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None
